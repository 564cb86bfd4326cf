"""The GPU suite: one command on a CUDA machine, under 8 minutes, one results file.

    bash benchmarks/gpu_suite.sh            # = python benchmarks/gpu_suite.py (scratch folder)
    bash benchmarks/gpu_suite.sh --save     # write benchmarks/results/gpu_suite_<device>.{json,md}
    python benchmarks/gpu_suite.py --dry-run   # anywhere: the bookkeeping and the "missing" notes only

Steps, each recorded as ok / failed / missing (a prerequisite is absent: named) / skipped (out of
its time), the suite carrying on whatever one of them does:

1. ``environment``      -- GPU, CUDA, torch, triton and DALI versions;
2. ``gpu_tests``        -- ``pytest -m gpu`` (tests marked for a CUDA device);
3. ``triton_exact``     -- every Triton loss against a float64 oracle at C in {292, 4096, 20000}
   (C = 20000 takes the multi-block path, WARP's scratch rows and barriers): float32/bfloat16
   logits, bool/float targets, weights; max relative error of loss and gradient;
4. ``loss_speed``       -- ``bench_losses.py --device cuda`` at B=1024, C=4096: ``do_bench`` fwd+bwd of
   ours vs the user's plain torch and its ``torch.compile``, GB/s and fraction of the roofline;
5. ``dali_decode``      -- synthetic test shards (96 clips, h264, 256 px), decoded by the DALI ``mixed`` loader
   (16x224x224 clips): clips/s, and PSNR of its frames against the PyAV loader's;
6. ``i3d_train``        -- I3D-R50 (292 classes) training steps in bf16 autocast on in-memory clips:
   steps/s and clips/s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from _machine import add_output_args, cpu_model, load_average, results_dir  # noqa: E402

BUDGET_S = 450.0  # the whole suite (the shell wrapper kills it at 470 s)
STEP_BUDGET_S = {"environment": 30, "gpu_tests": 120, "triton_exact": 90, "loss_speed": 120, "dali_decode": 90,
                 "i3d_train": 60}


class Missing(Exception):
    """A prerequisite of a step is absent (no CUDA device, DALI not installed, ...): named, not a failure."""


def need_cuda():
    import torch

    if not torch.cuda.is_available():
        raise Missing("no CUDA device (torch.cuda.is_available() is False)")
    return torch


# ---------------------------------------------------------------------------- steps
def step_environment(ctx):
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu": cpu_model(), "load_avg": load_average()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    from mmit_fast.losses.function import triton_error

    info["triton_kernels"] = triton_error() or "importable"
    try:
        import nvidia.dali as dali

        info["dali"] = dali.__version__
    except ImportError:
        info["dali"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
    ctx["device_name"] = info.get("gpu") or "no-gpu"
    return info


def step_gpu_tests(ctx):
    need_cuda()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    t = ctx["step_left"]()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=max(t, 10))
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    if proc.returncode not in (0, 5):
        raise RuntimeError(f"pytest -m gpu: exit {proc.returncode}: {tail[0]}\n" + proc.stdout[-3000:])
    skipped = [ln for ln in proc.stdout.splitlines() if ln.startswith("SKIPPED")]
    return {"pytest": tail[0], "exit": proc.returncode, "skipped": skipped}


def _oracle(name, x, y, w, ref_max_c=4096):
    """Float64 row losses and d(sum)/dx: the pairwise reference when B x C x C fits, else the float64
    torch backend (exact in O(C), itself tested against the pairwise reference)."""
    from mmit_fast.losses import get_loss
    from mmit_fast.losses import reference as ref

    xr = x.double().requires_grad_()
    if x.shape[1] <= ref_max_c:
        rows = ref.reference_loss(name, xr, y, w, "none")
    else:
        rows = get_loss(name, weights=w, reduction="none", backend="torch")(xr, y)
    rows.sum().backward()
    return rows.detach(), xr.grad


def exactness(device, Cs=(292, 4096, 20000), B=4, seed=0, ref_max_c=4096):
    """Max relative error (vs the float64 oracle, relative to max(1, max|oracle|)) per loss, C, dtype, targets."""
    import torch

    from mmit_fast.losses import get_loss

    tol = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-5, 1.6e-2)}
    rows = []
    for C in Cs:
        g = torch.Generator().manual_seed(seed + C)
        x32 = (torch.randn(B, C, generator=g) * 3).to(device)
        y = (torch.rand(B, C, generator=g) < 3.0 / C).to(device)
        y[0, :] = False
        y[0, 5] = True
        w = (torch.rand(C, generator=g) + 0.05).to(device)
        for name in ("wlsep", "lsep", "warp", "bce"):
            for dtype in (torch.float32, torch.bfloat16):
                x = x32.to(dtype)
                want_rows, want_grad = _oracle(name, x, y, w, ref_max_c)
                for targets in (y, y.float()):
                    xg = x.clone().requires_grad_()
                    got = get_loss(name, weights=w, reduction="none", backend="triton")(xg, targets)
                    got.sum().backward()
                    e_loss = float((got.detach().double() - want_rows).abs().max()) / max(1.0, float(want_rows.abs().max()))
                    e_grad = float((xg.grad.double() - want_grad).abs().max()) / max(1.0, float(want_grad.abs().max()))
                    rows.append({"loss": name, "C": C, "dtype": str(dtype).replace("torch.", ""),
                                 "targets": str(targets.dtype).replace("torch.", ""), "err_loss": e_loss,
                                 "err_grad": e_grad, "ok": e_loss <= tol[dtype][0] and e_grad <= tol[dtype][1]})
    return rows


def step_triton_exact(ctx):
    need_cuda()
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise Missing(f"triton cannot be imported: {e}") from None
    rows = exactness("cuda")
    bad = [r for r in rows if not r["ok"]]
    out = {"cases": len(rows), "bad": bad, "worst_grad": max(r["err_grad"] for r in rows), "table": rows}
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(rows)} Triton cases off the oracle, e.g. {bad[0]}")
    return out


def step_loss_speed(ctx):
    need_cuda()
    import bench_losses

    out = bench_losses.main(["--device", "cuda", "--shapes", "1024x4096", "--losses", "wlsep,lsep,bce,warp",
                             "--impls", "user,user_compile,torch,ours,ours_bool", "--out", ctx["out_dir"]])
    keep = ("loss", "impl", "ms", "q1", "q3", "gbs", "frac_peak_bw", "peak_mb")
    return {"goals": out["goals"], "peak_gbs": out["peak_gbs"], "notes": out["notes"],
            "rows": [{k: r[k] for k in keep if k in r} for r in out["results"]]}


def _psnr(a, b):
    """PSNR of b against a, the peak being a's value range (the loaders' frames are normalised)."""
    import math

    a, b = a.float().cpu(), b.float().cpu()
    mse = float(((a - b) ** 2).mean())
    peak = float(a.max() - a.min())
    return float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)


def step_dali_decode(ctx):
    need_cuda()
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise Missing("DALI is not installed: pip install 'mmit-fast[dali]' (offline: see README, 'DALI without "
                      "internet')") from None
    try:
        from mmit_fast.data import make_loader
        from mmit_fast.data.sampling import ClipSpec
        from mmit_fast.pack.synth import generate_dataset
    except ImportError as e:
        raise Missing(f"the [data] extra is missing: {e}") from None
    d = os.path.join(ctx["tmp"], "shards")
    generate_dataset(d, num_videos=120, size=256, seconds=2.0, codec="h264", workers=min(8, os.cpu_count() or 1),
                     splits=(0.1, 0.1, 0.8), progress=False)
    clip = ClipSpec(frames=16, stride=2, crop=224)

    def loader(backend, device):
        return make_loader(d, "test", clip, batch_size=16, train=False, backend=backend, device=device,
                           num_workers=4)

    dali = loader("dali", "cuda")
    first = next(iter(dali)).video
    clips, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min(20.0, ctx["step_left"]() / 3):
        for batch in dali:
            clips += batch.video.shape[0]
    import torch

    torch.cuda.synchronize()
    rate = clips / (time.perf_counter() - t0)
    ref = next(iter(loader("pyav", "cpu"))).video
    return {"clips_per_s": rate, "clip": "16x224x224", "goal_clips_per_s": 2000, "met": rate >= 2000,
            "psnr_vs_pyav_db": _psnr(ref, first), "clips_timed": clips}


def step_i3d_train(ctx):
    torch = need_cuda()
    from mmit_fast.losses import wlsep_loss
    from mmit_fast.models import create_model

    model = create_model("i3d", 292).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    B = 16
    x = torch.randn(B, 3, 16, 224, 224, device="cuda")
    y = (torch.rand(B, 292, device="cuda") < 0.01).float()
    y[:, 0] = 1.0

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = wlsep_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while n < 5 or (n < 30 and time.perf_counter() - t0 < 15):
        step()
        n += 1
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"batch": B, "clip": "3x16x224x224", "dtype": "bfloat16 autocast", "steps": n, "steps_per_s": n / dt,
            "clips_per_s": n * B / dt, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}


STEPS = [("environment", step_environment), ("gpu_tests", step_gpu_tests), ("triton_exact", step_triton_exact),
         ("loss_speed", step_loss_speed), ("dali_decode", step_dali_decode), ("i3d_train", step_i3d_train)]


# ---------------------------------------------------------------------------- bookkeeping
def run_step(name, fn, ctx, deadline):
    """One step -> its record: status ok / missing / failed / skipped, seconds, result or reason."""
    left = deadline - time.time()
    budget = min(STEP_BUDGET_S.get(name, 60), left)
    if budget <= 5:
        return {"step": name, "status": "skipped", "reason": f"out of time ({left:.0f} s of the suite left)"}
    t0 = time.time()
    ctx["step_left"] = lambda: budget - (time.time() - t0)
    rec = {"step": name}
    try:
        rec.update(status="ok", result=fn(ctx))
    except Missing as e:
        rec.update(status="missing", reason=str(e))
    except Exception as e:  # noqa: BLE001 - one step failing must not stop the others
        rec.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   traceback=traceback.format_exc()[-4000:])
    rec["seconds"] = round(time.time() - t0, 1)
    if rec["seconds"] > STEP_BUDGET_S.get(name, 60):
        rec["over_budget"] = True
    return rec


def dry_step(name, fn):
    """--dry-run: only the prerequisites of a step (CUDA, DALI), nothing is run."""
    def probe(ctx):
        if name == "environment":
            return fn(ctx)
        need_cuda()
        if name == "dali_decode":
            try:
                import nvidia.dali  # noqa: F401
            except ImportError:
                raise Missing("DALI is not installed") from None
        return {"dry_run": "prerequisites present; not run"}
    return probe


def run_suite(steps, out_dir, budget_s=BUDGET_S, dry_run=False, write=None):
    """Run the steps in order; ``write(result)`` after each one, so that a suite killed by its
    time limit still leaves the results of the steps it finished."""
    ctx = {"out_dir": out_dir, "tmp": tempfile.mkdtemp(prefix="mmit_gpu_suite_"), "device_name": "no-gpu"}
    deadline, t0, records = time.time() + budget_s, time.time(), []
    for name, fn in steps:
        rec = run_step(name, dry_step(name, fn) if dry_run else fn, ctx, deadline)
        records.append(rec)
        print(f"[gpu_suite] {name:13s} {rec['status']:8s} {rec.get('seconds', 0):6.1f} s  "
              f"{rec.get('reason', '')[:160]}", flush=True)
        res = _result(ctx, records, t0, budget_s, dry_run, done=len(records) == len(steps))
        if write:
            write(res)
    return res


def _result(ctx, records, t0, budget_s, dry_run, done):
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "missing", "failed", "skipped")}
    return {"suite": "mmit-fast GPU suite", "device": ctx["device_name"], "dry_run": dry_run, "complete": done,
            "elapsed_s": round(time.time() - t0, 1), "budget_s": budget_s, "counts": counts, "steps": records,
            "missing": [f"{r['step']}: {r['reason']}" for r in records if r["status"] == "missing"]}


def to_markdown(res):
    lines = [f"# GPU suite ({res['device']})", "", f"{res['elapsed_s']} s of {res['budget_s']:.0f} s; "
             + ", ".join(f"{v} {k}" for k, v in res["counts"].items()) + (" (dry run)" if res["dry_run"] else "")
             + ("" if res.get("complete", True) else " -- INCOMPLETE: the suite stopped before its last step"), "",
             "| step | status | s | result / reason |", "|---|---|---|---|"]
    for r in res["steps"]:
        what = r.get("reason") or _summary(r.get("result"))
        lines.append(f"| {r['step']} | {r['status']} | {r.get('seconds', '')} | {what} |")
    goals = ((next((r for r in res["steps"] if r["step"] == "loss_speed"), {}).get("result") or {}).get("goals")) or []
    if goals:
        lines += ["", "## Loss goals (B=1024, C=4096)", "", "| goal | wanted | measured | met |", "|---|---|---|---|"]
        lines += [f"| {g['goal']} | {g['wanted']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |" for g in goals]
    if res["missing"]:
        lines += ["", "Missing (named, the suite carried on):", *[f"- {m}" for m in res["missing"]]]
    return "\n".join(lines) + "\n"


def _summary(result):
    if not isinstance(result, dict):
        return ""
    keep = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    return ", ".join(f"{k}={round(v, 3) if isinstance(v, float) else v}" for k, v in keep.items())[:300]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="check each step's prerequisites only; run nothing heavy")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole suite (default 450)")
    ap.add_argument("--steps", default=None, help="comma list of steps to run (default: all)")
    add_output_args(ap)
    args = ap.parse_args(argv)
    steps = [(n, f) for n, f in STEPS if not args.steps or n in args.steps.split(",") or n == "environment"]
    import torch

    if torch.cuda.is_available():  # the real kernels, not the interpreter
        os.environ.pop("TRITON_INTERPRET", None)
    out_dir = results_dir(args)
    res = run_suite(steps, out_dir, args.budget, args.dry_run, write=lambda r: write_results(r, out_dir))
    print(f"[gpu_suite] wrote {write_results(res, out_dir)}.json and .md")
    return 1 if res["counts"]["failed"] else 0


def write_results(res, out_dir):
    from mmit_fast._io import atomic_write_text

    stem = Path(out_dir) / f"gpu_suite_{res['device'].replace(' ', '_')}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(res, indent=1, default=str))
    atomic_write_text(stem.with_suffix(".md"), to_markdown(res))
    return stem


if __name__ == "__main__":
    sys.exit(main())
