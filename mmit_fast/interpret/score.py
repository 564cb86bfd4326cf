"""Class maps of a checkpoint scored against the true action regions of synthetic clips.

For every clip of a Multi-Moving-Shapes source with ground truth and every actor ``a`` with a
class ``c`` (the true visual classes: detection is taken as given, only localisation is scored),
the map of ``c`` by each method is scored with :mod:`.pointing` (pointing game with the scaled
15 px tolerance, IoU over thresholds, and on clips with actors of several classes the
discriminative pointing game). Methods, all maps [T, H, W] per frame at input resolution:

* ``CAM``: the single-class map ``CAM_c``, trilinear to the input, min-max normalised;
* ``mCAM``: the class's separated map where the class owns the pixel, else 0 (:func:`.cam.mcam`
  on the true classes of the clip);
* ``Grad-CAM layer4`` / ``Grad-CAM layer3``: :class:`.gradcam.GradCAM`, upsampled and normalised
  like CAM;
* ``peer`` (optional, ``peer=callable``): a map from another implementation, e.g.
  pytorch-grad-cam's Grad-CAM (``benchmarks/_gradcam_peer.py``), already at input resolution;
* ``random map``: uniform noise on the model's ``T' x h x w`` grid, upsampled like CAM (seeded);
* ``centre prior``: a fixed Gaussian in the middle of the frame (it points at the centre);
* ``ceiling``: the true box's coverage of each ``h x w`` cell, per frame, upsampled like CAM:
  the best any map at the model's spatial resolution can do.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import pointing as P
from .cam import features_and_logits, mcam, normalise_maps, upsample_maps
from .gradcam import GradCAM
from .source import iter_clips, load_model, to_input

__all__ = ["METHODS", "score_checkpoint", "score_clip", "centre_prior"]

METHODS = ("CAM", "mCAM", "Grad-CAM layer4", "Grad-CAM layer3", "random map", "centre prior", "ceiling")


def centre_prior(T: int, H: int, W: int) -> np.ndarray:
    """A Gaussian (sigma = a quarter of the side) centred in the frame, [T, H, W] in (0, 1]."""
    yy, xx = np.mgrid[0:H, 0:W]
    g = np.exp(-(((yy - (H - 1) / 2) / (H / 4)) ** 2 + ((xx - (W - 1) / 2) / (W / 4)) ** 2) / 2)
    return np.broadcast_to(g / g.max(), (T, H, W))


def _grid_maps(model, x: torch.Tensor, ids: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator):
    """Random and ceiling maps [n, T, H, W] built on the model's feature grid."""
    with torch.no_grad():
        feats, _ = features_and_logits(model, x)
    grid = tuple(feats.shape[2:])                          # (T', h, w)
    T, H, W = x.shape[2:]
    n = ids.shape[1]
    noise = torch.from_numpy(rng.random((1, n) + grid).astype(np.float32))
    rand = normalise_maps(upsample_maps(noise, (T, H, W), True))[0].numpy()
    cover = torch.from_numpy(P.box_coverage_grid(boxes, (H, W), grid[-2:]).astype(np.float32))   # [n, T, h, w]
    ceil = F.interpolate(cover, size=(H, W), mode="bilinear", align_corners=False).numpy()
    return rand, ceil, grid


def score_clip(model, x: torch.Tensor, ids: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator,
               peer: Optional[Callable] = None):
    """``(maps, grid)``: all methods' maps [n, T, H, W] for one clip ``x`` [1, 3, T, H, W], classes
    ``ids`` [1, n] and the actors' boxes [n, T, 4] (for the ceiling); ``grid`` the model's (T', h, w)."""
    size = tuple(x.shape[2:])
    res = mcam(model, x, class_ids=ids)
    own = (res.owner[0][None] == torch.arange(ids.shape[1], device=x.device).view(-1, 1, 1, 1))
    out = {"CAM": res.cams[0], "mCAM": res.separated[0] * own}
    pre = "video." if getattr(model, "modality", "video") == "audio-video" else ""
    for layer in ("layer4", "layer3"):
        with GradCAM(model, pre + layer) as gc:
            g = gc(x, ids)
        out[f"Grad-CAM {layer}"] = normalise_maps(upsample_maps(g, size, True))[0]
    maps = {k: v.detach().float().cpu().numpy() for k, v in out.items()}
    if peer is not None:
        maps["peer"] = np.asarray(peer(model, x, ids), dtype=np.float32)
    maps["random map"], maps["ceiling"], grid = _grid_maps(model, x, ids, boxes, rng)
    maps["centre prior"] = np.stack([centre_prior(*size)] * ids.shape[1])
    return maps, [int(v) for v in grid]


def _actors(gt, names: List[str], where: str):
    actors = [a for a in range(len(gt["actor_action"])) if gt["actor_action"][a] >= 0]
    true = [str(gt["classes"][gt["actor_action"][a]]) for a in actors]
    missing = [t for t in true if t not in names]
    if missing:
        raise ValueError(f"{where}: true class {missing[0]!r} is not in the checkpoint's vocabulary "
                         "(score a model trained on this synthetic dataset)")
    return actors, [names.index(t) for t in true]


def score_checkpoint(checkpoint: str, sources: Sequence[str] | str, *, limit: Optional[int] = None,
                     device: str = "auto", seed: int = 0, peer: Optional[Callable] = None,
                     keep: Optional[Callable[[str, Dict[str, np.ndarray], Any], None]] = None) -> Dict[str, Any]:
    """Scores per method on the synthetic clips of ``sources`` (``FOLDER:SPLIT`` ...), at most
    ``limit`` clips each. ``keep(key, maps, item)`` sees every clip's maps (e.g. for figures).
    Returns ``{"methods": {m: {...}}, "per_class", "clips", "pairs", "multi_pairs", "grid",
    "tolerance", "thresholds"}``."""
    model, spec, mean, std = load_model(checkpoint, device)
    names = list(model.class_names)
    dev = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    acc: Dict[str, Dict[str, List]] = defaultdict(lambda: defaultdict(list))
    clips = pairs = multi_pairs = 0
    grid, tol = None, None
    for src in ([sources] if isinstance(sources, str) else list(sources)):
        for item in iter_clips(src, spec, names, limit=limit):
            if item.gt is None:
                raise ValueError(f"{src}:{item.key}: no ground truth (.gt.npz): scoring needs the synthetic dataset")
            actors, cls = _actors(item.gt, names, f"{src}:{item.key}")
            if not actors:
                continue
            boxes, vis = item.gt["boxes"][actors], item.gt["visible"][actors]
            x = to_input(item.frames, mean, std, dev)
            maps, grid = score_clip(model, x, torch.tensor([cls], device=dev), boxes, rng, peer)
            tol = P.tolerance(x.shape[-1])
            multi = len(set(cls)) >= 2
            clips, pairs, multi_pairs = clips + 1, pairs + len(actors), multi_pairs + (len(actors) if multi else 0)
            for meth, m in maps.items():
                for j, c in enumerate(cls):
                    s = P.pair_scores(m[j], j, boxes, vis, item.gt["box_masks"][actors], tol, multi)
                    acc[meth]["class"].append(names[c])
                    for k, v in s.items():
                        acc[meth][k].append(v)
            if keep is not None:
                keep(item.key, maps, item)
    if not pairs:
        raise ValueError(f"{sources}: no clip with a visible action to score")
    return {**summarise(acc), "clips": clips, "pairs": pairs, "multi_pairs": multi_pairs, "grid": grid,
            "tolerance": tol, "thresholds": P.THRESHOLDS.tolist()}


def _mean(v: Iterable[float]) -> float:
    a = np.asarray([x for x in v if x == x], dtype=np.float64)
    return float(a.mean()) if a.size else float("nan")


def summarise(acc: Dict[str, Dict[str, List]]) -> Dict[str, Any]:
    """Means over (clip, class) pairs per method: pointing, the IoU curve, its area and best
    point, the discriminative game (hit / other actor / pairs scored); and pointing per class."""
    methods, per_class = {}, {}
    for meth, d in acc.items():
        curve = np.nanmean(np.stack(d["iou"]), axis=0) if d["iou"] else np.full(len(P.THRESHOLDS), np.nan)
        disc = [r for r in d.get("discriminative", []) if r["frames"]]
        methods[meth] = {"pointing": _mean(d["pointing"]), "iou_curve": curve.tolist(),
                         "iou_area": float(np.nanmean(curve)), "iou_best": float(np.nanmax(curve)),
                         "iou_best_at": float(P.THRESHOLDS[int(np.nanargmax(curve))]),
                         "discriminative": _mean(r["hit"] for r in disc),
                         "other_actor": _mean(r["other"] for r in disc), "discriminative_pairs": len(disc)}
        by: Dict[str, List[float]] = defaultdict(list)
        for c, v in zip(d["class"], d["pointing"]):
            by[c].append(v)
        per_class[meth] = {c: {"pointing": _mean(v), "n": len(v)} for c, v in sorted(by.items())}
    return {"methods": methods, "per_class": per_class}
