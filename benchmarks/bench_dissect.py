"""Network Dissection's stage against NetDissect-Lite's own code, on identical features.

The headline (``--lite PATH``, a user's checkout of CSAILVision/NetDissect-Lite): a 2D ResNet-18
(NetDissect's model family; random weights) at 224 px gives ``layer3`` (256 units, 14 x 14) and
``layer4`` (512 units, 7 x 7) activations of a Broden export of the synthetic set (rows repeated
to N and 2N images). They are written once, by our forward pass, to a float64 memmap in Lite's own
layout ([N, K, h, w], what its ``feature_extraction`` writes). Then, each run in a fresh process
that only reads that memmap and the concept set:

* **NetDissect-Lite**: its ``FeatureOperator.quantile_threshold`` (its streaming
  ``QuantileVector``) and ``FeatureOperator.tally`` (its per-image, per-unit loop; masks read by
  its own process pool), imported from the checkout as published, patched at run time only where
  today's Python, NumPy and SciPy stop it (``_dissect_lite.py`` names each patch);
* **mmit-fast, cold**: :func:`mmit_fast.interpret.dissect_stage.dissect_features` with an empty
  mask-cache folder: exact thresholds (pass 1 + at most two refinement passes), the concept masks
  decoded on the run's threads and packed into the cache, the IoU pass;
* **mmit-fast, warm**: the same with the cache already built (by an earlier, untimed run on the
  same concept set: what every later layer, model and run finds).

Ours reads the memmap with plain reads, batch by batch (its memory does not grow with N); Lite
slices the memmap (its pages stay resident). Reported per cell: images / stage seconds (median
and min-max over repetitions interleaved method by method, in rotating order), the ratio to Lite
(ratio of medians, and the min-max of the per-repetition ratios), peak resident memory above the
process's memory before the clock, and how closely the IoU matrices and thresholds agree (ours
against Lite's, both against ``np.percentile`` over the memmap).

``--extras``: rows against our earlier *reimplementation* of Lite's method, end to end with the
forward pass (``_dissect_reimpl.py``); clearly labelled, never the headline.

    python benchmarks/bench_dissect.py --lite ~/src/NetDissect-Lite          # results in benchmarks/results/tmp/
    python benchmarks/bench_dissect.py --lite ~/src/NetDissect-Lite --save   # the committed figures
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _dissect_setup import feature_memmap, make_data, peak_rss_mb, rss_mb, sized_copy  # noqa: E402
from _machine import add_output_args, cpu_model, load_average, results_dir  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("lite", "ours-warm", "ours-cold")
LABEL = {"lite": "NetDissect-Lite (its code)", "ours-warm": "mmit-fast, mask cache warm",
         "ours-cold": "mmit-fast, mask cache cold (built in the run)"}


# --------------------------------------------------------------------------- workers (fresh processes)
def _reader(path, shape, batches):
    """Batches of the float64 memmap as float32 tensors, by plain reads into one reused buffer."""
    import torch

    row = int(np.prod(shape[1:])) * 8

    def read():
        buf = np.empty((max(len(ids) for ids, _ in batches),) + tuple(shape[1:]), np.float64)
        with open(path, "rb") as f:
            for ids, _ in batches:
                part = buf[:len(ids)]
                f.seek(ids[0] * row)
                f.readinto(memoryview(part).cast("B"))
                yield torch.from_numpy(part.astype(np.float32))
    return read


def worker_ours(args):
    import torch

    from mmit_fast.interpret.broden import Broden
    from mmit_fast.interpret.dissect_stage import dissect_features

    torch.set_num_threads(args.threads)
    b = Broden(args.broden)
    shape = tuple(args.shape)
    size = (b.rows[0].sh, b.rows[0].sw)
    batches = [(list(range(s, min(shape[0], s + args.batch))), size) for s in range(0, shape[0], args.batch)]
    read = _reader(args.features, shape, batches)
    base = rss_mb()
    t0 = time.perf_counter()
    res = dissect_features({"layer": read}, b, batches, quantile=args.quantile, mask_cache=args.mask_cache,
                           threads=args.threads)
    dt = time.perf_counter() - t0
    L = res["layers"]["layer"]
    return dt, base, L["iou"].iou("category").numpy(), L["thresholds"].numpy(), res["mask_cache"]


def worker_lite(args):
    from mmit_fast.interpret.broden import Broden

    import _dissect_lite as lite

    b = Broden(args.broden)
    cats = [c for c in b.categories if os.path.exists(os.path.join(args.broden, f"c_{c}.csv"))]
    with tempfile.TemporaryDirectory() as out:
        FeatureOperator, captured = lite.load(args.lite, args.broden, out, cats, args.quantile)
        op = FeatureOperator()
        features = np.memmap(args.features, dtype=float, mode="r", shape=tuple(args.shape))
        base = rss_mb()
        t0 = time.perf_counter()
        thr = lite.run_stage(op, features)
        dt = time.perf_counter() - t0
        iou = lite.iou_of(op, captured)[:, sorted(b.concepts)]
    return dt, base, iou, np.asarray(thr, np.float64), "-"


def run_worker(args) -> None:
    fn = worker_lite if args.worker == "lite" else worker_ours
    dt, base, iou, thr, cache = fn(args)
    peak = peak_rss_mb()
    np.save(args.out_prefix + "_iou.npy", iou)
    np.save(args.out_prefix + "_thr.npy", thr)
    print(json.dumps({"seconds": dt, "images": int(args.shape[0]), "rss_before_mb": base, "peak_rss_mb": peak,
                      "peak_minus_start_mb": peak - base, "mask_cache": cache}))


# --------------------------------------------------------------------------- driver
def measure(method, cell, args, out_prefix, cache=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "lite" if method == "lite" else "ours",
           "--broden", cell["broden"], "--features", cell["features"], "--shape", *map(str, cell["shape"]),
           "--quantile", str(args.quantile), "--batch", str(args.stage_batch), "--threads", str(args.threads),
           "--out-prefix", out_prefix]
    if method == "lite":
        cmd += ["--lite", args.lite]
    elif cache:
        cmd += ["--mask-cache", cache]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")   # as the mmit CLI sets it; the same for every method
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stats(xs):
    xs = np.asarray(xs, float)
    return {"median": float(np.median(xs)), "min": float(xs.min()), "max": float(xs.max())}


def run_headline(args, cells, work):
    """Every (layer, size) cell, repetitions interleaved method by method in rotating order."""
    runs = {}
    warm = {}
    for key, c in cells.items():                      # the warm caches: one untimed run per concept set
        if c["broden"] not in warm:
            warm[c["broden"]] = os.path.join(work, "cache_" + os.path.basename(c["broden"]))
            shutil.rmtree(warm[c["broden"]], ignore_errors=True)
            measure("ours-warm", c, args, os.path.join(work, "prime"), warm[c["broden"]])
    for rep in range(args.reps):
        for key, c in cells.items():
            order = METHODS[rep % 3:] + METHODS[:rep % 3]
            for m in order:
                cold = tempfile.mkdtemp(prefix="cold_", dir=work) if m == "ours-cold" else None
                r = measure(m, c, args, os.path.join(work, f"{key}_{m}"), cold or warm[c["broden"]])
                if cold:
                    shutil.rmtree(cold)
                runs.setdefault(key, {}).setdefault(m, []).append(r)
                print(f"rep {rep + 1}/{args.reps} {key:14s} {m:9s} {r['images'] / r['seconds']:7.1f} img/s "
                      f"peak +{r['peak_minus_start_mb']:.0f} MB ({r['mask_cache']})", flush=True)
    return runs


def agreement(cell, work, key):
    """IoU of ours against Lite's; thresholds of both against np.percentile over the memmap."""
    a = np.load(os.path.join(work, f"{key}_ours-warm_iou.npy"))
    c = np.load(os.path.join(work, f"{key}_ours-cold_iou.npy"))
    b = np.load(os.path.join(work, f"{key}_lite_iou.npy"))
    mm = np.memmap(cell["features"], dtype=np.float64, mode="r", shape=tuple(cell["shape"]))
    K = mm.shape[1]
    ref = np.percentile(np.transpose(mm, (1, 0, 2, 3)).reshape(K, -1), 100 * (1 - cell["quantile"]), axis=1)
    t_ours = np.load(os.path.join(work, f"{key}_ours-warm_thr.npy"))
    t_lite = np.load(os.path.join(work, f"{key}_lite_thr.npy"))
    rel = np.abs(t_lite - ref) / np.maximum(np.abs(ref), 1e-12)
    return {"units": int(a.shape[0]), "concepts": int(a.shape[1]), "iou_max_abs_diff": float(np.abs(a - b).max()),
            "same_label": int((a.argmax(1) == b.argmax(1)).sum()), "cold_equals_warm": bool(np.array_equal(a, c)),
            "ours_thresholds_equal_np_percentile": bool(np.array_equal(t_ours, ref)),
            "lite_threshold_rel_error_median": float(np.median(rel)), "lite_threshold_rel_error_max": float(rel.max())}


def summarise(runs):
    out = {}
    for key, by in runs.items():
        lite = [r["images"] / r["seconds"] for r in by["lite"]]
        s = {}
        for m, rs in by.items():
            ips = [r["images"] / r["seconds"] for r in rs]
            s[m] = {"images_per_s": _stats(ips), "seconds": _stats([r["seconds"] for r in rs]),
                    "peak_minus_start_mb": _stats([r["peak_minus_start_mb"] for r in rs]),
                    "ratio_of_medians": float(np.median(ips) / np.median(lite)),
                    "paired_ratios": _stats([x / y for x, y in zip(ips, lite)])}
        out[key] = s
    return out


def _fmt(d, nd=1):
    return f"{d['median']:.{nd}f} ({d['min']:.{nd}f}-{d['max']:.{nd}f})"


def write_md(path, res):
    meta = res["meta"]
    lines = ["# Network Dissection's stage: mmit-fast vs NetDissect-Lite's own code (`benchmarks/bench_dissect.py`)", "",
             f"Machine: {meta['cpu']} ({meta['cores']} cores, **shared with other jobs**: load average "
             f"{meta['load_before']} before, {meta['load_after']} after); Python {meta['python']}, NumPy "
             f"{meta['numpy']}, SciPy {meta['scipy']}, Pillow {meta['pillow']}, torch {meta['torch']}; "
             f"{meta['threads']} threads for ours, OMP_WAIT_POLICY=PASSIVE for every process.", "",
             f"NetDissect-Lite: the checkout at `{meta['lite_path']}`, commit `{meta['lite_commit']}`, run as "
             "published (its `quantile_threshold` + `tally`, `PARALLEL = 1`, its process pool of mask readers), "
             "patched at run time only where today's software stops it: " + "; ".join(meta["lite_shims"]) + ".", "",
             f"Features: {meta['model']}, written once to a float64 memmap in Lite's layout; every method reads the "
             f"same file. Concept set: a Broden export of the synthetic set (112 px masks; rows repeated to N and 2N). "
             f"Quantile {meta['quantile']}; ours in batches of {meta['stage_batch']}. {meta['reps']} repetitions per "
             "cell, each in a fresh process, methods interleaved in rotating order; median (min-max). *Stage* = "
             "thresholds + IoU tally (for ours: + the mask cache's digest check, and in the cold rows its build), "
             "the work Lite's `quantile_threshold` + `tally` do.", ""]
    for layer in res["layers"]:
        lines += _layer_md(res, layer)
    if res.get("extras"):
        from _dissect_reimpl import markdown

        lines += markdown(res["extras"], _fmt)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _layer_md(res, layer):
    L = res["layers"][layer]
    n, n2 = L["sizes"]
    a = L["agreement"]
    lines = [f"## ResNet-18 `{layer}` ({a['units']} units, {a['concepts']} concepts)", "",
             "| method | images | stage images/s | vs Lite (ratio of medians; per-rep min-max) | peak RSS above start (MB) |",
             "|---|---|---|---|---|"]
    for size in (n, n2):
        for m in METHODS:
            d = L["summary"][f"{layer}@{size}"][m]
            ratio = "1" if m == "lite" else (f"**{d['ratio_of_medians']:.1f}x** ({d['paired_ratios']['min']:.1f}-"
                                             f"{d['paired_ratios']['max']:.1f})")
            lines.append(f"| {LABEL[m]} | {size} | {_fmt(d['images_per_s'])} | {ratio} | "
                         f"{_fmt(d['peak_minus_start_mb'], 0)} |")
    lines += ["", f"At {n} images: IoU max |ours - Lite| {a['iou_max_abs_diff']:.4f}, the same unit label for "
              f"{a['same_label']}/{a['units']} units; cold and warm IoU identical: {a['cold_equals_warm']}; our "
              f"thresholds equal `np.percentile` over the memmap bit for bit: {a['ours_thresholds_equal_np_percentile']}"
              f"; Lite's `QuantileVector` thresholds differ from it by {100 * a['lite_threshold_rel_error_median']:.2f}% "
              f"(median; max {100 * a['lite_threshold_rel_error_max']:.2f}%).", ""]
    return lines


def setup_cells(args, work):
    broden = args.broden or make_data(work, args.videos)
    sizes = (args.images, 2 * args.images)
    dirs = {n: sized_copy(broden, n, os.path.join(work, f"broden_{n}")) for n in sizes}
    cells = {}
    for layer in args.layers.split(","):
        for n in sizes:
            path, shape = feature_memmap(work, "resnet18", f"net.{layer}", dirs[n])
            cells[f"{layer}@{n}"] = {"broden": dirs[n], "features": path, "shape": list(shape), "layer": layer,
                                     "images": n, "quantile": args.quantile}
    return cells, sizes, dirs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lite", help="a checkout of CSAILVision/NetDissect-Lite (the headline needs it)")
    p.add_argument("--images", type=int, default=120, help="N (the second size is 2N; default 120)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--layers", default="layer3,layer4", help="ResNet-18 layers (default layer3,layer4)")
    p.add_argument("--quantile", type=float, default=0.005)
    p.add_argument("--stage-batch", type=int, default=32, help="images per batch of our stage (default 32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--videos", type=int, default=40, help="synthetic videos to export (3 frames each)")
    p.add_argument("--broden", help="Broden folder (default: a fresh export of the synthetic set)")
    p.add_argument("--extras", action="store_true", help="also the end-to-end rows against our reimplementation")
    p.add_argument("--extras-reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["ours", "lite", "reimpl-ours", "reimpl-lite"], help=argparse.SUPPRESS)
    p.add_argument("--features", help=argparse.SUPPRESS)
    p.add_argument("--shape", type=int, nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--mask-cache", help=argparse.SUPPRESS)
    p.add_argument("--out-prefix", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--layer", help=argparse.SUPPRESS)
    p.add_argument("--iou-out", help=argparse.SUPPRESS)
    add_output_args(p)
    args = p.parse_args(argv)
    if args.worker in ("reimpl-ours", "reimpl-lite"):
        from _dissect_reimpl import run_worker as reimpl_worker

        return reimpl_worker(args)
    if args.worker:
        return run_worker(args)
    if not args.lite and not args.extras:
        p.error("--lite PATH (a NetDissect-Lite checkout: git clone https://github.com/CSAILVision/NetDissect-Lite) "
                "is needed for the headline; --extras alone runs the reimplementation rows")
    return run(args)


def run(args):
    import PIL
    import scipy
    import torch

    from _dissect_lite import SHIMS, checkout_commit

    out = results_dir(args)
    work = os.path.join(HERE, "results", "tmp", "bench_dissect")
    os.makedirs(work, exist_ok=True)
    cells, sizes, dirs = setup_cells(args, work)
    load_before = load_average()
    layers = {}
    if args.lite:
        runs = run_headline(args, cells, work)
        summary = summarise(runs)
        for layer in args.layers.split(","):
            layers[layer] = {"sizes": list(sizes), "summary": {k: v for k, v in summary.items() if k.startswith(layer)},
                             "agreement": agreement(cells[f"{layer}@{sizes[0]}"], work, f"{layer}@{sizes[0]}"),
                             "runs": {k: v for k, v in runs.items() if k.startswith(layer)}}
    extras = run_extras(args, dirs, sizes, work) if args.extras else None
    meta = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_before": load_before, "load_after": load_average(),
            "python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
            "pillow": PIL.__version__, "torch": torch.__version__, "threads": args.threads, "quantile": args.quantile,
            "stage_batch": args.stage_batch, "reps": args.reps, "images": args.images,
            "lite_path": os.path.abspath(args.lite) if args.lite else None,
            "lite_commit": checkout_commit(args.lite) if args.lite else None, "lite_shims": SHIMS,
            "model": "a 2D ResNet-18 (torchvision layout, random He-initialised weights, eval mode) at 224 px",
            "shared_machine": True}
    res = {"meta": meta, "layers": layers, "extras": extras}
    with open(os.path.join(out, "dissect_cpu.json"), "w") as f:
        json.dump(res, f, indent=2)
    write_md(os.path.join(out, "dissect_cpu.md"), res)
    print(open(os.path.join(out, "dissect_cpu.md")).read())


def run_extras(args, dirs, sizes, work):
    """The reimplementation rows (end to end, forward pass included), interleaved."""
    from _dissect_reimpl import summarise as summarise_extra

    out = {}
    for layer in args.layers.split(","):
        runs = {}
        for rep in range(args.extras_reps):
            for n in sizes:
                for m in (("reimpl-ours", "reimpl-lite") if rep % 2 == 0 else ("reimpl-lite", "reimpl-ours")):
                    cmd = [sys.executable, os.path.abspath(__file__), "--worker", m, "--checkpoint", "resnet18",
                           "--broden", dirs[n], "--layer", f"net.{layer}", "--quantile", str(args.quantile),
                           "--batch", str(args.batch), "--threads", str(args.threads),
                           "--iou-out", os.path.join(work, f"extra_{m}_{layer}_{n}.npy")]
                    res = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                         env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
                    r = json.loads(res.stdout.strip().splitlines()[-1])
                    runs.setdefault(f"{m}@{n}", []).append(r)
                    print(f"extras rep {rep + 1} {layer} {m:11s} {n:4d}: {r['images'] / r['seconds']:.1f} img/s",
                          flush=True)
        out[layer] = {"summary": {k: summarise_extra(v) for k, v in runs.items()}, "runs": runs}
    return out


if __name__ == "__main__":
    main()
