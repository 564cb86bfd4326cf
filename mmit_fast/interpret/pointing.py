"""Localisation scores of class maps against true action regions: arrays in, numbers out.

A class map ``M`` [T, H, W] is at input resolution (upsampled from the model's ``h x w`` grid);
the true action region of actor ``a`` at frame ``t`` is its box ``B_a,t = [x0, x1] x [y0, y1]``
in pixel coordinates (pixel ``(y, x)`` covers ``[x, x + 1) x [y, y + 1)``).

* **Point of a map** (one frame): the centre of the *maximal plateau*. ``P = {M >= max - eps}``
  with ``eps = 1e-6 (max - min)``; its 8-connected components; the largest (ties: the first in
  raster order); the point is the mean of its pixel centres ``(y + 0.5, x + 0.5)``. A constant
  map (``max == min``, e.g. all zero) points nowhere. This is where an upsampled map peaks:
  bilinear upsampling clamps at the border, so a peak cell on the edge is a flat plateau that
  reaches the edge, and its first arg-max pixel (row 0 or column 0) is not where the cell is.
* **Distance** of a point ``p`` to a box: ``d = |(max(x0 - px, 0, px - x1), max(y0 - py, 0, py - y1))|``
  (0 inside).
* **Pointing game** (Zhang et al. 2016, "Top-down neural attention by excitation backprop"): a
  frame is a hit when ``d(p, B_a,t) <= tol``; their tolerance is 15 px at 224 px, so
  ``tol = 15 * side / 224`` (7.5 px at 112). Per (clip, class): hits / frames where the actor is
  visible; a map that points nowhere misses.
* **Discriminative pointing game** (the point of mCAM: one class's map on the right actor, not on
  every actor): on clips with two or more actors of different classes, per (clip, class of actor
  ``a``) over frames where ``a`` and at least one other actor are visible: a **hit** when
  ``d_a <= tol`` and ``d_a < d_o`` for every other visible actor ``o``; **other actor** when some
  ``d_o <= tol`` with ``d_o < d_a``; otherwise background (or a tie).
* **IoU over thresholds**: for ``c`` in ``THRESHOLDS`` (0.05, 0.10, ..., 0.95) on the map
  normalised to [0, 1], ``IoU(c) = |{M >= c} & R| / |{M >= c} | R|`` pooled over the visible
  frames (``R`` the box masks); the curve and its mean over thresholds (the area under it).
* **Ceiling**: a perfect map at the model's resolution: per frame the share of each of the
  ``h x w`` cells covered by the true box (the box area-pooled to the grid), upsampled as the
  class maps are. The pointing game cannot be won more often than this map wins it.
* **Random map**: uniform noise on the model's grid, upsampled the same way (the chance floor).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["THRESHOLDS", "tolerance", "peak_point", "box_distance", "pointing_hits", "discriminative",
           "iou_curve", "box_coverage_grid", "pair_scores"]

THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)


def tolerance(side: int) -> float:
    """The pointing game's tolerance at frame side ``side``: 15 px at 224 px, scaled."""
    return 15.0 * side / 224.0


def peak_point(m: np.ndarray) -> Optional[Tuple[float, float]]:
    """``(y, x)`` centre of the largest maximal plateau of a 2D map; None for a constant map."""
    from scipy import ndimage

    m = np.asarray(m, dtype=np.float64)
    hi, lo = float(m.max()), float(m.min())
    if not hi > lo:
        return None
    plateau = m >= hi - 1e-6 * (hi - lo)
    lab, n = ndimage.label(plateau, structure=np.ones((3, 3), bool))
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        plateau = lab == (int(np.argmax(sizes)) + 1)
    ys, xs = np.nonzero(plateau)
    return float(ys.mean() + 0.5), float(xs.mean() + 0.5)


def box_distance(point: Tuple[float, float], box: Sequence[float]) -> float:
    """Euclidean distance from ``(y, x)`` to the box ``(x0, y0, x1, y1)`` (0 inside)."""
    y, x = point
    x0, y0, x1, y1 = (float(v) for v in box)
    dx = max(x0 - x, 0.0, x - x1)
    dy = max(y0 - y, 0.0, y - y1)
    return float(np.hypot(dx, dy))


def _points(m: np.ndarray, ts: np.ndarray):
    return {int(t): peak_point(m[t]) for t in ts}


def pointing_hits(m: np.ndarray, boxes: np.ndarray, frames: np.ndarray, tol: float) -> float:
    """Pointing game of one (clip, class): ``m`` [T, H, W], the actor's ``boxes`` [T, 4],
    ``frames`` bool [T] (visible) -> hits / visible frames (NaN when none is visible)."""
    ts = np.nonzero(frames)[0]
    if ts.size == 0:
        return float("nan")
    pts = _points(m, ts)
    hits = sum(1 for t in ts if pts[int(t)] is not None and box_distance(pts[int(t)], boxes[t]) <= tol)
    return hits / ts.size


def discriminative(m: np.ndarray, boxes: np.ndarray, visible: np.ndarray, actor: int, tol: float
                   ) -> Dict[str, float]:
    """Discriminative pointing game of the map ``m`` [T, H, W] of actor ``actor``'s class, with
    all actors' ``boxes`` [A, T, 4] and ``visible`` [A, T] -> ``{"hit", "other", "frames"}``
    (shares of the frames where ``actor`` and another actor are visible; NaN when none)."""
    others = [o for o in range(boxes.shape[0]) if o != actor]
    ok = visible[actor] & (visible[others].any(0) if others else np.zeros_like(visible[actor]))
    ts = np.nonzero(ok)[0]
    if ts.size == 0:
        return {"hit": float("nan"), "other": float("nan"), "frames": 0}
    hit = other = 0
    for t in ts:
        p = peak_point(m[t])
        if p is None:
            continue
        da = box_distance(p, boxes[actor, t])
        do = min(box_distance(p, boxes[o, t]) for o in others if visible[o, t])
        hit += da <= tol and da < do
        other += do <= tol and do < da
    return {"hit": hit / ts.size, "other": other / ts.size, "frames": int(ts.size)}


def iou_curve(m: np.ndarray, region: np.ndarray, frames: np.ndarray,
              thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """IoU of ``{m >= c}`` with ``region`` [T, H, W] pooled over visible ``frames``, per threshold."""
    ts = np.nonzero(frames)[0]
    if ts.size == 0:
        return np.full(len(thresholds), np.nan)
    mm, rr = m[ts], region[ts]
    out = np.empty(len(thresholds))
    for i, c in enumerate(thresholds):
        pred = mm >= c
        union = np.logical_or(pred, rr).sum()
        out[i] = np.logical_and(pred, rr).sum() / union if union else np.nan
    return out


def box_coverage_grid(boxes: np.ndarray, size: Tuple[int, int], grid: Tuple[int, int]) -> np.ndarray:
    """Share of each cell of an ``h x w`` grid over a frame of ``size`` (H, W) covered by each
    box: ``boxes`` [..., 4] -> [..., h, w] in [0, 1] (a perfect map at the grid's resolution)."""
    H, W = size
    h, w = grid
    ey = np.linspace(0.0, H, h + 1)
    ex = np.linspace(0.0, W, w + 1)
    b = np.asarray(boxes, dtype=np.float64)
    oy = np.clip(np.minimum(b[..., 3, None], ey[None, 1:]) - np.maximum(b[..., 1, None], ey[None, :-1]), 0, None)
    ox = np.clip(np.minimum(b[..., 2, None], ex[None, 1:]) - np.maximum(b[..., 0, None], ex[None, :-1]), 0, None)
    return (oy[..., :, None] * ox[..., None, :]) / ((H / h) * (W / w))


def pair_scores(m: np.ndarray, actor: int, boxes: np.ndarray, visible: np.ndarray, regions: np.ndarray,
                tol: float, multi: bool) -> Dict[str, object]:
    """Every score of one (clip, class of ``actor``) map: pointing, IoU curve and, on a clip with
    actors of several classes (``multi``), the discriminative game."""
    out: Dict[str, object] = {"pointing": pointing_hits(m, boxes[actor], visible[actor], tol),
                              "iou": iou_curve(m, regions[actor], visible[actor])}
    if multi:
        out["discriminative"] = discriminative(m, boxes, visible, actor, tol)
    return out
