"""Benchmark the loss implementations: forward + backward time and peak memory.

Implementations (all compute the same exact all-pairs losses, reduction='mean'):

* ``reference`` -- the float64 pairwise PyTorch reference (materialises B x C x C; run at a
  smaller B where B x C x C would not fit the ``--ref-mem`` budget -- the table says so);
* ``torch``     -- the plain vectorised PyTorch path (``backend='torch'``);
* ``compile``   -- ``torch.compile`` of that plain PyTorch path (forward + gradient function);
* ``cpp``       -- the C++/OpenMP kernel (CPU only);
* ``triton``    -- the fused Triton kernels (CUDA only).

Timing: on CUDA ``triton.testing.do_bench`` (median); on CPU a median over repetitions
(``time.perf_counter``). Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the
highest "Total Allocated" of the torch profiler's memory events during one fwd+bwd (extra
memory on top of the inputs). On CUDA each row also reports the achieved bandwidth
``(bytes of logits + targets read + gradient written) / time`` and its fraction of the
device's peak (``--peak-gbs`` overrides the built-in table).

Usage::

    python benchmarks/bench_losses.py                 # CPU here: writes results/losses_cpu.{json,md}
    python benchmarks/bench_losses.py --quick         # a short subset
    python benchmarks/bench_losses.py --device cuda   # on a GPU machine: results/losses_cuda.{json,md}
    python benchmarks/bench_losses.py --losses wlsep,warp --B 256 --C 1000 --impls torch,cpp
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mmit_fast.losses import bce_loss, lsep_loss, warp_loss, wlsep_loss  # noqa: E402
from mmit_fast.losses import reference as ref  # noqa: E402
from mmit_fast.losses import torch_impl  # noqa: E402

LOSSES = {"bce": bce_loss, "warp": warp_loss, "lsep": lsep_loss, "wlsep": wlsep_loss}
PEAK_GBS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0,
            "A100-SXM4-80GB": 2039.0, "A100 80GB PCIe": 1935.0, "A100": 1555.0, "L40S": 864.0, "A10G": 600.0,
            "L4": 300.0, "T4": 320.0, "RTX 4090": 1008.0, "RTX 3090": 936.0}


from _machine import cpu_model  # noqa: E402  (benchmarks/_machine.py)

# ---------------------------------------------------------------------------- machine
def machine_info(device):
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads()}
    model = cpu_model()
    info["cpu"] = model
    try:
        info["load_avg_at_start"] = os.getloadavg()
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    try:
        from mmit_fast import _C

        info["cpp_avx2"] = bool(_C.has_avx2_kernels())
        info["cpp_openmp"] = bool(_C.has_openmp)
    except Exception:
        info["cpp_avx2"] = None
    return info


def peak_gbs_for(name, override):
    if override:
        return float(override)
    for key in sorted(PEAK_GBS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_GBS[key]
    return None


# ---------------------------------------------------------------------------- data
def make_inputs(B, C, device, seed=0):
    """M-MiT-like rows: ~2 positives a row (at least one), logits ~ N(0, 2^2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, generator=g) * 2.0
    y = torch.rand(B, C, generator=g) < min(0.5, 1.0 / C)
    y[torch.arange(B), torch.randint(C, (B,), generator=g)] = True
    return x.to(device), y.to(device)


# ---------------------------------------------------------------------------- runners
_COMPILED = {}


def runner(impl, name, x, y):
    """A zero-argument function doing one forward + backward; returns the gradient."""
    fn = LOSSES[name]
    if impl == "reference":
        def run():
            xr = x.detach().to(torch.float64).requires_grad_()
            loss = ref.reference_loss(name, xr, y, None, "mean")
            return torch.autograd.grad(loss, xr)[0]
        return run
    if impl == "compile":
        key = name
        if key not in _COMPILED:
            contract = getattr(torch_impl, name)

            def fwd_bwd(xx, yy, scale: float):
                rows, g = contract(xx, yy, None, True, scale)
                return rows.sum() * scale, g

            _COMPILED[key] = torch.compile(fwd_bwd, dynamic=True)
        comp = _COMPILED[key]
        scale = 1.0 / x.shape[0]
        return lambda: comp(x, y, scale)[1]
    backend = {"torch": "torch", "cpp": "cpp", "triton": "triton"}[impl]

    def run():
        xx = x.detach().requires_grad_()
        loss = fn(xx, y, None, "mean", backend=backend)
        return torch.autograd.grad(loss, xx)[0]
    return run


def time_cpu(run, min_time, max_reps):
    run()  # warm-up
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() < t_end):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
        if len(times) >= 1 and times[0] > min_time:  # slow: one timed run is enough
            break
    return statistics.median(times) * 1e3, len(times), min(times) * 1e3


def time_cuda(run):
    import triton.testing

    run()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(run, warmup=25, rep=100)), None, None


def peak_cpu(run):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.unlink(path)
    totals = [e["args"].get("Total Allocated", 0) for e in events if e.get("name") == "[memory]"]
    return max([0] + totals)


def peak_cuda(run):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# ---------------------------------------------------------------------------- main loop
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--quick", action="store_true", help="short run: B=256, C in {292, 1000, 4096}")
    ap.add_argument("--losses", default="wlsep,lsep,warp,bce")
    ap.add_argument("--impls", default=None, help="comma list of reference,torch,compile,cpp,triton")
    ap.add_argument("--B", default=None, help="comma list (default 64,256,1024)")
    ap.add_argument("--C", default=None, help="comma list (default 292,1000,4096,16384)")
    ap.add_argument("--compile-shapes", choices=["all", "target", "none"], default=None,
                    help="where to run torch.compile (default: all on CUDA, target B=256,C=1000 on CPU)")
    ap.add_argument("--ref-mem", type=float, default=None, help="GiB budget for the pairwise reference")
    ap.add_argument("--min-time", type=float, default=0.25, help="CPU: seconds of repetitions per case")
    ap.add_argument("--max-reps", type=int, default=30)
    ap.add_argument("--peak-gbs", type=float, default=None, help="device peak memory bandwidth, GB/s")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch and the C++ kernel (default: all cores)")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/losses_<device>)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["MMIT_CPP_THREADS"] = str(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    losses = [s for s in args.losses.split(",") if s]
    Bs = [int(v) for v in (args.B or ("256" if args.quick else "64,256,1024")).split(",")]
    Cs = [int(v) for v in (args.C or ("292,1000,4096" if args.quick else "292,1000,4096,16384")).split(",")]
    default_impls = "reference,torch,compile,triton" if device == "cuda" else "reference,torch,compile,cpp"
    impls = (args.impls or default_impls).split(",")
    compile_shapes = args.compile_shapes or ("all" if device == "cuda" else "target")
    ref_mem = (args.ref_mem or (8.0 if device == "cuda" else 1.5)) * 2**30
    info = machine_info(device)
    peak_bw = peak_gbs_for(info.get("gpu", ""), args.peak_gbs) if device == "cuda" else None
    print(f"# machine: {info}", flush=True)

    results = []
    t_start = time.time()
    for name in losses:
        for C in Cs:
            for B in Bs:
                x, y = make_inputs(B, C, device)
                for impl in impls:
                    row = {"loss": name, "B": B, "C": C, "impl": impl, "B_run": B}
                    if impl == "compile" and (compile_shapes == "none" or
                                              (compile_shapes == "target" and (B, C) != (256, 1000))):
                        continue
                    xb, yb = x, y
                    if impl == "reference":
                        # ~10 live float64 B x C x C tensors in fwd+bwd (BCE has no pairs: B x C)
                        per_b = 10 * C * 8 if name == "bce" else 10 * C * C * 8
                        b_fit = int(ref_mem // per_b)
                        if b_fit < 1:
                            row.update(status=f"skipped: B x C x C needs {per_b / 2**30:.1f} GiB per row")
                            results.append(row)
                            print(row, flush=True)
                            continue
                        b_run = min(B, 1 << (b_fit.bit_length() - 1))
                        if b_run < B:
                            row["B_run"] = b_run
                            xb, yb = x[:b_run], y[:b_run]
                    if impl == "cpp" and device != "cpu" or impl == "triton" and device != "cuda":
                        continue
                    try:
                        run = runner(impl, name, xb, yb)
                        t0 = time.time()
                        if device == "cuda":
                            ms, reps, ms_min = time_cuda(run)
                            peak = peak_cuda(run)
                        else:
                            ms, reps, ms_min = time_cpu(run, args.min_time, args.max_reps)
                            peak = peak_cpu(run)
                        row.update(ms=ms, ms_min=ms_min, reps=reps, peak_mb=peak / 2**20, wall_s=round(time.time() - t0, 2),
                                   ms_per_row=ms / row["B_run"], status="ok")
                        if device == "cuda":
                            nbytes = row["B_run"] * C * (2 * xb.element_size() + yb.element_size())
                            row["gbs"] = nbytes / (ms * 1e-3) / 1e9
                            if peak_bw:
                                row["frac_peak_bw"] = row["gbs"] / peak_bw
                    except Exception as exc:  # record, don't crash (e.g. torch.compile without a compiler)
                        row.update(status=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                    results.append(row)
                    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    elapsed = time.time() - t_start

    # speed-ups relative to plain torch (per row, so the smaller-B reference runs compare)
    base = {(r["loss"], r["B"], r["C"]): r["ms_per_row"] for r in results if r["impl"] == "torch" and "ms" in r}
    for r in results:
        k = (r["loss"], r["B"], r["C"])
        if "ms" in r and k in base:
            r["speedup_vs_torch"] = base[k] / r["ms_per_row"]
    out = {"machine": info, "device": device, "peak_gbs": peak_bw, "elapsed_s": round(elapsed, 1), "results": results,
           "args": vars(args)}
    stem = Path(args.out) if args.out else HERE / "results" / f"losses_{device}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(stem.with_suffix(".json"), json.dumps(out, indent=1))
    _atomic_write(stem.with_suffix(".md"), to_markdown(out))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')} ({elapsed:.0f} s)")
    return out


def _atomic_write(path, text):
    try:
        from mmit_fast._io import atomic_write_text

        atomic_write_text(path, text)
    except Exception:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def _targets(out):
    """The issue's targets, checked against the measured rows."""
    res = out["results"]

    def get(loss, impl, B, C):
        for r in res:
            if (r["loss"], r["impl"], r["B"], r["C"]) == (loss, impl, B, C) and "ms" in r:
                return r
        return None

    lines = []
    if out["device"] == "cpu":
        for loss, need in (("wlsep", 3), ("lsep", 3), ("warp", 10)):
            c, t, rf = get(loss, "cpp", 256, 1000), get(loss, "torch", 256, 1000), get(loss, "reference", 256, 1000)
            if c and t:
                sp = t["ms"] / c["ms"]
                lines.append(f"| {loss}: C++ vs plain torch at B=256, C=1000 | >= {need}x | {sp:.1f}x | "
                             f"{'met' if sp >= need else 'MISSED'} |")
            if c and rf:
                sp = rf["ms_per_row"] / c["ms_per_row"]
                lines.append(f"| {loss}: C++ vs pairwise reference (per row; reference at B={rf['B_run']}) | >= 100x | "
                             f"{sp:.0f}x | {'met' if sp >= 100 else 'MISSED'} |")
    else:
        for loss in ("wlsep", "lsep", "warp", "bce"):
            tr, cp = get(loss, "triton", 1024, 4096), get(loss, "compile", 1024, 4096)
            if tr and "frac_peak_bw" in tr:
                lines.append(f"| {loss}: Triton fwd+bwd bandwidth at B=1024, C=4096 | >= 70% of peak | "
                             f"{tr['gbs']:.0f} GB/s = {100 * tr['frac_peak_bw']:.0f}% | "
                             f"{'met' if tr['frac_peak_bw'] >= 0.7 else 'MISSED'} |")
            if tr and cp:
                sp = cp["ms"] / tr["ms"]
                lines.append(f"| {loss}: Triton vs torch.compile at B=1024, C=4096 | faster | {sp:.1f}x | "
                             f"{'met' if sp > 1 else 'MISSED'} |")
    if not lines:
        return ""
    return "\n".join(["| target | wanted | measured | |", "|---|---|---|---|", *lines])


def _fmt_speedup(v):
    if v is None:
        return ""
    return f"{v:.1f}" if v >= 0.95 else f"{v:.2g}"


def to_markdown(out):
    m = out["machine"]
    dev = m.get("gpu") if out["device"] == "cuda" else m.get("cpu")
    head = [f"# Loss benchmark ({out['device']})", "",
            f"Machine: **{dev}**, {m.get('cpu_cores')} CPU cores ({m.get('cpu')}), {m.get('threads')} thread(s) used, torch {m.get('torch')}"
            + (f", CUDA {m.get('cuda')}, triton {m.get('triton')}" if out["device"] == "cuda" else "")
            + (f"; load average at start {tuple(round(v, 1) for v in m['load_avg_at_start'])}" if m.get("load_avg_at_start") else "")
            + f"; C++ kernels AVX2: {m.get('cpp_avx2')}. Run time {out['elapsed_s']} s.", "",
            "Forward + backward of the mean loss (one call to the loss and the gradient w.r.t. the logits), "
            "float32 logits, bool targets with ~2 positives a row. `ms`: median time; `peak MB`: extra memory "
            "allocated during the call; `x torch`: speed-up over the plain PyTorch path per row. The pairwise "
            "reference (float64, B x C x C) runs at the smaller batch `B run` where the full batch would not fit "
            "its memory budget; its per-row time is what the speed-up compares.", ""]
    tg = _targets(out)
    if tg:
        head += ["## Targets", "", tg, ""]
    cols = ["loss", "B", "C", "impl", "B run", "ms", "peak MB", "x torch"]
    if out["device"] == "cuda":
        cols += ["GB/s", "% peak BW"]
    lines = ["## All measurements", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in out["results"]:
        if "ms" not in r:
            vals = [r["loss"], r["B"], r["C"], r["impl"], r.get("B_run", ""), r["status"], "", ""]
            if out["device"] == "cuda":
                vals += ["", ""]
        else:
            vals = [r["loss"], r["B"], r["C"], r["impl"], r["B_run"], f"{r['ms']:.3f}", f"{r['peak_mb']:.1f}",
                    _fmt_speedup(r.get("speedup_vs_torch"))]
            if out["device"] == "cuda":
                vals += [f"{r.get('gbs', 0):.0f}", f"{100 * r['frac_peak_bw']:.0f}%" if "frac_peak_bw" in r else ""]
        lines.append("| " + " | ".join(str(v) for v in vals) + " |")
    return "\n".join(head + lines) + "\n"


if __name__ == "__main__":
    main()
