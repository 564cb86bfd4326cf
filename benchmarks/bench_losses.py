"""Loss benchmark, honest baselines: fwd+bwd of each loss against what a user would otherwise run.

Implementations, all computing the same exact loss (``reduction='mean'``), in ONE run,
interleaved repetition by repetition (the order rotates each repetition; the machine is shared):

* ``user``          -- the loss as a user writes it in plain PyTorch with autograd, in the factored
  log-sum-exp form (wLSEP: ``softplus(logsumexp(negatives) - x_i)`` per positive; LSEP:
  ``softplus(LSE_neg x + LSE_pos(-x))``; BCE: ``binary_cross_entropy_with_logits`` summed over
  classes). WARP has no short plain-torch form a user would write (exact ranks need all pairs),
  so its strongest alternative is our own torch backend;
* ``user_compile``  -- ``torch.compile`` of that function (forward + backward);
* ``reference``     -- the float64 pairwise oracle (B x C x C; run at a smaller B where it would not
  fit ``--ref-mem``; compare per row);
* ``torch``         -- our plain-torch backend (``backend='torch'``), its own row;
* ``ours``          -- the default call, ``wlsep_loss(logits, targets)`` with float multi-hot targets
  (what the training loop and most users pass): the C++ kernel on CPU, Triton on CUDA;
* ``ours_bool``     -- the same call with bool targets.

CPU: ``time.perf_counter`` per call, the runners in a fresh random order every repetition; CUDA: ``triton.testing.do_bench`` (median), rounds interleaved,
plus GB/s and the fraction of the device's memory-bandwidth roofline (bytes = logits read +
targets read + gradient written). Medians with the inter-quartile range; the machine, its load
average and the thread count are recorded.

    python benchmarks/bench_losses.py --quick        # 256x1000 only, a short run (scratch folder)
    python benchmarks/bench_losses.py --save         # the committed figures: benchmarks/results/losses_cpu.{json,md}
    python benchmarks/bench_losses.py --device cuda  # on a GPU machine
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _machine import add_output_args, cpu_model, load_average, results_dir  # noqa: E402

from mmit_fast.losses import bce_loss, lsep_loss, warp_loss, wlsep_loss  # noqa: E402
from mmit_fast.losses import reference as ref  # noqa: E402

OURS = {"bce": bce_loss, "warp": warp_loss, "lsep": lsep_loss, "wlsep": wlsep_loss}
PEAK_GBS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0,
            "A100-SXM4-80GB": 2039.0, "A100 80GB PCIe": 1935.0, "A100": 1555.0, "L40S": 864.0, "A10G": 600.0,
            "L4": 300.0, "T4": 320.0, "RTX 4090": 1008.0, "RTX 3090": 936.0}
ALL_IMPLS = ("user", "user_compile", "reference", "torch", "ours", "ours_bool")


# ---------------------------------------------------------------------------- the user's own code
def user_wlsep(x, y):
    """wLSEP as a user writes it: factored log-sum-exp, plain torch, autograd does the rest."""
    A = torch.logsumexp(x.masked_fill(y > 0, float("-inf")), dim=1, keepdim=True)
    per_pos = F.softplus(A - x) * y
    return (per_pos.sum(1) / y.sum(1).clamp_min(1)).mean()


def user_lsep(x, y):
    pos = y > 0
    A = torch.logsumexp(x.masked_fill(pos, float("-inf")), dim=1)
    Bv = torch.logsumexp((-x).masked_fill(~pos, float("-inf")), dim=1)
    return F.softplus(A + Bv).mean()


def user_bce(x, y):
    return F.binary_cross_entropy_with_logits(x, y, reduction="none").sum(1).mean()


USER = {"wlsep": user_wlsep, "lsep": user_lsep, "bce": user_bce}
_COMPILED = {}


# ---------------------------------------------------------------------------- runners
def make_inputs(B, C, device, seed=0):
    """M-MiT-like rows: ~2 positives a row (at least one), logits ~ N(0, 2^2); float and bool targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, generator=g) * 2.0
    y = torch.rand(B, C, generator=g) < min(0.5, 1.0 / C)
    y[torch.arange(B), torch.randint(C, (B,), generator=g)] = True
    return x.to(device), y.to(device), y.float().to(device)


def _grad_of(loss_fn, x, y):
    def run():
        xx = x.detach().requires_grad_()
        return torch.autograd.grad(loss_fn(xx, y), xx)[0]
    return run


def runner(impl, name, x, yb, yf):
    """A zero-argument callable doing one forward + backward, or None when ``impl`` has no ``name``."""
    if impl == "user":
        return _grad_of(USER[name], x, yf) if name in USER else None
    if impl == "user_compile":
        if name not in USER:
            return None
        comp = _COMPILED.setdefault(name, torch.compile(USER[name]))
        return _grad_of(comp, x, yf)
    if impl == "reference":
        return _grad_of(lambda xx, yy: ref.reference_loss(name, xx.double(), yy, None, "mean"), x, yb)
    if impl == "torch":
        return _grad_of(lambda xx, yy: OURS[name](xx, yy, backend="torch"), x, yf)
    if impl == "ours":
        return _grad_of(OURS[name], x, yf)
    if impl == "ours_bool":
        return _grad_of(OURS[name], x, yb)
    raise ValueError(f"unknown implementation {impl!r}; choose from {ALL_IMPLS}")


def ref_batch(name, B, C, budget):
    """The batch the pairwise reference can afford (~10 live float64 B x C x C tensors), or 0."""
    per_row = 10 * C * 8 if name == "bce" else 10 * C * C * 8
    fit = int(budget // per_row)
    return 0 if fit < 1 else min(B, 1 << (fit.bit_length() - 1))


# ---------------------------------------------------------------------------- timing
def _stats(ts_ms):
    q = statistics.quantiles(ts_ms, n=4) if len(ts_ms) >= 2 else [ts_ms[0]] * 3
    return {"ms": statistics.median(ts_ms), "q1": q[0], "q3": q[2], "ms_min": min(ts_ms), "ms_max": max(ts_ms),
            "reps": len(ts_ms)}


def time_cpu_interleaved(runs, min_reps, max_reps, min_time, seed=0):
    """Every runner once per repetition, in a fresh random order each time (a fixed cyclic order
    would always run the same runner right after another one and hand it that one's warm caches);
    at least ``min_reps`` repetitions, more (up to ``max_reps``) while under ``min_time`` seconds.
    Returns {impl: stats}."""
    names = list(runs)
    times = {k: [] for k in names}
    order = random.Random(seed)
    t_end = time.perf_counter() + min_time
    rep = 0
    while rep < min_reps or (rep < max_reps and time.perf_counter() < t_end):
        for k in order.sample(names, len(names)):
            t = time.perf_counter()
            runs[k]()
            times[k].append((time.perf_counter() - t) * 1e3)
        rep += 1
    return {k: _stats(v) for k, v in times.items()}


def time_cuda_interleaved(runs, rounds=3):
    """``triton.testing.do_bench`` medians, ``rounds`` rounds over the runners; spread = the rounds'."""
    import triton.testing

    per = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            per[k].append(float(triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median")))
    out = {k: _stats(v) for k, v in per.items()}
    for k, run in runs.items():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        out[k]["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


def warm_up(runs, notes):
    """One call each (torch.compile compiles here); a runner that fails is dropped with a note."""
    ok = {}
    for k, run in runs.items():
        try:
            run()
            ok[k] = run
        except Exception as exc:  # e.g. torch.compile without a working compiler
            notes.append(f"{k}: skipped, {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
    return ok


# ---------------------------------------------------------------------------- one shape
def bench_case(name, B, C, impls, args, device, notes):
    x, yb, yf = make_inputs(B, C, device)
    runs = {k: runner(k, name, x, yb, yf) for k in impls if k != "reference"}
    runs = warm_up({k: r for k, r in runs.items() if r is not None}, notes)
    if device == "cuda":
        stats = time_cuda_interleaved(runs)
    else:
        stats = time_cpu_interleaved(runs, args.min_reps, args.max_reps, args.min_time)
    rows = [dict(loss=name, B=B, C=C, impl=k, B_run=B, **s) for k, s in stats.items()]
    if "reference" in impls:
        b = ref_batch(name, B, C, args.ref_mem * 2**30)
        if b == 0:
            notes.append(f"reference {name} B={B} C={C}: skipped, B x C x C does not fit --ref-mem")
        else:
            run = runner("reference", name, x[:b], yb[:b], yf[:b])
            s = time_cuda_interleaved({"r": run}, 1)["r"] if device == "cuda" else \
                time_cpu_interleaved({"r": run}, 2, 3, 0.0)["r"]
            rows.append(dict(loss=name, B=B, C=C, impl="reference", B_run=b, **s))
    for r in rows:
        r["ms_per_row"] = r["ms"] / r["B_run"]
        if device == "cuda" and r["impl"] != "reference":  # logits read, gradient written, targets read
            nbytes = B * C * (2 * x.element_size() + (1 if r["impl"] == "ours_bool" else 4))
            r["gbs"] = nbytes / (r["ms"] * 1e-3) / 1e9
    return rows


# ---------------------------------------------------------------------------- machine, main
def machine_info(device, threads):
    info = {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "load_avg_start": load_average()}
    try:
        from mmit_fast import _C

        info["cpp_avx2"], info["cpp_openmp"] = bool(_C.has_avx2_kernels()), bool(_C.has_openmp)
        info["cpp_avx512"] = bool(_C.has_avx512_kernels())
    except ImportError:
        info["cpp_avx2"] = None
    if device == "cuda":
        import triton

        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, triton=triton.__version__)
    from mmit_fast.losses import select_backend

    info["default_backend"] = select_backend(torch.zeros(1, 1, device=device))
    return info


def peak_gbs_for(name, override=None):
    if override:
        return float(override)
    for key in sorted(PEAK_GBS, key=len, reverse=True):
        if key.lower() in (name or "").lower():
            return PEAK_GBS[key]
    return None


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--quick", action="store_true", help="256x1000 only, fewer repetitions")
    ap.add_argument("--losses", default="wlsep,lsep,bce,warp")
    ap.add_argument("--impls", default=",".join(ALL_IMPLS), help=f"comma list of {','.join(ALL_IMPLS)}")
    ap.add_argument("--shapes", default="256x1000,1024x4096", help="comma list of BxC")
    ap.add_argument("--ref-mem", type=float, default=1.5, help="GiB budget of the pairwise reference")
    ap.add_argument("--min-reps", type=int, default=15)
    ap.add_argument("--max-reps", type=int, default=60)
    ap.add_argument("--min-time", type=float, default=2.0, help="CPU: seconds of interleaved repetitions per shape")
    ap.add_argument("--peak-gbs", type=float, default=None, help="device peak memory bandwidth, GB/s")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch and the C++ kernel (default: all)")
    ap.add_argument("--name", default=None, help="stem of the result files (default losses_<device>)")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.min_reps, args.min_time = "256x1000", 7, 0.5
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("bench_losses: no CUDA device here: the GPU benchmark is skipped (run it on a GPU machine)")
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["MMIT_CPP_THREADS"] = str(args.threads)
    info = machine_info(device, torch.get_num_threads())
    peak = peak_gbs_for(info.get("gpu"), args.peak_gbs) if device == "cuda" else None
    print(f"# {info}", flush=True)
    impls = [k for k in args.impls.split(",") if k]
    rows, notes, t0 = [], [], time.time()
    for name in [s for s in args.losses.split(",") if s]:
        for shape in args.shapes.split(","):
            B, C = (int(v) for v in shape.lower().split("x"))
            for r in bench_case(name, B, C, impls, args, device, notes):
                if peak and "gbs" in r:
                    r["frac_peak_bw"] = r["gbs"] / peak
                rows.append(r)
                print(f"{name:6s} {B}x{C} {r['impl']:13s} {r['ms']:9.3f} ms  (IQR {r['q1']:.3f}-{r['q3']:.3f}, "
                      f"{r['reps']} reps)", flush=True)
    info["load_avg_end"] = load_average()
    out = {"device": device, "machine": info, "peak_gbs": peak, "elapsed_s": round(time.time() - t0, 1),
           "notes": notes, "results": rows, "args": {k: v for k, v in vars(args).items()}}
    out["goals"] = goals(out)
    d = Path(results_dir(args))
    stem = d / (args.name or f"losses_{device}")
    _write(stem.with_suffix(".json"), json.dumps(out, indent=1))
    _write(stem.with_suffix(".md"), to_markdown(out))
    print(f"wrote {stem}.json and .md ({out['elapsed_s']} s)")
    return out


def _write(path, text):
    from mmit_fast._io import atomic_write_text

    atomic_write_text(path, text)


# ---------------------------------------------------------------------------- report
def _get(rows, loss, impl, B, C):
    for r in rows:
        if (r["loss"], r["impl"], r["B"], r["C"]) == (loss, impl, B, C):
            return r
    return None


def _min_ratio(a, b, fmt):
    """' (fastest runs: N x)': the ratio of the minima, steadier than medians on a loaded machine."""
    if "ms_min" not in a or "ms_min" not in b:
        return ""
    return " (fastest runs: " + fmt.format(a["ms_min"] / b["ms_min"]) + ")"


def goals(out):
    """The issue's goals, each with what was measured and whether it was met (None: not measured)."""
    rows, res = out["results"], []
    if out["device"] == "cpu":
        for loss in ("wlsep", "lsep"):
            for B, C in ((256, 1000), (1024, 4096)):
                ours, ob = _get(rows, loss, "ours", B, C), _get(rows, loss, "ours_bool", B, C)
                for base, want in (("user", 3.0), ("user_compile", 3.0)):
                    b = _get(rows, loss, base, B, C)
                    if ours and b:
                        r = b["ms"] / ours["ms"]
                        res.append({"goal": f"{loss} {B}x{C}: ours (float targets) vs {base}", "wanted": f">= {want:g}x",
                                    "measured": f"{r:.1f}x" + _min_ratio(b, ours, "{:.1f}x"), "met": r >= want})
                if ours and ob:
                    r = ours["ms"] / ob["ms"]
                    res.append({"goal": f"{loss} {B}x{C}: float targets vs bool targets", "wanted": "<= 1.10x",
                                "measured": f"{r:.2f}x" + _min_ratio(ours, ob, "{:.2f}x"), "met": r <= 1.10})
    else:
        for loss in ("wlsep", "lsep", "bce", "warp"):
            ours, comp = _get(rows, loss, "ours", 1024, 4096), _get(rows, loss, "user_compile", 1024, 4096)
            if ours and "frac_peak_bw" in ours:
                f = ours["frac_peak_bw"]
                res.append({"goal": f"{loss} 1024x4096: fwd+bwd fraction of the bandwidth roofline",
                            "wanted": ">= 70%", "measured": f"{100 * f:.0f}% ({ours['gbs']:.0f} GB/s)", "met": f >= 0.7})
            if ours and comp:
                r = comp["ms"] / ours["ms"]
                res.append({"goal": f"{loss} 1024x4096: ours vs torch.compile", "wanted": "> 1x",
                            "measured": f"{r:.2f}x", "met": r > 1.0})
    return res


def to_markdown(out):
    m, dev = out["machine"], out["device"]
    name = m.get("gpu") if dev == "cuda" else m.get("cpu")
    la0, la1 = m.get("load_avg_start"), m.get("load_avg_end")
    fmt_la = lambda la: "n/a" if not la else "/".join(f"{v:.1f}" for v in la)  # noqa: E731
    lines = [f"# Loss benchmark ({dev})", "",
             f"Machine: **{name}**, {m.get('cpu_cores')} CPU cores ({m.get('cpu')}), {m.get('threads')} torch thread(s), "
             f"torch {m.get('torch')}" + (f", CUDA {m.get('cuda')}, triton {m.get('triton')}" if dev == "cuda" else "")
             + f"; default loss backend `{m.get('default_backend')}`, C++ kernels AVX-512 {m.get('cpp_avx512')} / AVX2 "
             f"{m.get('cpp_avx2')}. Load average "
             f"(1/5/15 min) {fmt_la(la0)} at start, {fmt_la(la1)} at the end: a shared machine. Run time "
             f"{out['elapsed_s']} s.", "",
             "Forward + backward of the mean loss w.r.t. the logits, float32 logits, ~2 positives a row. All rows "
             "of a shape measured in one run, interleaved repetition by repetition (random order each time). Goals "
             "are judged on medians; "
             "the ratio of the fastest runs is shown beside them (steadier on a loaded machine). `ms`: median; `IQR`: "
             "inter-quartile range; `x ours`: how many times slower than `ours` (float targets) per row. "
             "`user` = the loss written in plain torch with autograd (factored log-sum-exp), `user_compile` = "
             "its `torch.compile`, `torch` = our plain-torch backend, `ours` = the default call with float "
             "targets, `ours_bool` = with bool targets, `reference` = float64 pairwise (B x C x C) at `B run`.", ""]
    if out["goals"]:
        lines += ["## Goals", "", "| goal | wanted | measured | met |", "|---|---|---|---|"]
        lines += [f"| {g['goal']} | {g['wanted']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |"
                  for g in out["goals"]]
        lines.append("")
    cols = ["loss", "B x C", "impl", "B run", "ms", "IQR", "reps", "x ours"] + (["GB/s", "roofline", "peak MB"]
                                                                                if dev == "cuda" else [])
    lines += ["## All measurements", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in out["results"]:
        ours = _get(out["results"], r["loss"], "ours", r["B"], r["C"])
        rel = f"{r['ms_per_row'] / ours['ms_per_row']:.2f}" if ours else ""
        vals = [r["loss"], f"{r['B']}x{r['C']}", r["impl"], r["B_run"], f"{r['ms']:.3f}",
                f"{r['q1']:.3f}-{r['q3']:.3f}", r["reps"], rel]
        if dev == "cuda":
            vals += [f"{r['gbs']:.0f}" if "gbs" in r else "", f"{100 * r['frac_peak_bw']:.0f}%" if "frac_peak_bw" in r
                     else "", f"{r.get('peak_mb', 0):.1f}"]
        lines.append("| " + " | ".join(str(v) for v in vals) + " |")
    if out["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in out["notes"]]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
