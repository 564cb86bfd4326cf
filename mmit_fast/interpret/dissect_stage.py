"""The dissection stage: from a layer's activations to exact thresholds and IoU sums.

What NetDissect-Lite calls ``quantile_threshold`` + ``tally``, on activations that are already
computed (``mmit dissect`` spills them during its forward pass; a benchmark or a user may read
them from a memmap). The activations of a layer are read through ``read[layer]()``: a fresh
iterator over float32 [B, K, h, w] batches, in the order of ``batches`` (``(row ids, mask size)``
pairs), each time it is called. Passes over them:

1. (:func:`count_pass`, unless the caller counted during its forward pass) each unit's values
   into :class:`~.quantile.ExactQuantile`'s 4096-bin histogram;
2. (:func:`exact_thresholds`) at most two refinement passes: ``T_k`` exact, numpy's
   ``percentile(a_k, 100 (1 - q))``;
3. (:func:`tally_pass`) the IoU sums: each batch's concept masks, bit-packed and read once from
   :class:`~.maskcache.MaskCache` for all layers, against the batch's activations
   (:meth:`~.dissect.IoUTally.update_packed`: the C++ kernel on CPU).

Memory: per layer ``K x 4096`` counts, ``K x C`` sums, one batch; whatever the number of images.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .broden import Broden
from .dissect import IoUTally
from .maskcache import MaskCache
from .quantile import ExactQuantile

__all__ = ["count_pass", "exact_thresholds", "tally_pass", "dissect_features", "release_freed_memory"]

Batches = Sequence[Tuple[List[int], Tuple[int, int]]]
Reader = Callable[[], Iterator[torch.Tensor]]
TRIM_EVERY = 16   # batches between two heap trims (a trim costs ~5-20 ms; keeps the resident size flat)


def release_freed_memory() -> None:
    """Give freed heap pages back to the system (glibc ``malloc_trim``): the many short-lived
    buffers of different sizes otherwise fragment the heap and the resident size creeps up with
    the number of batches."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def count_pass(read: Dict[str, Reader], device=None, threads: Optional[int] = None) -> Dict[str, ExactQuantile]:
    """Pass 1 of the thresholds over every layer's activations."""
    out = {}
    for name, r in read.items():
        for a in r():
            if name not in out:
                out[name] = ExactQuantile(a.shape[1], device or a.device)
            try:
                out[name].update_maps(a, threads=threads)
            except ValueError as e:
                raise ValueError(f"layer {name}: {e}") from None
    return out


def exact_thresholds(quant: Dict[str, ExactQuantile], read: Dict[str, Reader], quantile: float,
                     threads: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """The refinement passes (each layer re-reads only its own activations); float64 [K] per layer."""
    return {n: q.run(quantile, read[n], threads=threads) for n, q in quant.items()}


def tally_pass(read: Dict[str, Reader], thresholds: Dict[str, torch.Tensor], batches: Batches, masks: MaskCache,
               concept_cat: Sequence[int], n_categories: int, device=None, threads: Optional[int] = None,
               skipped: Optional[Dict[str, str]] = None) -> Dict[str, IoUTally]:
    """IoU sums of every layer; a row whose masks cannot be read is left out and named in ``skipped``."""
    readers = {n: r() for n, r in read.items()}
    tally = {n: IoUTally(int(t.numel()), concept_cat, n_categories, device) for n, t in thresholds.items()}
    for j, (ids, size) in enumerate(batches):
        pm = masks.batch(ids)
        for i, msg in pm.bad:
            if skipped is not None:
                skipped[masks.broden.rows[i].image] = (f"{msg} (image left out of the IoU; its activations count in "
                                                       "the thresholds)")
        keep = torch.tensor([i in set(pm.rows) for i in ids])
        for n in tally:
            a = next(readers[n])
            if a.shape[0] != len(ids):
                raise ValueError(f"layer {n}: batch {j} has {a.shape[0]} maps for {len(ids)} images")
            if pm.rows:
                a = a if bool(keep.all()) else a[keep.to(a.device)]
                tally[n].update_packed(a, size, thresholds[n], pm.bits, pm.word, pm.offsets, pm.concept, pm.area,
                                       pm.annotated, threads=threads)
        if (j + 1) % TRIM_EVERY == 0:
            release_freed_memory()
    return tally


def dissect_features(read: Dict[str, Reader], broden: Broden, batches: Batches, *, quantile: float = 0.005,
                     mask_cache: Optional[str] = None, threads: Optional[int] = None, device=None,
                     skipped: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """The whole stage on activations read through ``read`` (module docstring): ``{"layers": {name:
    {"iou": IoUTally, "thresholds": float64 [K]}}, "concepts", "categories", "mask_cache": status}``.
    ``mask_cache``: a folder for the packed-mask cache (None: packed into a temporary file)."""
    concepts = sorted(broden.concepts)
    cats = list(broden.categories)
    index = {c: j for j, c in enumerate(concepts)}
    rows = max((max(ids) for ids, _ in batches if ids), default=-1) + 1
    quant = count_pass(read, device, threads)
    thr = exact_thresholds(quant, read, quantile, threads)
    with MaskCache(broden, index, rows=rows, cache_dir=mask_cache, threads=threads) as masks:
        tally = tally_pass(read, thr, batches, masks, [cats.index(broden.concepts[c].category) for c in concepts],
                           len(cats), device, threads, skipped)
        status = masks.status
    return {"layers": {n: {"iou": tally[n], "thresholds": thr[n]} for n in tally}, "concepts": concepts,
            "categories": cats, "mask_cache": status}
