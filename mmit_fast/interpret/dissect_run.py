"""``mmit dissect``: Action Network Dissection of a checkpoint on a Broden-layout concept set.

Pipeline (two passes over the concept images, the maths in :mod:`.dissect`):

1. each image is resized to the model's crop, normalised and, for a video model, repeated
   over the clip's frames (a static clip); a layer's output is read as [B, K, h, w] (3D nets:
   the mean over its time axis; TSM: its frames unfolded, then averaged);
2. pass 1 (the only forward pass; images only): the thresholds' first pass
   (:class:`~.quantile.ExactQuantile`'s histograms) and top images; the activations are spilled
   to a temporary float32 file (exact, read back with plain reads: the process's memory stays
   flat however large the dataset; disk use is ``4 * K * h * w`` bytes per image and layer, a
   quarter of NetDissect-Lite's float64 memmap);
3. the dissection stage on the spilled activations (:mod:`.dissect_stage`): at most two
   refinement passes make each threshold exact (``np.percentile``), then the IoU pass: unit
   masks against the concept masks, bit-packed by :class:`~.maskcache.MaskCache` (decoded once
   per concept set on the run's threads and cached on disk, ``mask_cache``), through
   :meth:`~.dissect.IoUTally.update_packed` (only the output pixels that can reach the threshold
   are evaluated; on CPU by the C++ kernel of ``csrc/dissect.cpp`` with the run's thread count,
   elsewhere by batched torch ops; no Python loop over images or units);
4. labels (argmax, interpretable above ``iou_threshold``) with and without the action
   concepts, unit-to-class links of the layer that feeds the classifier; then the report
   (:mod:`.dissect_report`).

All named layers are dissected in the same passes (default: every ResNet stage, layer1..4,
which gives Fig. 7's block-wise view). Images that cannot be read are skipped and counted (an
image whose masks cannot be read is left out of the IoU; its activations still count in the
thresholds: the summary says so). Memory: units x (4096 + concepts) numbers per layer plus one
batch, whatever the number of images (the list of batches, a few integers per image, aside).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._io import claim_output_dir
from .broden import Broden, BrodenError
from .dissect import TopImages
from .dissect_stage import TRIM_EVERY, exact_thresholds, release_freed_memory, tally_pass
from .dissect_inputs import layer_activations, prep_image, stage_layers, static_clip
from .layers import resolve_layers
from .maskcache import MaskCache, default_cache_dir
from .quantile import ExactQuantile
from .source import load_model

__all__ = ["run_dissect", "dissect_model", "stage_layers", "plan_batches", "layer_activations"]


def plan_batches(broden: Broden, batch_size: int, skipped: Dict[str, str], limit: Optional[int] = None
                 ) -> Iterator[Tuple[List[int], List[np.ndarray], Tuple[int, int]]]:
    """``(ids, images, (sh, sw))`` batches of consecutive rows whose image can be read, one mask
    size per batch; unreadable images go to ``skipped``."""
    n = len(broden) if limit is None else min(limit, len(broden))
    ids: List[int] = []
    imgs: List[np.ndarray] = []
    size = lambda i: (broden.rows[i].sh, broden.rows[i].sw)  # noqa: E731
    for i in range(n):
        try:
            img = broden.image(i)
        except BrodenError as e:
            skipped[broden.rows[i].image] = str(e)
            continue
        if ids and (size(ids[-1]) != size(i) or len(ids) == batch_size):
            yield ids, imgs, size(ids[-1])
            ids, imgs = [], []
        ids.append(i)
        imgs.append(img)
    if ids:
        yield ids, imgs, size(ids[-1])


class _SpillFile:
    """Pass-1 activations of one layer, written to a temporary file (float32, exact) and read
    back batch by batch in pass 2: one forward pass, memory independent of the dataset size
    (plain reads, no memory map: the page cache is not resident memory of the process)."""

    def __init__(self, folder: str, name: str):
        self.path = os.path.join(folder, name.replace(".", "_") + ".f32")
        self.f = open(self.path, "w+b")
        self.shapes: List[Tuple[int, ...]] = []

    def write(self, a: torch.Tensor) -> None:
        arr = a.detach().float().cpu().numpy()
        self.shapes.append(arr.shape)
        self.f.write(np.ascontiguousarray(arr).tobytes())

    def reader(self) -> Iterator[torch.Tensor]:
        self.f.flush()
        self.f.seek(0)
        for shp in self.shapes:
            buf = np.empty(shp, np.float32)
            self.f.readinto(memoryview(buf).cast("B"))
            yield torch.from_numpy(buf)

    def close(self) -> None:
        self.f.close()


@contextlib.contextmanager
def _small_ops(device):
    """Run a block of small, memory-bound tensor ops on one CPU thread (on a busy machine, OpenMP
    hand-offs cost more than these ops; measured 10-100x slower with 2 threads). No-op on GPUs.
    Yields the thread count outside the block (for the C++ IoU kernel, whose work per thread is large)."""
    if torch.device(device).type != "cpu":
        yield torch.get_num_threads()
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield prev
    finally:
        torch.set_num_threads(prev)


def dissect_model(model, spec, mean, std, broden: Broden, layers: Sequence[str], *, quantile: float = 0.005,
                  batch_size: int = 16, top_n: int = 4, limit: Optional[int] = None, progress: bool = False,
                  spill_dir: Optional[str] = None, mask_cache: Optional[str] = "auto") -> Dict[str, Any]:
    """Pass 1 (forward, thresholds' first pass, top images, activations spilled to a temporary file)
    and the dissection stage (exact thresholds, IoU) for ``layers``; returns per layer ``iou`` (an
    :class:`IoUTally`), ``thresholds`` (float64), ``top_images``, plus ``concepts`` (numbers in IoU
    column order), ``skipped``, ``mask_cache`` (what the mask cache did). ``mask_cache``: a folder,
    ``"auto"`` (:func:`~.maskcache.default_cache_dir`) or None (no cache kept)."""
    import tempfile

    mods = resolve_layers(model, layers)
    dev = next(model.parameters()).device
    concepts = sorted(broden.concepts)
    cats = list(broden.categories)
    skipped: Dict[str, str] = {}
    sk: Dict[str, ExactQuantile] = {}
    top: Dict[str, TopImages] = {}
    batches: List[Tuple[List[int], Tuple[int, int]]] = []
    with tempfile.TemporaryDirectory(prefix="mmit-dissect-", dir=spill_dir) as tmp:
        spill = {n: _SpillFile(tmp, n) for n in mods}
        try:
            buf = None
            for ids, imgs, size in plan_batches(broden, batch_size, skipped, limit):
                x = static_clip(np.stack([prep_image(im, spec.crop) for im in imgs]), spec, mean, std, dev, True, buf)
                if buf is None or x.data_ptr() != buf.data_ptr():
                    buf = x                                                # a new buffer: reused from now on
                acts = layer_activations(model, mods, x)
                with _small_ops(dev):
                    _pass1_update(acts, ids, sk, top, spill, top_n, dev)
                del x, acts
                batches.append((ids, size))
                if len(batches) % TRIM_EVERY == 0:
                    release_freed_memory()
                if progress:
                    print(f"[dissect] pass 1: {sum(len(b[0]) for b in batches)} images", flush=True)
            if not batches:
                raise BrodenError(f"{broden.root}: no readable image ({len(skipped)} skipped)")
            read = {n: (lambda f=spill[n]: (a.to(dev) for a in f.reader())) for n in sk}
            with _small_ops(dev) as threads:
                thr = exact_thresholds(sk, read, quantile, threads)
                index = {c: j for j, c in enumerate(concepts)}
                cache = default_cache_dir() if mask_cache == "auto" else mask_cache
                with MaskCache(broden, index, rows=batches[-1][0][-1] + 1, cache_dir=cache, threads=threads) as masks:
                    if progress:
                        print(f"[dissect] concept masks: {masks.status} ({masks.path})", flush=True)
                    tally = tally_pass(read, thr, batches, masks, [cats.index(broden.concepts[c].category)
                                                                   for c in concepts], len(cats), dev, threads, skipped)
                    status = masks.status
        finally:
            for f in spill.values():
                f.close()
    return {"layers": {n: {"iou": tally[n], "thresholds": thr[n], "top_images": top[n].result()} for n in sk},
            "concepts": concepts, "categories": cats, "skipped": skipped, "mask_cache": status,
            "images": sum(len(b[0]) for b in batches)}


def _pass1_update(acts, ids, sk, top, spill, top_n, dev) -> None:
    """Thresholds' first pass, top images and the spill file, for one batch of every layer."""
    for n, a in acts.items():
        if n not in sk:
            sk[n], top[n] = ExactQuantile(a.shape[1], dev), TopImages(a.shape[1], top_n, dev)
        try:
            sk[n].update_maps(a)
        except ValueError as e:
            raise ValueError(f"layer {n}, images {ids[0]}..{ids[-1]}: {e}") from None
        top[n].update(a.amax(dim=(2, 3)), torch.tensor(ids, device=dev))
        spill[n].write(a)


def run_dissect(checkpoint: str, concepts_dir: str, out_dir: str, *, layers: Optional[Sequence[str]] = None,
                quantile: float = 0.005, iou_threshold: float = 0.04, device: str = "auto", batch_size: int = 16,
                union: str = "category", limit: Optional[int] = None, categories: Optional[Sequence[str]] = None,
                progress: bool = False, mask_cache: Optional[str] = "auto") -> Dict[str, Any]:
    """Dissect ``checkpoint`` on the Broden-layout folder ``concepts_dir``; write the per-unit CSVs,
    figures, ``summary.json`` and ``report.html`` to ``out_dir`` (new, empty or an earlier
    dissection's: :func:`~mmit_fast._io.claim_output_dir`); return the summary. ``mask_cache``:
    where the packed concept masks are cached (see :func:`dissect_model`)."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    claim_output_dir(out_dir, "dissect")
    model, spec, mean, std = load_model(checkpoint, device)
    if getattr(model, "modality", "video") == "audio":
        raise ValueError(f"{checkpoint}: an audio model (SoundNet) has no spatial units to dissect on images")
    broden = Broden(concepts_dir, categories)
    layers = list(layers) if layers else stage_layers(model)
    resolve_layers(model, layers)   # unknown names fail before any work
    raw = dissect_model(model, spec, mean, std, broden, layers, quantile=quantile, batch_size=batch_size,
                        limit=limit, progress=progress, mask_cache=mask_cache)
    from .dissect_report import summarise, write_report

    summary = summarise(model, broden, raw, iou_threshold=iou_threshold, union=union, quantile=quantile)
    summary["checkpoint"] = os.path.abspath(checkpoint)
    summary["concepts_dir"] = os.path.abspath(concepts_dir)
    return write_report(out_dir, model, spec, mean, std, broden, raw, summary)
