"""The dissection benchmark's two workers (ours and the NetDissect-Lite reimplementation) run and
agree, so the committed speed comparison compares two implementations of the same numbers."""
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from test_interpret_dissect import make_broden  # noqa: E402

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench_dissect.py")


def _worker(method, broden, out):
    cmd = [sys.executable, BENCH, "--worker", method, "--checkpoint", "stub", "--broden", broden, "--layer", "layer4",
           "--quantile", "0.05", "--batch", "4", "--threads", "1", "--iou-out", out]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1]), np.load(out)


def test_bench_workers_agree_on_iou(tmp_path):
    broden = make_broden(str(tmp_path / "b"), n=10, size=32)
    ours, a = _worker("ours", broden, str(tmp_path / "ours.npy"))
    lite, b = _worker("lite", broden, str(tmp_path / "lite.npy"))
    assert ours["images"] == lite["images"] == 10 and ours["units"] == lite["units"] == 512
    assert a.shape == b.shape == (512, 4)
    assert a.max() > 0.05                                  # some unit matches a concept at all
    # the thresholds differ (streaming histogram vs np.percentile over all values), nothing else
    assert np.abs(a - b).max() < 0.1
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
    for r in (ours, lite):
        assert r["seconds"] > r["forward_seconds"] > 0 and r["peak_minus_load_mb"] >= 0
