"""`mmit demo` end to end (data -> train -> eval -> report) at a tiny size.

The real `run_demo` with its quick settings shrunk further (22 videos, 1 epoch) so the test
takes seconds; the full demo's timing and accuracy are measured, not tested.
"""
import json
import os

import numpy as np
import pytest

from mmit_fast import demo
from mmit_fast.evaluate import chance_metrics


def test_quick_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "QUICK_DATA", {"num_videos": 22, "size": 64, "seconds": 1.0})
    monkeypatch.setattr(demo, "QUICK_CONFIG", dict(demo.QUICK_CONFIG, epochs=1, batch_size=4, num_workers=0, threads=1,
                                                               width=8, frames=4, crop=32))
    out = tmp_path / "demo"
    res = demo.run_demo(out=str(out), quick=True, progress=False, device="cpu")
    printed = capsys.readouterr().out
    assert "| val | I3D-R18w8 | wLSEP |" in printed and "| test | chance |" in printed
    assert (out / "demo_report.md").read_text().startswith("# mmit demo")
    summary = json.load(open(out / "demo_summary.json"))
    assert summary["train"]["steps"] >= 1 and os.path.exists(summary["checkpoint"]) and res["checkpoint"] == summary["checkpoint"]
    for split in ("val", "test"):
        r = summary["results"][split]
        assert r["num_videos"] > 0 and 0 <= r["micro_map"] <= 1
        # the printed chance level is what random scores get on the same videos
        z = np.load(r["files"]["scores"])
        ch = chance_metrics(z["targets"])
        assert r["chance"]["micro_map"] == pytest.approx(ch["micro_map"])
        assert os.path.exists(r["files"]["per_class_ap"]) and os.path.exists(r["files"]["table"])
    # a second run reuses the dataset when its parameters match, regenerates when they differ
    demo.prepare_data(str(out / "data"), quick=True, seed=0, regenerate=False, progress=False)
    assert "reusing the dataset" in capsys.readouterr().out
    assert not demo._existing_matches(str(out / "data"), demo._dataset_params(quick=True, seed=1))


def test_demo_help_and_flags():
    from mmit_fast import cli

    p = cli.build_parser()
    a = p.parse_args(["demo", "--quick", "--out", "x", "--set", "lr=0.2"])
    assert a.quick and a.out == "x" and a.sets == ["lr=0.2"]
    for verb in ("train", "finetune", "eval", "demo"):
        with pytest.raises(SystemExit):
            p.parse_args([verb, "--help"])
