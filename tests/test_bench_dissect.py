"""The dissection benchmark's workers run and agree, so the committed comparison compares
implementations of the same numbers: ours from a float64 feature memmap (cold and warm mask cache)
against the reimplementation of Lite's method and against np.percentile; the run-time patches that
let NetDissect-Lite's own code run do what they claim. With MMIT_NETDISSECT_LITE pointing to a
checkout of CSAILVision/NetDissect-Lite, Lite's own stage runs too."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_interpret_dissect import make_broden  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks", "bench_dissect.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def _run(args):
    res = subprocess.run([sys.executable, BENCH] + args, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _features(tmp_path, broden):
    """The stub layer's activations of the concept set, float64 in Lite's layout (the benchmark's setup)."""
    from _dissect_setup import feature_memmap

    return feature_memmap(str(tmp_path), "stub", "layer4", broden, batch=4)


def test_stage_from_memmap_cold_warm_and_the_reimplementation_agree(tmp_path):
    broden = make_broden(str(tmp_path / "b"), n=10, size=32)
    path, shape = _features(tmp_path, broden)
    common = ["--worker", "ours", "--broden", broden, "--features", path, "--shape", *map(str, shape), "--quantile",
              "0.05", "--batch", "4", "--threads", "1"]
    cold = _run(common + ["--mask-cache", str(tmp_path / "cache"), "--out-prefix", str(tmp_path / "cold")])
    warm = _run(common + ["--mask-cache", str(tmp_path / "cache"), "--out-prefix", str(tmp_path / "warm")])
    assert (cold["mask_cache"], warm["mask_cache"]) == ("built", "hit") and cold["images"] == 10
    a, b = np.load(tmp_path / "cold_iou.npy"), np.load(tmp_path / "warm_iou.npy")
    assert np.array_equal(a, b) and a.shape == (512, 4)
    mm = np.memmap(path, dtype=np.float64, mode="r", shape=shape)
    ref = np.percentile(np.transpose(mm, (1, 0, 2, 3)).reshape(512, -1), 95, axis=1)
    assert np.array_equal(np.load(tmp_path / "warm_thr.npy"), ref)       # exact thresholds, from the memmap
    r = _run(["--worker", "reimpl-lite", "--checkpoint", "stub", "--broden", broden, "--layer", "layer4", "--quantile",
              "0.05", "--batch", "4", "--threads", "1", "--iou-out", str(tmp_path / "reimpl.npy")])
    c = np.load(tmp_path / "reimpl.npy")   # np.percentile thresholds too; the resize and Lite's union rule differ
    assert r["images"] == 10 and a.max() > 0.05
    assert np.abs(a - c).max() < 0.1 and (a.argmax(1) == c.argmax(1)).mean() >= 0.9
    for x in (cold, warm):
        assert x["peak_minus_start_mb"] >= 0 and x["seconds"] > 0
    assert r["peak_minus_load_mb"] >= 0 and r["seconds"] > r["forward_seconds"] > 0


def test_lite_shims_do_what_they_claim():
    import _dissect_lite as lite
    from PIL import Image

    arr = np.random.default_rng(0).normal(size=(7, 5))
    got = lite._imresize(arr, (20, 11), mode="F")
    ref = np.array(Image.fromarray(arr.astype(np.float32), mode="F").resize((11, 20), Image.BILINEAR))
    assert got.shape == (20, 11) and got.dtype == np.float32 and np.array_equal(got, ref)
    lab = np.array([[0, 2], [1, 2]])
    oh = lite._onehot(None, lab)
    assert oh.shape == (2, 2, 3) and np.array_equal(oh.argmax(-1), lab) and oh.sum() == 4

    class _Prefetcher:
        left = [1, 2]

        def fetch_batch(self):
            return self.left.pop(0) if self.left else None

    assert list(lite._batches(_Prefetcher())) == [1, 2]                   # ends, no RuntimeError


def test_lite_imread_shim_gives_the_label_of_numpy_1(tmp_path):
    import _dissect_lite as lite
    from PIL import Image

    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1, :2] = (5, 3)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    got = lite._imread(str(tmp_path / "m.png"))
    assert (got[:, :, 0] + got[:, :, 1] * 256)[0, 1] == 5 + 256 * 3      # NumPy 2 refuses uint8 * 256


@pytest.mark.skipif(not os.environ.get("MMIT_NETDISSECT_LITE"), reason="MMIT_NETDISSECT_LITE (a NetDissect-Lite "
                    "checkout) not set")
def test_netdissect_lite_own_stage_runs_and_agrees(tmp_path):
    from _dissect_setup import make_data, sized_copy

    broden = sized_copy(make_data(str(tmp_path), 4), 12, str(tmp_path / "b12"))
    path, shape = _features(tmp_path, broden)
    common = ["--broden", broden, "--features", path, "--shape", *map(str, shape), "--quantile", "0.05", "--batch",
              "4", "--threads", "1"]
    lite = _run(["--worker", "lite", "--lite", os.environ["MMIT_NETDISSECT_LITE"], "--out-prefix",
                 str(tmp_path / "lite")] + common)
    _run(["--worker", "ours", "--out-prefix", str(tmp_path / "ours"), "--mask-cache", str(tmp_path / "c")] + common)
    a, b = np.load(tmp_path / "ours_iou.npy"), np.load(tmp_path / "lite_iou.npy")
    assert lite["images"] == 12 and a.shape == b.shape
    # the same numbers but for Lite's approximate thresholds, its resize and its union rule: most units agree closely
    assert np.median(np.abs(a - b).max(axis=1)) < 0.01 and (a.argmax(1) == b.argmax(1)).mean() >= 0.9
