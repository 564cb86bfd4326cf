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
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple

import numpy as np

__all__ = ["LAYOUTS", "ANYWHERE_MOTION", "ANYWHERE_SCALE", "ANYWHERE_FALL", "centre_positions",
           "trajectory_extent", "extents_of", "place_anywhere", "box_gap"]

LAYOUTS = ("centre", "anywhere")
ANYWHERE_MOTION = 0.6      # motion amplitude relative to the centre layout
ANYWHERE_SCALE = 0.10      # actor radius as a fraction of the frame side
ANYWHERE_FALL = 0.45       # fall height as a fraction of the frame side

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


def extents_of(states_of: Callable[[int], Sequence], radii: Sequence[float]) -> List[Box]:
    """The trajectory extent of each actor ``j`` from ``states_of(j)`` (its per-frame offsets)."""
    return [trajectory_extent(states_of(j), r) for j, r in enumerate(radii)]
