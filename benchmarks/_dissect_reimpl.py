"""bench_dissect.py's extra rows (``--extras``; never the headline): end to end, forward pass
included, against **our reimplementation** of NetDissect-Lite's method, the comparison this
benchmark made before it ran Lite's own code.

* **ours**: :func:`mmit_fast.interpret.dissect_run.dissect_model` (one forward pass, exact
  thresholds, masks decoded into a temporary packed file on the run's threads: no cache kept);
* **reimplementation of Lite's method** (from its ``feature_operation.py``, structure kept; *not*
  Lite's code): a float64 memmap of all features; thresholds by ``np.percentile`` over them (Lite
  itself uses its streaming ``QuantileVector``); a loop over images and, per image, over units:
  skip the unit when its map's max is not above the threshold, else PIL bilinear resize (mode
  ``F``), ``argwhere`` above it, ``bincount`` of the pixel labels under those pixels. Masks are
  decoded by our Broden reader, in the loop, one process.

*Dissection stage* here = whole run minus the forward pass and the image preparation (the same
code for both); mask decoding is inside the stage for both.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np

from _dissect_setup import load_model, peak_rss_mb, rss_mb, write_features


def _timed(fn, acc, key):
    def run(*a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        acc[key] += time.perf_counter() - t
        return out
    return run


def _instrument(b):
    """Time the work both methods share (the same code): the forward pass, reading + preparing images."""
    from mmit_fast.interpret import dissect_run as D

    acc = {"forward": 0.0, "prep": 0.0}
    D.layer_activations = _timed(D.layer_activations, acc, "forward")
    D.static_clip = _timed(D.static_clip, acc, "prep")
    D.prep_image = _timed(D.prep_image, acc, "prep")
    b.image = _timed(b.image, acc, "prep")
    return acc


def _setup(ckpt, broden_dir):
    from mmit_fast.interpret.broden import Broden

    model, spec, mean, std = load_model(ckpt)
    b = Broden(broden_dir)
    base = rss_mb()
    return (model, spec, mean, std), b, base, _instrument(b)


def worker_ours(ckpt, broden_dir, layer, quantile, batch):
    from mmit_fast.interpret import dissect_run as D

    (model, spec, mean, std), b, base, acc = _setup(ckpt, broden_dir)
    t0 = time.perf_counter()
    raw = D.dissect_model(model, spec, mean, std, b, [layer], quantile=quantile, batch_size=batch, mask_cache=None)
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
        mm = write_features(model, spec, mean, std, b, layer, batch, os.path.join(tmp, "feat.mmap"))
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


def run_worker(args) -> None:
    """``--worker reimpl-ours|reimpl-lite``: one measurement, a JSON line on stdout."""
    import torch

    import PIL.JpegImagePlugin  # noqa: F401  (what either method imports lazily, before the clock)
    import PIL.PngImagePlugin  # noqa: F401

    import mmit_fast.models  # noqa: F401

    torch.set_num_threads(args.threads)
    fn = worker_ours if args.worker == "reimpl-ours" else worker_lite
    dt, acc, n, base, iou, concepts = fn(args.checkpoint, args.broden, args.layer, args.quantile, args.batch)
    peak = peak_rss_mb()
    np.save(args.iou_out, iou)
    print(json.dumps({"seconds": dt, "forward_seconds": acc["forward"], "prep_seconds": acc["prep"], "images": n,
                      "rss_after_load_mb": base, "peak_rss_mb": peak, "peak_minus_load_mb": peak - base,
                      "units": int(iou.shape[0]), "concepts": len(concepts)}))


def summarise(rs):
    """Medians (min-max) of one cell's repetitions."""
    def med(xs):
        xs = np.asarray(xs, float)
        return {"median": float(np.median(xs)), "min": float(xs.min()), "max": float(xs.max())}

    return {"images_per_s": med([r["images"] / r["seconds"] for r in rs]),
            "stage_images_per_s": med([r["images"] / max(r["seconds"] - r["forward_seconds"] - r["prep_seconds"], 1e-9)
                                       for r in rs]),
            "forward_seconds": med([r["forward_seconds"] for r in rs]),
            "peak_minus_load_mb": med([r["peak_minus_load_mb"] for r in rs]), "images": rs[0]["images"]}


def markdown(extras, fmt):
    """The extra rows' section (labelled: against our reimplementation, not Lite's code)."""
    lines = ["## Extra rows, not the headline: end to end against our *reimplementation* of Lite's method", "",
             "Kept from this benchmark's first version (`--extras`): forward pass included, and the 'Lite' row is "
             "our reimplementation of its method (`np.percentile` thresholds, its per-image, per-unit loop with PIL "
             "resizes), not Lite's code. Stage = whole run minus forward pass and image preparation (mask decoding "
             "inside the stage for both).", "",
             "| layer | method | images | images/s end to end | images/s stage | peak RSS above model load (MB) |",
             "|---|---|---|---|---|---|"]
    for layer, cells in extras.items():
        for key, s in cells["summary"].items():
            m, n = key.split("@")
            name = "mmit-fast" if m == "reimpl-ours" else "reimplementation of Lite's method (not Lite's code)"
            lines.append(f"| {layer} | {name} | {n} | {fmt(s['images_per_s'])} | {fmt(s['stage_images_per_s'])} | "
                         f"{fmt(s['peak_minus_load_mb'])} |")
    return lines + [""]
