"""Where the actors of a Multi-Moving-Shapes video stand: the synthetic dataset's layouts.

Two layouts (``SynthConfig.layout``, ``mmit synth --layout``; recorded in the manifest with
the rest of the generator settings):

* ``centre`` (the default, the demo's data): actor centres drawn from U(0.3, 0.7) of the
  frame side on both axes, kept apart by rejection sampling (the candidate farthest from the
  actors already placed, stopping early at 0.3 of the side). Motions are as designed
  (``falling`` drops from 0.12 to 0.88 of the frame whatever the centre), so actors may leave
  the frame in part. A centre prior does well on this layout by construction.
* ``anywhere`` (localisation benchmarks): every actor's *whole trajectory* stays inside the
  frame, and the trajectories of the actors of one clip are disjoint when that is possible, so
  several actors of a clip stand in different regions and each is fully visible in every frame.
  Motion amplitudes are ``ANYWHERE_MOTION`` (0.6) of the centre layout's, ``falling`` drops
  over 0.45 of the side starting above the actor's centre, and actors are ``ANYWHERE_SCALE``
  (0.10) of the side in radius (0.13 in ``centre``). Placement, per actor in turn:

  1. the trajectory extent ``E = [ex0, ex1] x [ey0, ey1]`` relative to the centre: over every
     frame ``t``, the motion offset ``(x_t - cx, y_t - cy)`` plus/minus the shape's bounding
     half-side ``r * max(sx_t, sy_t) * 1.05 + 1`` (what the renderer draws into);
  2. ``cx ~ U(-ex0, S - ex1)``, ``cy ~ U(-ey0, S - ey1)`` (the whole extent inside the frame;
     an extent wider than the frame is centred);
  3. up to ``tries`` draws; the first whose extent box keeps a gap of ``gap`` (0.02 S) from
     every extent already placed is taken, else the draw with the largest smallest gap.

  So actor centres are uniform over the part of the frame each trajectory allows: a slow
  actor can stand anywhere, a ``moving_left`` one anywhere vertically. The box of each actor in
  each frame is the bounding box of its drawn pixels (``gt.boxes``), as in the centre layout.
* ``close`` (the discriminative localisation benchmark: actors side by side, touching or
  overlapping in part, where one class's map can light its neighbour): as ``anywhere`` (motions,
  sizes, whole trajectories inside the frame), but every actor after the first stands beside
  one already placed, frame by frame. With ``b_t`` an actor's box at frame ``t`` relative to its
  centre (the half-side of step 1) and ``G_t`` the gap (:func:`box_gap`, negative = overlap)
  between its box and the nearest placed actor's box at ``t``, per actor: a target gap
  ``g ~ U(CLOSE_GAP) * S`` (from an overlap of 0.08 of the side to touching); up to ``tries``
  candidates, each at gap ``g`` on a random side (left, right, above, below) of a random placed
  actor at a random frame, its centre along that side uniform over the other's span, moved so
  that the whole trajectory is in the frame (1 px from its edges); the error of a candidate is ``|median_t G_t - g|``,
  plus 1000 px per px of overlap deeper than ``-CLOSE_GAP[0] * S`` in any frame; the first
  candidate with an error <= 0.5 px is taken, else the one with the smallest error. So in the
  typical frame two neighbours touch or overlap a little, in no frame (when a candidate allows)
  by more than 0.08 S along one axis (9 px at 112 px, of boxes ~22 px wide); moving actors
  come and go past each other. Actors drawn later are drawn over earlier ones; a box stays the
  bounding box of the actor's whole shape, occluded pixels included.
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple

import numpy as np

__all__ = ["LAYOUTS", "ANYWHERE_MOTION", "ANYWHERE_SCALE", "ANYWHERE_FALL", "CLOSE_GAP", "centre_positions",
           "trajectory_extent", "extents_of", "tracks_of", "place_anywhere", "place_close", "box_gap", "frame_gaps"]

LAYOUTS = ("centre", "anywhere", "close")
ANYWHERE_MOTION = 0.6      # motion amplitude relative to the centre layout
ANYWHERE_SCALE = 0.10      # actor radius as a fraction of the frame side
ANYWHERE_FALL = 0.45       # fall height as a fraction of the frame side
CLOSE_GAP = (-0.08, 0.0)   # the close layout: neighbours' typical gap per frame, fraction of the side

Box = Tuple[float, float, float, float]


def centre_positions(rng: np.random.Generator, n: int, size: int) -> List[Tuple[float, float]]:
    """The ``centre`` layout: ``n`` centres in U(0.3, 0.7) of ``size``, spread by rejection."""
    centres: List[Tuple[float, float]] = []
    for _ in range(n):
        best, best_d = None, -1.0
        for _try in range(30):
            c = (rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size)
            d = min([math.hypot(c[0] - o[0], c[1] - o[1]) for o in centres] or [1e9])
            if d > best_d:
                best, best_d = c, d
            if d > 0.3 * size:
                break
        centres.append(best)
    return centres


def trajectory_extent(states: Sequence[Tuple[float, float, float, float, float]], radius: float) -> Box:
    """``(ex0, ey0, ex1, ey1)`` relative to the centre from per-frame ``(dx, dy, sx, sy, ...)``
    offsets: step 1 of the module docstring."""
    ex0 = ey0 = math.inf
    ex1 = ey1 = -math.inf
    for dx, dy, sx, sy in (s[:4] for s in states):
        h = radius * max(sx, sy) * 1.05 + 1
        ex0, ex1 = min(ex0, dx - h), max(ex1, dx + h)
        ey0, ey1 = min(ey0, dy - h), max(ey1, dy + h)
    return ex0, ey0, ex1, ey1


def box_gap(a: Box, b: Box) -> float:
    """Gap between two boxes (x0, y0, x1, y1): the larger of the axis gaps; negative when they overlap."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def _uniform_in(rng: np.random.Generator, lo: float, hi: float) -> float:
    return rng.uniform(lo, hi) if hi > lo else (lo + hi) / 2


def place_anywhere(rng: np.random.Generator, extents: Sequence[Box], size: int, *, gap: float = 0.02,
                   tries: int = 60) -> List[Tuple[float, float]]:
    """Centres for actors with trajectory ``extents`` (relative boxes): steps 2-3 of the module docstring."""
    placed: List[Box] = []
    centres: List[Tuple[float, float]] = []
    for ex0, ey0, ex1, ey1 in extents:
        best, best_gap = None, -math.inf
        for _ in range(tries):
            cx = _uniform_in(rng, -ex0, size - ex1)
            cy = _uniform_in(rng, -ey0, size - ey1)
            box = (cx + ex0, cy + ey0, cx + ex1, cy + ey1)
            g = min([box_gap(box, o) for o in placed] or [math.inf])
            if g > best_gap:
                best, best_gap = (cx, cy, box), g
            if g >= gap * size:
                break
        centres.append(best[:2])
        placed.append(best[2])
    return centres


def _clip_into(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi) if hi > lo else (lo + hi) / 2


def _beside(rng: np.random.Generator, anchor: np.ndarray, own: np.ndarray, ext: Box, g: float,
            size: int) -> Tuple[float, float]:
    """A centre putting the relative box ``own`` at gap ``g`` on a random side of the absolute box
    ``anchor``, its centre along that side uniform over the anchor's span, then moved so that
    the whole extent ``ext`` is in the frame, 1 px from its edges."""
    x0, y0, x1, y1 = (float(v) for v in own)
    side = int(rng.integers(4))
    if side < 2:       # left / right: x fixed by the gap, y along the anchor's height
        cx = anchor[0] - g - x1 if side == 0 else anchor[2] + g - x0
        cy = rng.uniform(anchor[1], anchor[3]) - (y0 + y1) / 2
    else:              # above / below
        cy = anchor[1] - g - y1 if side == 2 else anchor[3] + g - y0
        cx = rng.uniform(anchor[0], anchor[2]) - (x0 + x1) / 2
    # 1 px inside the bounds: the renderer's window starts at floor(x - half-side), so an extent
    # at the very edge (where the move puts many candidates) could still draw into column 0
    return _clip_into(cx, 1 - ext[0], size - 1 - ext[2]), _clip_into(cy, 1 - ext[1], size - 1 - ext[3])


def frame_gaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`box_gap` frame by frame of two box tracks ``[T, 4]`` (x0, y0, x1, y1) -> [T]."""
    return np.max(np.stack([b[:, 0] - a[:, 2], a[:, 0] - b[:, 2], b[:, 1] - a[:, 3], a[:, 1] - b[:, 3]]), axis=0)


def place_close(rng: np.random.Generator, tracks: Sequence[np.ndarray], size: int, *,
                gap: Tuple[float, float] = CLOSE_GAP, tries: int = 60) -> List[Tuple[float, float]]:
    """Centres for actors whose boxes relative to their centre are ``tracks`` ([T, 4] each), each
    after the first beside one already placed (the ``close`` layout of the module docstring)."""
    placed: List[np.ndarray] = []
    centres: List[Tuple[float, float]] = []
    for tr in tracks:
        tr = np.asarray(tr, dtype=np.float64)
        ext = (tr[:, 0].min(), tr[:, 1].min(), tr[:, 2].max(), tr[:, 3].max())
        if not placed:
            c = (_uniform_in(rng, -ext[0], size - ext[2]), _uniform_in(rng, -ext[1], size - ext[3]))
        else:
            g, floor = rng.uniform(*gap) * size, gap[0] * size
            best, best_err = None, math.inf
            for _ in range(tries):
                t = int(rng.integers(len(tr)))
                cand = _beside(rng, placed[int(rng.integers(len(placed)))][t], tr[t], ext, g, size)
                box = tr + np.array([cand[0], cand[1], cand[0], cand[1]])
                G = np.min([frame_gaps(box, o) for o in placed], axis=0)
                err = abs(float(np.median(G)) - g) + 1000.0 * max(0.0, floor - float(G.min()))
                if err < best_err:
                    best, best_err = cand, err
                if err <= 0.5:
                    break
            c = best
        centres.append((float(c[0]), float(c[1])))
        placed.append(tr + np.array([c[0], c[1], c[0], c[1]]))
    return centres


def tracks_of(states_of: Callable[[int], Sequence], radii: Sequence[float]) -> List[np.ndarray]:
    """Per actor ``j``, its boxes relative to its centre frame by frame [T, 4] from ``states_of(j)``
    (per-frame ``(dx, dy, sx, sy)``): the half-side of step 1 around each offset."""
    out = []
    for j, r in enumerate(radii):
        st = np.asarray([s[:4] for s in states_of(j)], dtype=np.float64)
        h = r * np.maximum(st[:, 2], st[:, 3]) * 1.05 + 1
        out.append(np.stack([st[:, 0] - h, st[:, 1] - h, st[:, 0] + h, st[:, 1] + h], axis=1))
    return out


def extents_of(states_of: Callable[[int], Sequence], radii: Sequence[float]) -> List[Box]:
    """The trajectory extent of each actor ``j`` from ``states_of(j)`` (its per-frame offsets)."""
    return [trajectory_extent(states_of(j), r) for j, r in enumerate(radii)]
