"""Exported models against PyTorch: CPU latency of one clip batch, and agreement.

The model is the authors' ResNet3D-50 (``moments-resnet3d``, 292 classes, random weights and
BatchNorm statistics: no released file is downloaded), written as an mmit checkpoint, exported
with ``mmit_fast.export.export_checkpoint`` to ONNX (dynamic batch) and TorchScript, each file
checked by its own runtime. Then, interleaved repetition by repetition (the machine may be
shared), the same input through:

* ``torch eager``: ``model(x)`` under ``torch.inference_mode()`` (what a user runs by default);
* ``torch.compile``: the same model compiled by inductor (``--no-compile`` skips it; its compile
  time is reported apart);
* ``torchscript``: ``torch.jit.load`` of the exported file;
* ``onnxruntime``: ``InferenceSession`` on the CPU provider, default graph optimisations,
  ``intra_op_num_threads`` = torch's thread count.

Reported: median latency per batch with min-max, the largest |difference| to eager's logits,
export times. Usage: ``python benchmarks/bench_export.py [--frames 16 --crop 112 --batch 1
--reps 5] [--save]``.
"""
import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the mmit CLI: spinning threads distort a shared machine
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import add_output_args, cpu_model, load_average, results_dir  # noqa: E402


def make_checkpoint(path, depth, width, classes):
    from mmit_fast.models import create_model
    from mmit_fast.models.importers import authors_preprocess

    g = torch.Generator().manual_seed(0)
    model = create_model("moments-resnet3d", classes, depth=depth, width=width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    torch.save({"format": "mmit-checkpoint", "version": 2, "classes": [f"c{i}" for i in range(classes)],
                "model_spec": {"name": "moments-resnet3d", "num_classes": classes,
                               "kwargs": {"depth": depth, "width": width}},
                "modality": "video", "model": model.state_dict(), "preprocess": authors_preprocess()}, path)


def runners(ck, onnx_path, ts_path, compile_too, x):
    import onnxruntime as ort

    from mmit_fast.models import from_checkpoint

    model = from_checkpoint(ck)
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    ts = torch.jit.load(ts_path)
    out = {"torch eager": lambda x: model(x),
           "torchscript": lambda x: ts(x),
           "onnxruntime": lambda x: torch.from_numpy(sess.run(["logits"], {"video": x.numpy()})[0])}
    extra = {}
    if compile_too:
        compiled = torch.compile(model)
        t = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        extra["compile_s"] = time.perf_counter() - t
        out["torch.compile"] = lambda x: compiled(x)
    return out, extra


def measure(run, x, reps):
    times = {k: [] for k in run}
    ref = None
    diffs = {}
    with torch.inference_mode():
        for name, f in run.items():  # warm-up, and the agreement check
            y = f(x)
            ref = y if ref is None else ref
            diffs[name] = float((y.double() - ref.double()).abs().max())
        for _ in range(reps):
            for name, f in run.items():
                t = time.perf_counter()
                f(x)
                times[name].append(time.perf_counter() - t)
    return times, diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--classes", type=int, default=292)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--crop", type=int, default=112)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    add_output_args(ap)
    args = ap.parse_args()

    from mmit_fast.export import export_checkpoint

    tmp = tempfile.mkdtemp(prefix="bench-export-")
    atexit.register(shutil.rmtree, tmp, True)
    ck = os.path.join(tmp, "ck.pt")
    make_checkpoint(ck, args.depth, args.width, args.classes)
    export_s = {}
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.ts")):
        t = time.perf_counter()
        side = export_checkpoint(ck, fmt, os.path.join(tmp, name), frames=args.frames, crop=args.crop)
        export_s[fmt] = {"seconds": time.perf_counter() - t, "check_max_rel_diff": side["check"]["max_rel_diff"]}
    x = torch.randn(args.batch, 3, args.frames, args.crop, args.crop, generator=torch.Generator().manual_seed(1))
    run, extra = runners(ck, os.path.join(tmp, "m.onnx"), os.path.join(tmp, "m.ts"), not args.no_compile, x)
    times, diffs = measure(run, x, args.reps)
    rows = {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v), "max_ms": 1e3 * max(v),
                "max_abs_diff_vs_eager": diffs[k]} for k, v in times.items()}
    res = {"machine": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
           "load_average": load_average(), "shared_machine": True, "torch": torch.__version__,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "model": f"moments-resnet3d depth {args.depth} width {args.width}, {args.classes} classes",
           "input": [args.batch, 3, args.frames, args.crop, args.crop], "reps": args.reps,
           "export": export_s, **extra, "results": rows}
    d = results_dir(args)
    stem = os.path.join(d, "export_cpu")
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=2)
    lines = [f"# Exported ResNet3D-{args.depth} vs PyTorch, CPU", "",
             f"{res['machine']}, {res['cpus']} cores, {res['threads']} threads, load average "
             f"{', '.join(f'{v:.1f}' for v in res['load_average'] or [])} (machine shared with other work); "
             f"torch {torch.__version__}, OMP_WAIT_POLICY={res['omp_wait_policy']}; input {res['input']}; "
             f"{args.reps} interleaved repetitions.", "",
             "| runtime | median ms | min-max ms | max abs diff vs eager |", "|---|---|---|---|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['median_ms']:.0f} | {r['min_ms']:.0f}-{r['max_ms']:.0f} | "
                     f"{r['max_abs_diff_vs_eager']:.1e} |")
    lines += ["", "Export: " + ", ".join(f"{k} {v['seconds']:.1f} s (check: max rel diff "
                                       f"{v['check_max_rel_diff']:.1e})" for k, v in export_s.items())
              + (f"; torch.compile first call {extra['compile_s']:.1f} s" if extra else "") + "."]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
