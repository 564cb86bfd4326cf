"""Scoring class maps against the true action regions of the synthetic dataset.

For one clip, class ``c`` performed by actor ``a``: the true region at frame ``t`` is the
actor's box (its *action region*, ``box_masks[a, t]``), over the frames where the actor is
visible. A class map ``M`` [T, H, W] (in [0, 1]) is scored by:

* pointing game: per visible frame, a hit when the map's maximum (first arg-max) lies inside
  the true region; the clip-class score is the fraction of hits (0 for an all-zero map);
* IoU: ``|{M >= 0.5} and R| / |{M >= 0.5} or R|`` pooled over the visible frames.

Methods compared on the same clips and classes (the true visual classes: detection is taken
as given, so only localisation is scored): single-class CAM (normalised), mCAM (the class's
separated map where it owns the pixel, else 0), Grad-CAM at ``layer4`` and ``layer3``, and a
centre prior (a fixed Gaussian in the middle of the frame) as the floor to beat.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .cam import mcam, normalise_maps, upsample_maps
from .gradcam import GradCAM
from .source import iter_clips, load_model, to_input

__all__ = ["pointing_game", "region_iou", "score_maps", "score_checkpoint", "METHODS"]

METHODS = ("CAM", "mCAM", "Grad-CAM layer4", "Grad-CAM layer3", "centre prior")


def pointing_game(m: np.ndarray, region: np.ndarray, frames: np.ndarray) -> float:
    """Fraction of ``frames`` (bool [T]) where ``argmax m[t]`` is inside ``region[t]``."""
    ts = np.nonzero(frames)[0]
    if ts.size == 0:
        return float("nan")
    hits = 0
    for t in ts:
        if m[t].max() <= 0:
            continue
        y, x = np.unravel_index(int(np.argmax(m[t])), m[t].shape)
        hits += bool(region[t, y, x])
    return hits / ts.size


def region_iou(m: np.ndarray, region: np.ndarray, frames: np.ndarray, cut: float = 0.5) -> float:
    ts = np.nonzero(frames)[0]
    if ts.size == 0:
        return float("nan")
    pred = m[ts] >= cut
    true = region[ts]
    union = np.logical_or(pred, true).sum()
    return float(np.logical_and(pred, true).sum() / union) if union else float("nan")


def score_maps(maps: np.ndarray, regions: np.ndarray, frames: np.ndarray) -> Dict[str, np.ndarray]:
    """``maps`` [n, T, H, W], ``regions`` [n, T, H, W] bool, ``frames`` [n, T] bool ->
    ``{"pointing": [n], "iou": [n]}``."""
    return {"pointing": np.array([pointing_game(maps[j], regions[j], frames[j]) for j in range(len(maps))]),
            "iou": np.array([region_iou(maps[j], regions[j], frames[j]) for j in range(len(maps))])}


def _centre_prior(T: int, H: int, W: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    g = np.exp(-(((yy - (H - 1) / 2) / (H / 4)) ** 2 + ((xx - (W - 1) / 2) / (W / 4)) ** 2) / 2)
    return np.broadcast_to(g / g.max(), (T, H, W))


def _maps_for(model, x: torch.Tensor, ids: torch.Tensor) -> Dict[str, np.ndarray]:
    """All methods' maps [n, T, H, W] for one clip ``x`` [1, 3, T, H, W] and classes ``ids`` [1, n]."""
    size = tuple(x.shape[2:])
    res = mcam(model, x, class_ids=ids)
    own = (res.owner[0][None] == torch.arange(ids.shape[1], device=x.device).view(-1, 1, 1, 1))
    out = {"CAM": res.cams[0], "mCAM": res.separated[0] * own}
    for layer in ("layer4", "layer3"):
        name = ("video." if getattr(model, "modality", "video") == "audio-video" else "") + layer
        with GradCAM(model, name) as gc:
            g = gc(x, ids)
        out[f"Grad-CAM {layer}"] = normalise_maps(upsample_maps(g, size, True))[0]
    maps = {k: v.detach().float().cpu().numpy() for k, v in out.items()}
    maps["centre prior"] = np.stack([_centre_prior(*size)] * ids.shape[1])
    return maps


def score_checkpoint(checkpoint: str, source: str, *, limit: Optional[int] = None, device: str = "auto"
                     ) -> Dict[str, Any]:
    """Pointing game and IoU per method and class on the synthetic clips of ``source``.
    Returns ``{"methods": {m: {"pointing", "iou"}}, "per_class": {m: {class: {...}}}, "pairs", "clips"}``."""
    model, spec, mean, std = load_model(checkpoint, device)
    names = list(model.class_names)
    dev = next(model.parameters()).device
    acc: Dict[str, Dict[str, Dict[str, List[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    clips = pairs = 0
    for item in iter_clips(source, spec, names, limit=limit):
        gt = item.gt
        if gt is None:
            raise ValueError(f"{source}:{item.key}: no ground truth (.gt.npz): scoring needs the synthetic dataset")
        actors = [a for a in range(len(gt["actor_action"])) if gt["actor_action"][a] >= 0]
        true = [str(gt["classes"][gt["actor_action"][a]]) for a in actors]
        if any(t not in names for t in true):
            raise ValueError(f"{source}:{item.key}: true class {next(t for t in true if t not in names)!r} is not "
                             "in the checkpoint's vocabulary (score a model trained on this synthetic dataset)")
        cls = [names.index(t) for t in true]
        if not actors:
            continue
        clips += 1
        pairs += len(actors)
        x = to_input(item.frames, mean, std, dev)
        maps = _maps_for(model, x, torch.tensor([cls], device=dev))
        regions, frames = gt["box_masks"][actors], gt["visible"][actors]
        for meth, m in maps.items():
            s = score_maps(m, regions, frames)
            for j, c in enumerate(cls):
                for k in ("pointing", "iou"):
                    acc[meth][names[c]][k].append(float(s[k][j]))
    if not pairs:
        raise ValueError(f"{source}: no clip with a visible action to score")
    return _summarise(acc, clips, pairs)


def _summarise(acc, clips: int, pairs: int) -> Dict[str, Any]:
    methods, per_class = {}, {}
    for meth in METHODS:
        d = acc.get(meth, {})
        allv = {k: [v for c in d.values() for v in c[k] if v == v] for k in ("pointing", "iou")}
        methods[meth] = {k: float(np.mean(v)) if v else float("nan") for k, v in allv.items()}
        per_class[meth] = {c: {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                               for k, v in kv.items()} | {"n": len(kv["iou"])} for c, kv in sorted(d.items())}
    return {"methods": methods, "per_class": per_class, "clips": clips, "pairs": pairs}
