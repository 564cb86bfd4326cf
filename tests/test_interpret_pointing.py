"""The localisation scores (interpret/pointing.py) on hand-built maps with known answers."""
import numpy as np
import pytest
import torch

from mmit_fast.interpret import pointing as P
from mmit_fast.interpret.cam import upsample_maps


def _up(grid, size):
    """A raw h x w map upsampled to size x size as the class maps are (bilinear, half-pixel centres)."""
    t = torch.tensor(np.asarray(grid, np.float32))[None, None]
    return upsample_maps(t, (size, size))[0, 0].numpy()


def test_edge_peak_points_at_its_plateau_centre_not_the_corner():
    # a 3 x 3 map peaking in its top-left cell, upsampled to 96 px (32 px cells): bilinear clamps at
    # the border, so pixels 0..15 of both axes share the peak value; the first arg-max is (0, 0)
    g = np.zeros((3, 3))
    g[0, 0] = 1.0
    m = _up(g, 96)
    assert np.unravel_index(np.argmax(m), m.shape) == (0, 0)
    assert (m[:16, :16] == m.max()).all() and m[16, 0] < m.max()
    assert P.peak_point(m) == (8.0, 8.0)
    # an interior peak cell: the two pixels either side of the cell centre tie -> exactly the centre
    g = np.zeros((3, 3))
    g[1, 2] = 1.0
    m = _up(g, 96)
    assert P.peak_point(m) == (48.0, 88.0)   # right column: plateau 80..95 in x, centre 88
    g = np.zeros((3, 3))
    g[1, 1] = 1.0
    assert P.peak_point(_up(g, 96)) == (48.0, 48.0)


def test_ties_take_the_largest_plateau_then_the_first():
    m = np.zeros((10, 10))
    m[1, 1] = 1.0                 # a single pixel
    m[6:8, 5:8] = 1.0             # a 2 x 3 plateau: larger, wins
    assert P.peak_point(m) == (7.0, 6.5)
    m = np.zeros((10, 10))
    m[5, 5] = m[2, 8] = 1.0       # equal sizes: the first in raster order
    assert P.peak_point(m) == (2.5, 8.5)
    m[6, 6] = 1.0                 # diagonal neighbours join (8-connected): {(5,5), (6,6)} is larger
    assert P.peak_point(m) == (6.0, 6.0)
    assert P.peak_point(np.zeros((4, 4))) is None and P.peak_point(np.full((4, 4), 0.3)) is None
    # values within 1e-6 of the range below the max belong to the plateau
    m = np.zeros((6, 6))
    m[1, 1], m[1, 2] = 1.0, 1.0 - 1e-9
    assert P.peak_point(m) == (1.5, 2.0)


def test_tolerance_and_box_distance():
    assert P.tolerance(224) == 15.0 and P.tolerance(112) == 7.5
    box = (20.0, 10.0, 30.0, 40.0)                      # x0, y0, x1, y1
    assert P.box_distance((25.0, 25.0), box) == 0.0
    assert P.box_distance((25.0, 37.5), box) == 7.5     # 7.5 px right of the box
    assert P.box_distance((44.0, 33.0), box) == 5.0     # beyond the bottom-right corner by (dy 4, dx 3)
    m = np.zeros((1, 64, 64))
    m[0, 25, 37] = 1.0                                  # point (25.5, 37.5): 7.5 px from the box
    boxes = np.array([box])
    assert P.pointing_hits(m, boxes, np.array([True]), tol=7.5) == 1.0
    assert P.pointing_hits(m, boxes, np.array([True]), tol=7.49) == 0.0
    # a constant map points nowhere: a miss; no visible frame: undefined
    assert P.pointing_hits(np.zeros((2, 64, 64)), np.array([box, box]), np.array([True, True]), 7.5) == 0.0
    assert np.isnan(P.pointing_hits(m, boxes, np.array([False]), 7.5))


def test_discriminative_game_two_actors():
    """Actor 0 on the left, actor 1 on the right, 4 frames; the map of actor 0's class points at
    actor 0 (hit), at actor 1 (other actor), at the background (neither), and in a frame where
    actor 1 is hidden (not scored)."""
    T = 4
    boxes = np.zeros((2, T, 4))
    boxes[0] = (5, 20, 25, 40)
    boxes[1] = (60, 20, 80, 40)
    visible = np.ones((2, T), bool)
    visible[1, 3] = False
    m = np.zeros((T, 64, 96))
    m[0, 30, 15] = 1.0     # on actor 0
    m[1, 30, 70] = 1.0     # on actor 1
    m[2, 5, 45] = 1.0      # background, far from both
    m[3, 30, 70] = 1.0     # actor 1 hidden here: frame not scored
    r = P.discriminative(m, boxes, visible, actor=0, tol=7.5)
    assert r == {"hit": 1 / 3, "other": 1 / 3, "frames": 3}
    # the plain pointing game scores frame 3 too (a miss) and does not care which actor
    assert P.pointing_hits(m, boxes[0], visible[0], 7.5) == 0.25
    # for actor 1's class, the same map hits in frame 1 and points at the other actor in frame 0
    r1 = P.discriminative(m, boxes, visible, actor=1, tol=7.5)
    assert r1 == {"hit": 1 / 3, "other": 1 / 3, "frames": 3}
    # a single-actor clip has no frame to score
    assert P.discriminative(m, boxes[:1], visible[:1], actor=0, tol=7.5)["frames"] == 0


def test_iou_curve_on_a_hand_built_map():
    region = np.zeros((1, 20, 20), bool)
    region[0, 5:10, 5:10] = True                   # 25 pixels
    m = np.zeros((1, 20, 20))
    m[0, 4:11, 4:11] = 0.5                         # a ring of 24 pixels at 0.5
    m[0, 5:10, 5:10] = 1.0
    curve = P.iou_curve(m, region, np.array([True]))
    want = np.where(P.THRESHOLDS <= 0.5, 25 / 49, 1.0)
    np.testing.assert_allclose(curve, want)
    assert len(P.THRESHOLDS) == 19 and P.THRESHOLDS[0] == 0.05 and P.THRESHOLDS[-1] == 0.95


def test_box_coverage_grid_against_supersampling():
    rng = np.random.default_rng(0)
    H, W, h, w = 56, 56, 7, 7
    xs, ys = np.sort(rng.uniform(0, 56, size=(5, 2)), axis=1), np.sort(rng.uniform(0, 56, size=(5, 2)), axis=1)
    boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)      # x0, y0, x1, y1
    got = P.box_coverage_grid(boxes, (H, W), (h, w))
    s = 16                                             # 16 x 16 samples per pixel
    yy = (np.arange(H * s) + 0.5) / s
    xx = (np.arange(W * s) + 0.5) / s
    for b, g in zip(boxes, got):
        inside = ((xx[None] >= b[0]) & (xx[None] < b[2]) & (yy[:, None] >= b[1]) & (yy[:, None] < b[3]))
        want = inside.reshape(h, H * s // h, w, W * s // w).mean(axis=(1, 3))
        np.testing.assert_allclose(g, want, atol=2.5 / s)


def test_the_ceiling_map_points_into_its_box():
    """The perfect map at 7 x 7 points into (or within tolerance of) a box of one cell's size
    wherever it stands, also on the frame's edge."""
    hits = 0
    for x0 in range(0, 112 - 16, 5):
        box = np.array([[x0, 0.0, x0 + 16, 16]])
        cover = torch.tensor(P.box_coverage_grid(box, (112, 112), (7, 7)), dtype=torch.float32)[None]
        m = upsample_maps(cover, (112, 112))[0].numpy()
        hits += P.pointing_hits(m, box, np.array([True]), 7.5) == 1.0
    assert hits == len(range(0, 112 - 16, 5))


def test_pair_scores_keys():
    m = np.zeros((2, 32, 32))
    m[:, 10, 10] = 1
    boxes = np.array([[[5, 5, 15, 15]] * 2, [[20, 20, 30, 30]] * 2], float)
    regions = np.zeros((2, 2, 32, 32), bool)
    regions[0, :, 5:15, 5:15] = True
    s = P.pair_scores(m, 0, boxes, np.ones((2, 2), bool), regions, 7.5, multi=True)
    assert s["pointing"] == 1.0 and s["discriminative"]["hit"] == 1.0 and s["iou"].shape == (19,)
    assert "discriminative" not in P.pair_scores(m, 0, boxes, np.ones((2, 2), bool), regions, 7.5, multi=False)
    with pytest.raises(IndexError):
        P.pair_scores(m, 2, boxes, np.ones((2, 2), bool), regions, 7.5, multi=False)
