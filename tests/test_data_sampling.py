"""Clip sampling and epoch sharding of mmit_fast.data (pure functions, no video)."""
import itertools

import numpy as np
import pytest

from mmit_fast.data import ClipSpec, crop_window, epoch_batches, frame_indices, num_batches, plan_views, resized_size, view_grid
from mmit_fast.data.sampling import audio_seconds, audio_window, coverage_problem, frames_needed, sample_rng


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


# --------------------------------------------------------------------------- uniform (time-defined)
@pytest.mark.parametrize("T,low_fps", [(16, 16 / 3), (8, 8 / 3)])
def test_uniform_instants_are_defined_in_time(T, low_fps):
    """The same 3 s at 25 fps (75 frames), 30 fps (90) and the matched rate (T frames): each
    picked frame is the one on screen (``n/fps <= tau < (n+1)/fps``) at the same instants
    ``tau_k = (k + 1/2) * 3/T`` (evaluation) or ``(k + u) * 3/T`` (training, one offset u).
    That the matched packing's frame k really shows the source at tau_k is ffmpeg's part,
    tested on packed shards in test_presets.py."""
    spec = ClipSpec("uniform", frames=T)
    for fps in (25.0, 30.0, low_fps):
        n = int(round(3 * fps))
        tau = (np.arange(T) + 0.5) * 3.0 / T
        idx = frame_indices(n, spec, train=False)
        assert np.all(idx / fps <= tau + 1e-9) and np.all(tau < (idx + 1) / fps), fps
        for s in range(5):
            u = np.random.default_rng(s).random()
            idx = frame_indices(n, spec, np.random.default_rng(s), train=True)
            tau = (np.arange(T) + u) * 3.0 / T
            assert np.all(idx / fps <= tau + 1e-9) and np.all(tau < (idx + 1) / fps), (fps, s)
    # evaluation: uniform and segments pick the same frames
    assert np.array_equal(frame_indices(75, spec, train=False), frame_indices(75, ClipSpec("segments", frames=T),
                                                                                  train=False))


def test_uniform_uses_every_frame_of_a_matched_shard():
    """On a shard that holds exactly T frames every view picks each frame once (nothing decoded
    is wasted), in training (any offset) and in evaluation (any temporal view)."""
    spec = ClipSpec("uniform", frames=16)
    for s in range(50):
        assert np.array_equal(frame_indices(16, spec, np.random.default_rng(s), train=True), np.arange(16))
    for j in range(3):
        assert np.array_equal(frame_indices(16, spec, train=False, view=j, num_views=3), np.arange(16))


def test_uniform_training_is_one_jittered_grid():
    spec = ClipSpec("uniform", frames=16)
    F = 75
    firsts = set()
    for s in range(200):
        u = np.random.default_rng(s).random()           # the one draw uniform makes
        idx = frame_indices(F, spec, np.random.default_rng(s), train=True)
        assert np.array_equal(idx, np.floor((np.arange(16) + u) * F / 16))   # one offset for the whole grid
        assert np.all(np.diff(idx) >= 4) and np.all(np.diff(idx) <= 5)   # 75/16 = 4.69 frames apart
        assert 0 <= idx[0] < F / 16 and idx[-1] <= F - 1
        firsts.add(int(idx[0]))
    assert firsts == {0, 1, 2, 3, 4}                      # every offset inside the first step is reachable
    # temporal views: increasing offsets inside the first step, (j + 1/2)/3 of it
    vs = [frame_indices(F, spec, train=False, view=j, num_views=3)[0] for j in range(3)]
    assert vs == [0, 2, 3]


def test_uniform_short_video_repeats_never_overruns():
    spec = ClipSpec("uniform", frames=16)
    for F in (1, 5, 15):
        for train in (True, False):
            idx = frame_indices(F, spec, np.random.default_rng(2), train=train)
            assert idx.shape == (16,) and idx.min() >= 0 and idx.max() <= F - 1
            assert np.all(np.diff(idx) >= 0)
        assert set(frame_indices(F, spec, train=False).tolist()) == set(range(F))


def test_uniform_audio_covers_the_whole_clip():
    spec = ClipSpec("uniform", frames=16, crop=56)
    plans = plan_views(75, 64, 64, 25.0, spec, train=True, seed=0, sample=3, views=1)
    assert plans[0].audio_start == 0.0
    assert audio_seconds(spec, 25.0, 3.0) == 3.0
    cons = ClipSpec("consecutive", frames=16, stride=2)
    assert audio_seconds(cons, 25.0, 3.0) == pytest.approx(31 / 25)        # the clip's span
    assert audio_seconds(cons, 25.0, 3.0, whole=True) == 3.0              # an audio-only model: everything
    p = plan_views(75, 64, 64, 25.0, cons, train=False, views=3, audio_whole=True)
    assert all(v.audio_start == 0.0 for v in p)


def test_coverage_problem_names_what_is_missing():
    cons = ClipSpec("consecutive", frames=16, stride=2)
    msg = coverage_problem(cons, 16 / 3, 3.0, "paper-i3d")
    assert msg and "31 distinct frames" in msg and "hold 16" in msg and "paper-i3d" in msg and "uniform" in msg
    assert "\n" not in msg
    assert coverage_problem(cons, 25.0, 3.0) is None
    assert coverage_problem(ClipSpec("uniform", frames=16), 16 / 3, 3.0) is None
    assert coverage_problem(ClipSpec("segments", frames=8), 8 / 3, 3.0) is None
    m2 = coverage_problem(ClipSpec("uniform", frames=16), 8 / 3, 3.0, "tsm8")
    assert m2 and "16 distinct frames" in m2 and "hold 8" in m2
    assert frames_needed(cons) == 31 and frames_needed(ClipSpec("segments", frames=8)) == 8


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
