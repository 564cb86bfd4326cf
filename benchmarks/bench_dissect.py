"""Network Dissection speed and memory: mmit-fast's dissection vs NetDissect-Lite's method.

Same concept images (a Multi-Moving-Shapes Broden export), same model (the demo's I3D-R18
width 16, 8 frames at 224 px, static clips; a 2D ResNet-18, NetDissect's own model family, at
224 px; or a stub 512-unit 7 x 7 layer with a cheap forward),
same layer, same threshold quantile and IoU rule (NetDissect's category-restricted union),
measured side by side in one run, each measurement in its own fresh process (so its peak
resident memory is its own), interleaving the two methods repetition by repetition (the machine
is shared; interleaving keeps it fair). Both processes import the same modules before the clock
starts (PIL's plugins, the model package), so neither pays the other's imports.

* **ours**: :func:`mmit_fast.interpret.dissect_run.dissect_model`: one forward pass; per-unit
  streaming histograms for the thresholds (memory K x 4096 counts); activations spilled to a
  float32 temporary file and read back batch by batch; IoU sums from only the pixels that can
  exceed the threshold (image-unit pairs with no cell above it skipped; blocks of output pixels
  next to a hot cell, pruned by their exact corner maximum), joined with all concepts of the
  batch at once (:meth:`~mmit_fast.interpret.dissect.IoUTally.update_sparse`);
* **NetDissect-Lite's method** (reimplemented here from its ``feature_operation.py``, structure
  kept): ``feature_extraction`` stores every image's features in a float64 ``np.memmap``
  (N x K x h x w; Lite's second memmap of per-image maxima is not needed here and left out);
  ``quantile_threshold`` is ``np.percentile`` over all images and positions (Lite:
  ``np.percentile(features, 100 * (1 - q), axis=[0, 2, 3])``; here the same numbers via a
  transpose: numpy copies the memmap into memory either way); ``tally_job`` loops over images
  and, per image, over units: skip the unit when the map's max is not above its threshold,
  else bilinear resize with PIL mode ``F`` (what ``scipy.misc.imresize(..., mode='F')`` did),
  ``argwhere`` above the threshold, ``bincount`` of the pixel labels under those pixels,
  image-level (scalar) labels added, ``tally_units_cat`` per category. Lite reads label maps
  with a prefetching thread pool; here the masks are decoded by the same code as ours and that
  time is subtracted from both (``dissection stage``). Single process, as Lite's default
  ``PARALLEL = 1``.

Reported: images/s end to end (the forward pass included: it is the same work for both and
dominates on a CPU), images/s of the dissection stage alone (end to end minus the forward
pass), peak resident memory (``ru_maxrss``) minus the process's memory after loading the
model, for N images and 2N images (memory flat when the dataset doubles?), and how closely
the two IoU matrices agree.

    python benchmarks/bench_dissect.py                 # results in benchmarks/results/tmp/
    python benchmarks/bench_dissect.py --save          # the committed figures
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import add_output_args, cpu_model, load_average, results_dir  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- setup
def make_data(work: str, videos: int) -> str:
    from mmit_fast.pack.synth import generate_dataset

    broden = os.path.join(work, "broden")
    if not os.path.exists(os.path.join(broden, "index.csv")):
        generate_dataset(os.path.join(work, "data"), num_videos=videos, splits=(0, 0, 1), workers=2, broden=broden,
                         progress=False)
    return broden


def sized_copy(broden: str, n: int, dest: str) -> str:
    """A Broden folder of exactly ``n`` rows (the export's rows repeated), images shared by symlink."""
    os.makedirs(dest, exist_ok=True)
    for name in ("label.csv", "category.csv"):
        shutil.copy(os.path.join(broden, name), dest)
    link = os.path.join(dest, "images")
    if os.path.islink(link):
        os.unlink(link)
    os.symlink(os.path.abspath(os.path.join(broden, "images")), link)
    with open(os.path.join(broden, "index.csv"), newline="") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:]
    with open(os.path.join(dest, "index.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(body[i % len(body)] for i in range(n))
    return dest


def make_checkpoint(path: str, crop: int) -> str:
    import torch

    from mmit_fast.models import create_model
    from mmit_fast.pack.synth import CLASSES

    torch.manual_seed(0)
    kw = dict(depth=18, width=16, conv1_t=1)
    m = create_model("i3d", len(CLASSES), **kw)
    torch.save({"format": "mmit-checkpoint", "version": 2, "model_spec": {"name": "i3d", "num_classes": len(CLASSES),
                                                                           "kwargs": kw},
                "classes": list(CLASSES), "modality": "video", "model": m.state_dict(), "config": {},
                "preprocess": {"frames": 8, "crop": crop, "stride": 4, "sampling": "consecutive"}}, path)
    return path


class _Stub:
    """Built in the worker: a fixed random 2D "layer4" (512 units on a 7 x 7 grid from 224 px,
    ReLU), the size of the layer NetDissect dissects in ResNet-18, with a cheap forward pass so
    that the dissection itself is measured at that scale."""

    @staticmethod
    def build(units: int = 512):
        import torch
        from torch import nn

        from mmit_fast.data.sampling import ClipSpec

        class Stub(nn.Module):
            modality = "video"

            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.layer4 = nn.Sequential(nn.Conv2d(3, units, 32, 32), nn.ReLU())
                self.classifier = nn.Linear(units, 10)

            def forward(self, x):
                return self.classifier(self.layer4(x.mean(dim=2)).mean(dim=(2, 3)))

        return Stub().eval(), ClipSpec(frames=1, stride=1, crop=224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _ResNet18:
    """Built in the worker: NetDissect's own model family, a 2D ResNet-18 (:class:`mmit_fast.models.
    resnet2d.ResNet2d`, torchvision's layout; random He-initialised weights, BatchNorm in eval mode)
    fed the static clip's frame; ``net.layer3`` has 256 units on 14 x 14 maps and ``net.layer4`` 512
    units on 7 x 7 at 224 px, as in NetDissect-Lite's ResNet-18 example."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        from mmit_fast.data.sampling import ClipSpec
        from mmit_fast.models.resnet2d import ResNet2d

        class Net(nn.Module):
            modality = "video"

            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.net = ResNet2d(18, num_classes=10)

            def forward(self, x):
                return self.net(x.mean(dim=2))

        return Net().eval(), ClipSpec(frames=1, stride=1, crop=224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _load(ckpt):
    from mmit_fast.interpret.source import load_model

    if ckpt in ("stub", "resnet18"):
        return (_Stub if ckpt == "stub" else _ResNet18).build()
    return load_model(ckpt, "cpu")


# --------------------------------------------------------------------------- workers
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _timed(fn, acc, key):
    def run(*a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        acc[key] += time.perf_counter() - t
        return out
    return run


def _instrument(b):
    """Time the work both methods share (the same code): the forward pass, reading + preparing the
    images, decoding the mask PNGs."""
    from mmit_fast.interpret import broden as B
    from mmit_fast.interpret import dissect_run as D

    acc = {"forward": 0.0, "prep": 0.0, "masks": 0.0}
    B.read_mask_png = _timed(B.read_mask_png, acc, "masks")
    D.layer_activations = _timed(D.layer_activations, acc, "forward")
    D._input = _timed(D._input, acc, "prep")
    D._prep = _timed(D._prep, acc, "prep")
    b.image = _timed(b.image, acc, "prep")
    return acc


def _setup(ckpt, broden_dir):
    """What both workers do before the clock: the model, the concept set, the resident memory after
    loading them, and the timers of the shared work."""
    from mmit_fast.interpret.broden import Broden

    model, spec, mean, std = _load(ckpt)
    b = Broden(broden_dir)
    base = _rss_mb()
    return (model, spec, mean, std), b, base, _instrument(b)


def worker_ours(ckpt, broden_dir, layer, quantile, batch):
    from mmit_fast.interpret import dissect_run as D

    (model, spec, mean, std), b, base, acc = _setup(ckpt, broden_dir)
    t0 = time.perf_counter()
    raw = D.dissect_model(model, spec, mean, std, b, [layer], quantile=quantile, batch_size=batch)
    iou = raw["layers"][layer]["iou"].iou("category").cpu().numpy()
    dt = time.perf_counter() - t0
    return dt, acc, raw["images"], base, iou, raw["concepts"]


def _lite_concepts(b, i):
    """Lite's per-image concept map: stacked pixel label maps and the image-level labels."""
    from mmit_fast.interpret.broden import _BOX, read_mask_png

    r = b.rows[i]
    pixels, scalars = [], []
    for cat in b.categories:
        for t in r.cells.get(cat, []):
            if t.isdigit():
                scalars.append(int(t))
            elif _BOX.match(t):
                g = _BOX.match(t).groups()
                m = np.zeros((r.sh, r.sw), np.int64)
                m[int(float(g[1])):int(np.ceil(float(g[3]))), int(float(g[0])):int(np.ceil(float(g[2])))] = int(g[4])
                pixels.append(m)
            else:
                pixels.append(read_mask_png(os.path.join(b.root, "images", t)))
    return (np.stack(pixels) if pixels else np.zeros((0, r.sh, r.sw), np.int64)), scalars, r.sh, r.sw


def _lite_features(model, spec, mean, std, b, layer, batch, mm_path):
    from mmit_fast.interpret import dissect_run as D
    from mmit_fast.interpret.layers import resolve_layers

    mods = resolve_layers(model, [layer])
    mm = None
    for s in range(0, len(b), batch):
        ids = list(range(s, min(len(b), s + batch)))
        x = D._input(np.stack([D._prep(b.image(i), spec.crop) for i in ids]), spec, mean, std, "cpu", True)
        a = D.layer_activations(model, mods, x)[layer].numpy()
        if mm is None:
            mm = np.memmap(mm_path, dtype=float, mode="w+", shape=(len(b),) + a.shape[1:])
        mm[s:s + len(ids)] = a
    mm.flush()
    return mm


def _lite_tally(mm, b, thr, labelcat):
    from PIL import Image

    N, K = mm.shape[:2]
    L = labelcat.shape[0]
    tally_both, tally_units = np.zeros((K, L)), np.zeros(K)
    tally_units_cat, tally_labels = np.zeros((K, labelcat.shape[1])), np.zeros(L)
    for i in range(N):
        pixels, scalars, sh, sw = _lite_concepts(b, i)
        for s in scalars:
            tally_labels[s] += sh * sw
        if len(pixels):
            tl = np.bincount(pixels.ravel(), minlength=L)[1:]
            tally_labels[1:len(tl) + 1] += tl
        for u in range(K):
            fm = mm[i, u].astype(np.float32)
            if fm.max() > thr[u]:
                mask = np.array(Image.fromarray(fm, mode="F").resize((sw, sh), Image.BILINEAR))
                idx = np.argwhere(mask > thr[u])
                tally_units[u] += len(idx)
                tally_cat = np.zeros(labelcat.shape[1])
                if len(pixels):
                    bt = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel(), minlength=L)
                    bt[0] = 0
                    tally_cat = bt @ labelcat
                    tally_both[u] += bt
                for s in scalars:
                    tally_cat = tally_cat + labelcat[s]
                    tally_both[u, s] += len(idx)
                tally_units_cat[u] += len(idx) * (tally_cat > 0)
    return tally_both, tally_units_cat, tally_labels


def worker_lite(ckpt, broden_dir, layer, quantile, batch):
    (model, spec, mean, std), b, base, acc = _setup(ckpt, broden_dir)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        mm = _lite_features(model, spec, mean, std, b, layer, batch, os.path.join(tmp, "feat.mmap"))
        K = mm.shape[1]
        thr = np.percentile(np.transpose(mm, (1, 0, 2, 3)).reshape(K, -1), 100 * (1 - quantile), axis=1)
        maxnum = max(b.all_concepts) + 1
        labelcat = np.zeros((maxnum, len(b.categories)))
        for n, c in b.concepts.items():
            labelcat[n, b.categories.index(c.category)] = 1
        both, ucat, labels = _lite_tally(mm, b, thr, labelcat)
        iou = both / (ucat @ labelcat.T + labels[None, :] - both + 1e-10)
        del mm
    dt = time.perf_counter() - t0
    concepts = sorted(b.concepts)
    return dt, acc, len(b), base, iou[:, concepts], concepts


def _warm_imports() -> None:
    """Import what either method imports lazily (PIL's decoders, the model package), before the clock."""
    import PIL.JpegImagePlugin  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401

    import mmit_fast.models  # noqa: F401


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    _warm_imports()
    fn = worker_ours if args.worker == "ours" else worker_lite
    dt, acc, n, base, iou, concepts = fn(args.checkpoint, args.broden, args.layer, args.quantile, args.batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(args.iou_out, iou)
    print(json.dumps({"seconds": dt, "forward_seconds": acc["forward"], "prep_seconds": acc["prep"],
                      "mask_png_seconds": acc["masks"], "images": n,
                      "rss_after_load_mb": base,
                      "peak_rss_mb": peak, "peak_minus_load_mb": peak - base, "units": int(iou.shape[0]),
                      "concepts": len(concepts)}))


# --------------------------------------------------------------------------- driver
def measure(method, ckpt, broden, layer, args, iou_out):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--checkpoint", ckpt, "--broden", broden,
           "--layer", layer, "--quantile", str(args.quantile), "--batch", str(args.batch),
           "--threads", str(args.threads), "--iou-out", iou_out]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")   # as the mmit CLI sets it; the same for both methods
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs, n):
    def med(xs):
        xs = np.asarray(xs, float)
        return {"median": float(np.median(xs)), "min": float(xs.min()), "max": float(xs.max())}

    out = {}
    for (method, size), rs in runs.items():
        out[f"{method}@{size}"] = {
            "images_per_s": med([r["images"] / r["seconds"] for r in rs]),
            "dissection_images_per_s": med([r["images"] / max(r["seconds"] - r["forward_seconds"] - r["prep_seconds"]
                                                              - r["mask_png_seconds"], 1e-9) for r in rs]),
            "mask_png_seconds": med([r["mask_png_seconds"] for r in rs]),
            "prep_seconds": med([r["prep_seconds"] for r in rs]),
            "seconds": med([r["seconds"] for r in rs]), "forward_seconds": med([r["forward_seconds"] for r in rs]),
            "peak_minus_load_mb": med([r["peak_minus_load_mb"] for r in rs]),
            "peak_rss_mb": med([r["peak_rss_mb"] for r in rs]), "units": rs[0]["units"], "images": rs[0]["images"]}
    return out


def _layer_md(res, meta, layer):
    n, n2 = res["layers"][layer].get("sizes", (meta["images"], 2 * meta["images"]))
    s, a = res["layers"][layer]["summary"], res["layers"][layer]["agreement"]
    fmt = lambda d: f"{d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f})"  # noqa: E731
    if layer.startswith("stub"):
        title = (f"`{layer}` of a stub layer: 512 units on 7 x 7 maps from 224 px images (ResNet-18 layer4's size), "
                 "a fixed random 32x32-stride conv + ReLU, so the dissection, not the forward pass, is measured")
    elif layer.startswith("resnet18"):
        title = (f"`{layer.split('.', 1)[1]}` of a 2D ResNet-18 (NetDissect's model family; random weights) on "
                 "224 px images")
    else:
        title = f"`{layer}` of the video model"
    lines = [f"## {title} ({a['units']} units, {a['concepts']} concepts)", "",
             "| method | images | images/s end to end | images/s dissection stage | forward s | image prep s | "
             "mask PNG decode s | peak RSS above model load (MB) |", "|---|---|---|---|---|---|---|---|"]
    for size in (n, n2):
        for m, label in (("ours", "mmit-fast"), ("lite", "NetDissect-Lite method")):
            d = s[f"{m}@{size}"]
            lines.append(f"| {label} | {size} | {fmt(d['images_per_s'])} | {fmt(d['dissection_images_per_s'])} | "
                         f"{d['forward_seconds']['median']:.1f} | {d['prep_seconds']['median']:.1f} | "
                         f"{d['mask_png_seconds']['median']:.1f} | "
                         f"{fmt(d['peak_minus_load_mb'])} |")
    o, l_ = s[f"ours@{n}"], s[f"lite@{n}"]
    sp = o["images_per_s"]["median"] / l_["images_per_s"]["median"]
    sp2 = o["dissection_images_per_s"]["median"] / l_["dissection_images_per_s"]["median"]
    pk = lambda m, k: s[f"{m}@{k}"]["peak_minus_load_mb"]["median"]  # noqa: E731
    lines += ["", f"At {n} images: **{sp:.1f}x end to end**, **{sp2:.1f}x for the dissection stage**. "
              f"Peak memory above the loaded model, {n} -> {n2} images: ours {pk('ours', n):.0f} -> "
              f"{pk('ours', n2):.0f} MB, Lite's {pk('lite', n):.0f} -> {pk('lite', n2):.0f} MB. "
              f"IoU matrices: max |difference| {a['max_abs_diff']:.4f}, same unit label for "
              f"{a['same_label']}/{a['units']} units.", ""]
    return lines


def write_md(path, res, meta):
    lines = ["# Network Dissection: mmit-fast vs NetDissect-Lite's method (`benchmarks/bench_dissect.py`)", "",
             f"Machine: {meta['cpu']} ({meta['cores']} cores visible, **shared with other jobs**: load average "
             f"{meta['load_before']} before, {meta['load_after']} after), torch {meta['torch']}, "
             f"{meta['threads']} threads, OMP_WAIT_POLICY=PASSIVE for both. Models: {meta['model']}. Concept images: "
             f"a Multi-Moving-Shapes Broden export (112 px masks; rows repeated to N and 2N), static clips; "
             f"quantile {meta['quantile']}, batch {meta['batch']}, NetDissect's category-restricted union. "
             f"{meta['reps']} repetitions per cell, each in a fresh process, methods interleaved; median (min-max).", "",
             "*End to end* = images / whole run. *Dissection stage* = images / (whole run - forward pass - image "
             "reading and preparation - mask PNG decoding): thresholds, upsampling, binarising and the IoU sums, "
             "the part where the two methods differ; the three subtracted parts run the same code for both.", ""]
    for layer in res["layers"]:
        lines += _layer_md(res, meta, layer)
    lines += ["Why the memory differs: NetDissect-Lite keeps every image's features in a float64 memmap and "
              "`np.percentile` copies all of them into memory (N x K x h x w x 8 bytes, growing with the dataset); "
              "ours keeps K x 4096 histogram counts, the K x C IoU sums and one batch, and spills float32 activations "
              "to a temporary file (disk, 4 x K x h x w bytes per image) that it reads back with plain reads.",
              "On a CPU the forward pass of a video model dominates the end-to-end time and is the same work for both, "
              "so the end-to-end ratio on the video model stays near 1x whatever the dissection costs; the ResNet-18 "
              "layers are NetDissect's own setting (256 and 512 units), and the stub layer (cheap forward, 512 units) "
              "shows the two dissection methods with almost no forward pass."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def run_layer(layer, ckpt, dirs, sizes, args, work, tag=None):
    tag = tag or layer
    runs = {}
    for rep in range(args.reps):
        order = ("ours", "lite") if rep % 2 == 0 else ("lite", "ours")
        for n in sizes:
            for m in order:
                r = measure(m, ckpt, dirs[n], layer, args, os.path.join(work, f"iou_{m}_{tag}_{n}.npy"))
                runs.setdefault((m, n), []).append(r)
                print(f"{tag} rep {rep} {m:4s} {n:4d} images: {r['images'] / r['seconds']:.1f} img/s, forward "
                      f"{r['forward_seconds']:.1f}s prep {r['prep_seconds']:.1f}s of {r['seconds']:.1f}s, "
                      f"peak +{r['peak_minus_load_mb']:.0f} MB", flush=True)
    a = np.load(os.path.join(work, f"iou_ours_{tag}_{sizes[0]}.npy"))
    b = np.load(os.path.join(work, f"iou_lite_{tag}_{sizes[0]}.npy"))
    agreement = {"units": int(a.shape[0]), "concepts": int(a.shape[1]), "max_abs_diff": float(np.abs(a - b).max()),
                 "same_label": int((a.argmax(1) == b.argmax(1)).sum())}
    return {"summary": summarise(runs, args.images), "agreement": agreement, "sizes": list(sizes),
            "runs": {f"{m}@{n}": rs for (m, n), rs in runs.items()}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=120, help="N (the second size is 2N; default 120)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--layers", default="layer3,layer4", help="layers, each dissected on its own (default layer3,layer4)")
    p.add_argument("--setups", default="video,resnet18,stub",
                   help="video: the demo's I3D (forward-bound on a CPU); resnet18: a 2D ResNet-18, NetDissect's own "
                        "model family (layer3: 256 units 14x14, layer4: 512 units 7x7); stub: a 512-unit 7x7 layer "
                        "with a cheap forward, to measure the dissection itself (default all three)")
    p.add_argument("--stub-images", type=int,
                   help="N for the resnet18 and stub setups (default --images; the first few batches warm the allocator, so a "
                        "larger N shows the steady-state memory)")
    p.add_argument("--quantile", type=float, default=0.005)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--videos", type=int, default=40, help="synthetic videos to export (3 frames each)")
    p.add_argument("--crop", type=int, default=224,
                   help="input side of the default model (224: NetDissect's setting, 7x7 layer4 maps; default 224)")
    p.add_argument("--checkpoint", help="model checkpoint (default: a fresh demo-architecture I3D)")
    p.add_argument("--broden", help="Broden folder (default: a fresh Multi-Moving-Shapes export)")
    p.add_argument("--worker", choices=["ours", "lite"], help=argparse.SUPPRESS)
    p.add_argument("--layer", help=argparse.SUPPRESS)
    p.add_argument("--iou-out", help=argparse.SUPPRESS)
    add_output_args(p)
    args = p.parse_args(argv)
    if args.worker:
        return run_worker(args)
    import torch

    out = results_dir(args)
    work = os.path.join(HERE, "results", "tmp", "bench_dissect")
    os.makedirs(work, exist_ok=True)
    broden = args.broden or make_data(work, args.videos)
    ckpt = args.checkpoint or make_checkpoint(os.path.join(work, f"i3d_r18w16_{args.crop}.pt"), args.crop)
    sizes = (args.images, 2 * args.images)
    stub_sizes = (args.stub_images or args.images, 2 * (args.stub_images or args.images))
    dirs = {n: sized_copy(broden, n, os.path.join(work, f"broden_{n}")) for n in set(sizes + stub_sizes)}
    load_before = load_average()
    layers = {}
    if "video" in args.setups.split(","):
        layers.update({layer: run_layer(layer, ckpt, dirs, sizes, args, work) for layer in args.layers.split(",")})
    if "resnet18" in args.setups.split(","):
        for layer in ("layer3", "layer4"):
            layers[f"resnet18.{layer}"] = run_layer(f"net.{layer}", "resnet18", dirs, stub_sizes, args, work,
                                                    tag=f"resnet18.{layer}")
    if "stub" in args.setups.split(","):
        layers["stub.layer4"] = run_layer("layer4", "stub", dirs, stub_sizes, args, work, tag="stub.layer4")
    meta = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_before": load_before, "load_after": load_average(),
            "torch": torch.__version__, "threads": args.threads, "model": "video: I3D-R18 width 16 (demo architecture), "
            + ("checkpoint " + os.path.basename(args.checkpoint) if args.checkpoint else
               f"random weights, 8 frames at {args.crop} px")
            + "; resnet18: a 2D ResNet-18 (width 64), random weights, one frame at 224 px; stub: one random "
              "32x32-stride conv + ReLU",
            "quantile": args.quantile, "batch": args.batch, "reps": args.reps, "images": args.images,
            "stub_images": stub_sizes[0],
            "shared_machine": True}
    res = {"meta": meta, "layers": layers}
    with open(os.path.join(out, "dissect_cpu.json"), "w") as f:
        json.dump(res, f, indent=2)
    write_md(os.path.join(out, "dissect_cpu.md"), res, meta)
    print(open(os.path.join(out, "dissect_cpu.md")).read())


if __name__ == "__main__":
    main()
