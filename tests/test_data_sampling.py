"""Clip sampling and epoch sharding of mmit_fast.data (pure functions, no video)."""
import itertools

import numpy as np
import pytest

from mmit_fast.data import ClipSpec, crop_window, epoch_batches, frame_indices, num_batches, plan_views, resized_size, view_grid
from mmit_fast.data.sampling import audio_window, sample_rng


# --------------------------------------------------------------------------- temporal
def test_consecutive_train_random_start_in_range_with_stride():
    spec = ClipSpec("consecutive", frames=16, stride=2)
    F = 75
    starts = set()
    for s in range(300):
        idx = frame_indices(F, spec, np.random.default_rng(s), train=True)
        assert idx.shape == (16,) and idx.dtype == np.int64
        assert np.all(np.diff(idx) == 2)
        assert idx[0] >= 0 and idx[-1] <= F - 1
        starts.add(int(idx[0]))
    # every start in 0..F-span is reachable, none beyond
    assert starts == set(range(0, F - spec.span + 1))


def test_consecutive_eval_centre_and_views():
    spec = ClipSpec("consecutive", frames=8, stride=4)
    F = 100
    idx = frame_indices(F, spec, train=False)
    # centred: the slack before and after differs by at most one frame
    before, after = idx[0], F - 1 - idx[-1]
    assert abs(before - after) <= 1
    v = [frame_indices(F, spec, train=False, view=j, num_views=5) for j in range(5)]
    assert v[0][0] == 0 and v[-1][-1] == F - 1          # first and last clip touch the ends
    starts = [x[0] for x in v]
    assert np.all(np.diff(starts) > 0)                  # evenly spread, increasing
    assert np.ptp(np.diff(starts)) <= 1


def test_consecutive_short_video_repeats_last_frame():
    spec = ClipSpec("consecutive", frames=16, stride=2)
    for F in (1, 5, 30):
        for train in (True, False):
            idx = frame_indices(F, spec, np.random.default_rng(0), train=train)
            assert idx.shape == (16,)
            assert idx.min() == 0 and idx.max() == F - 1
            assert np.all(np.diff(idx) >= 0)
            expect = np.minimum(np.arange(16) * 2, F - 1)
            assert np.array_equal(idx, expect)


def test_segments_one_frame_per_segment():
    spec = ClipSpec("segments", frames=8)
    F = 75
    for s in range(50):
        idx = frame_indices(F, spec, np.random.default_rng(s), train=True)
        lo = np.floor(np.arange(8) * F / 8)
        hi = np.ceil((np.arange(8) + 1) * F / 8) - 1      # last frame starting inside segment k
        assert np.all(idx >= lo) and np.all(idx <= hi), idx
    ev = frame_indices(F, spec, train=False)
    centre = np.floor((np.arange(8) + 0.5) * F / 8)
    assert np.array_equal(ev, centre)
    # temporal views of segments: different offsets inside the same segments
    vs = [frame_indices(F, spec, train=False, view=j, num_views=3) for j in range(3)]
    assert all(np.all(vs[j] < vs[j + 1]) for j in range(2))


def test_segments_short_video():
    spec = ClipSpec("segments", frames=8)
    for F in (1, 3, 7):
        for train in (True, False):
            idx = frame_indices(F, spec, np.random.default_rng(1), train=train)
            assert idx.shape == (8,) and idx.min() >= 0 and idx.max() <= F - 1
            assert np.all(np.diff(idx) >= 0)
        # every frame used when there are fewer frames than segments (evaluation)
        assert set(frame_indices(F, spec, train=False).tolist()) == set(range(F))


def test_train_sampling_needs_rng_and_is_seeded():
    spec = ClipSpec()
    with pytest.raises(ValueError):
        frame_indices(100, spec, None, train=True)
    a = frame_indices(100, spec, sample_rng(0, 3, 7), train=True)
    b = frame_indices(100, spec, sample_rng(0, 3, 7), train=True)
    assert np.array_equal(a, b)
    # different epochs give (almost always) different clips
    starts = {int(frame_indices(100, spec, sample_rng(0, e, 7), train=True)[0]) for e in range(20)}
    assert len(starts) > 5


def test_bad_specs_rejected():
    with pytest.raises(ValueError):
        ClipSpec("random")
    with pytest.raises(ValueError):
        ClipSpec(frames=0)
    with pytest.raises(ValueError):
        ClipSpec(crop=112, resize=100)
    with pytest.raises(ValueError):
        frame_indices(0, ClipSpec(), train=False)


# --------------------------------------------------------------------------- spatial
def test_resize_and_crop_windows():
    assert resized_size(256, 340, 128) == (128, 170)
    assert resized_size(340, 256, 128) == (170, 128)
    assert resized_size(64, 64, 56) == (56, 56)
    hw = (128, 170)
    for s in range(100):
        y, x = crop_window(hw, 112, np.random.default_rng(s), train=True)
        assert 0 <= y <= 16 and 0 <= x <= 58
    assert crop_window(hw, 112, train=False) == (8, 29)
    three = [crop_window(hw, 112, train=False, view=k, num_views=3) for k in range(3)]
    assert three == [(8, 0), (8, 29), (8, 58)]        # slide along the long (x) side
    with pytest.raises(ValueError):
        crop_window((100, 100), 112, train=False)


def test_view_grid_and_plans():
    assert view_grid(1) == (1, 1)
    assert view_grid(3) == (1, 3)
    assert view_grid(30) == (10, 3)
    assert view_grid(4) == (4, 1)
    assert view_grid((2, 3)) == (2, 3)
    spec = ClipSpec("consecutive", frames=4, stride=2, crop=48, resize=56)
    plans = plan_views(50, 64, 96, 25.0, spec, train=False, views=(2, 3))
    assert len(plans) == 6
    assert plans[0].indices[0] == 0 and plans[3].indices[-1] == 49    # temporal-major order
    assert [p.crop_yx[1] for p in plans[:3]] == [0, 18, 36]            # resized 56x84
    assert all(not p.flip for p in plans)
    assert plans[3].audio_start == pytest.approx(plans[3].indices[0] / 25.0)
    tr = plan_views(50, 64, 96, 25.0, spec, train=True, seed=1, epoch=2, sample=9, views=1)
    tr2 = plan_views(50, 64, 96, 25.0, spec, train=True, seed=1, epoch=2, sample=9, views=1)
    assert np.array_equal(tr[0].indices, tr2[0].indices) and tr[0].crop_yx == tr2[0].crop_yx and tr[0].flip == tr2[0].flip
    flips = [plan_views(50, 64, 96, 25.0, spec, train=True, seed=0, sample=s)[0].flip for s in range(200)]
    assert 60 < sum(flips) < 140


def test_audio_window_cut_and_zero_fill():
    sr = 100
    w = np.arange(250, dtype=np.float32)
    a = audio_window(w, 0.5, 100, sr)
    assert np.array_equal(a, w[50:150])
    b = audio_window(w, 2.0, 100, sr)
    assert np.array_equal(b[:50], w[200:]) and np.all(b[50:] == 0)
    assert np.all(audio_window(None, 0.0, 30, sr) == 0)


# --------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("drop_last", [False, True])
def test_epoch_batches_disjoint_equal_counts(drop_last):
    for n, b, w in itertools.product([7, 10, 33, 64, 101], [1, 3, 8], [1, 2, 3, 4]):
        if n < w:
            continue
        per_rank = [epoch_batches(n, b, r, w, epoch=1, seed=5, shuffle=True, drop_last=drop_last) for r in range(w)]
        counts = {len(x) for x in per_rank}
        assert counts == {num_batches(n, b, w, drop_last)}, (n, b, w)   # same number of batches on every rank
        flat = [np.concatenate(x) for x in per_rank]
        allidx = np.concatenate(flat)
        assert len(np.unique(allidx)) == len(allidx)                     # ranks disjoint, nothing twice
        assert all(len(bb) <= b for x in per_rank for bb in x)
        if drop_last:
            assert all(len(bb) == min(b, n // w) for x in per_rank for bb in x)   # full batches only
            assert len(allidx) >= n - w * b - w
        else:
            assert sorted(allidx.tolist()) == list(range(n))             # every sample exactly once


def test_epoch_shuffle_depends_on_epoch_and_seed():
    a = np.concatenate(epoch_batches(50, 4, 0, 1, epoch=0, seed=0, shuffle=True, drop_last=False))
    b = np.concatenate(epoch_batches(50, 4, 0, 1, epoch=0, seed=0, shuffle=True, drop_last=False))
    c = np.concatenate(epoch_batches(50, 4, 0, 1, epoch=1, seed=0, shuffle=True, drop_last=False))
    d = np.concatenate(epoch_batches(50, 4, 0, 1, epoch=0, seed=1, shuffle=True, drop_last=False))
    e = np.concatenate(epoch_batches(50, 4, 0, 1, epoch=0, seed=0, shuffle=False, drop_last=False))
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, d)
    assert np.array_equal(e, np.arange(50))
    with pytest.raises(ValueError):
        epoch_batches(3, 1, 0, 4, epoch=0, seed=0, shuffle=False, drop_last=False)
