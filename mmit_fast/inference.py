"""Prediction over a loader and gathering over ranks: used by training (the epoch-end
evaluation) and by ``mmit eval`` alike.

``predict`` runs the model in eval mode over one rank's part of a split: the score of a video
is the mean of its ``views`` clips' logits, ``s(video) = 1/V sum_v f(clip_v)``. Scores stay on
the device until the loader is exhausted (one device-to-host copy per split, not per batch).
``gather_predictions`` concatenates every rank's ``(keys, scores, targets)``, drops the repeats
the distributed loader adds to pad the last batches (same key) and sorts by key, so the result
does not depend on the number of processes: N ranks give exactly what one process gives.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = ["autocast_context", "model_modality", "forward", "predict", "gather_predictions", "evaluate_model"]


def autocast_context(amp: str, device: torch.device):
    """(context manager, mode): ``auto`` is bf16 autocast on CUDA and off elsewhere."""
    mode = amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    if mode == "off":
        return nullcontext(), None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), mode


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP and ``torch.compile`` wrappers."""
    m = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    m = getattr(m, "_orig_mod", m)
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def model_modality(model: nn.Module) -> str:
    return getattr(unwrap(model), "modality", "video")


def forward(model: nn.Module, batch, modality: str) -> torch.Tensor:
    """Logits of a loader batch: video, audio, or both (fusion, with ``has_audio``)."""
    if modality == "audio":
        if batch.audio is None:
            raise ValueError("the audio model got a batch without audio (loader with_audio=False?)")
        return model(batch.audio)
    if modality == "audio-video":
        has_audio = batch.has_audio
        if has_audio is not None and batch.video.shape[0] != has_audio.shape[0]:   # views: B*V video rows
            has_audio = has_audio.repeat_interleave(batch.video.shape[0] // has_audio.shape[0])
        return model(batch.video, batch.audio, has_audio)
    return model(batch.video)


def _world() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, amp: str = "auto", views: int = 1,
            progress: bool = False, desc: str = "eval") -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Scores (logits averaged over ``views``), targets and keys of this rank's videos."""
    from tqdm.auto import tqdm

    modality = model_modality(model)
    was_training = model.training
    model.eval()
    ctx, _ = autocast_context(amp, device)
    keys: List[str] = []
    scores: List[torch.Tensor] = []
    targets: List[torch.Tensor] = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        with ctx:
            logits = forward(model, batch, modality)
        b = batch.targets.shape[0]
        if logits.shape[0] != b:
            if logits.shape[0] != b * views:
                raise RuntimeError(f"model gave {logits.shape[0]} score rows for {b} videos x {views} views")
            logits = logits.float().view(b, views, -1).mean(1)
        keys.extend(batch.keys)
        scores.append(logits.float())
        targets.append(batch.targets)
    model.train(was_training)
    c = getattr(loader, "num_classes", None) or 0
    s = torch.cat(scores).cpu().numpy() if scores else np.zeros((0, c), np.float32)
    t = torch.cat(targets).float().cpu().numpy() if targets else np.zeros((0, c), np.float32)
    return keys, s, t


def gather_predictions(keys: List[str], scores: np.ndarray, targets: np.ndarray) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Every rank's predictions on every rank, the first of each key kept, sorted by key."""
    parts: List[Any] = [(keys, scores, targets)]
    if _world()[1] > 1:
        import torch.distributed as dist

        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (keys, scores, targets))
    first: Dict[str, Tuple[int, int]] = {}
    for r, (k, _, _) in enumerate(parts):
        for i, key in enumerate(k):
            first.setdefault(key, (r, i))
    order = sorted(first)
    if not order:
        c = parts[0][1].shape[1] if parts and parts[0][1].ndim == 2 else 0
        return [], np.zeros((0, c), np.float32), np.zeros((0, c), np.float32)
    s = np.stack([parts[first[k][0]][1][first[k][1]] for k in order])
    t = np.stack([parts[first[k][0]][2][first[k][1]] for k in order])
    return order, s, t


def evaluate_model(model: nn.Module, loader, device: torch.device, amp: str = "auto", views: int = 1,
                   progress: bool = False, desc: str = "eval", **eval_kw) -> Optional[Dict[str, Any]]:
    """Predict on every rank, gather, and compute :func:`mmit_fast.metrics.evaluate` on rank 0
    (``keys``, ``scores``, ``targets`` added to the result); None on the other ranks. A model
    with non-finite scores gets NaN metrics and a warning instead of an exception."""
    from .metrics import evaluate

    k, s, t = gather_predictions(*predict(model, loader, device, amp=amp, views=views, progress=progress, desc=desc))
    if _world()[0] != 0:
        return None
    if not np.isfinite(s).all():
        print(f"[mmit] warning: {int((~np.isfinite(s)).any(1).sum())} of {len(s)} videos have non-finite scores; "
              "metrics are NaN", file=sys.stderr)
        m = evaluate(np.zeros_like(s), t, **eval_kw)
        for name in ("top1", "top5", "micro_map", "macro_map", "pooled_ap"):
            m[name] = float("nan")
        m["per_class_ap"] = np.full_like(np.asarray(m["per_class_ap"], dtype=np.float64), np.nan)
    else:
        m = evaluate(s, t, **eval_kw)
    m["keys"], m["scores"], m["targets"] = k, s, t
    return m
