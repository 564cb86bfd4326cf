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
    monkeypatch.setattr(demo, "QUICK_BRODEN_VIDEOS", 2)
    monkeypatch.chdir(tmp_path)
    res = demo.run_demo(quick=True, progress=False, device="cpu")   # --quick: its own folder
    out = tmp_path / "runs" / "demo-quick"
    assert res["out"] == str(out) and not (tmp_path / "runs" / "demo").exists()
    printed = capsys.readouterr().out
    # the demo trains with class_weights auto = tempered for wLSEP (the loss study), which the table names
    assert "| val | I3D-R18w8 | wLSEP (tempered weights) |" in printed and "| test | chance |" in printed
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
    # the model explained: mCAM pictures, a dissection summary and the report page with both
    cams = json.load(open(out / "cam" / "cams.json"))
    assert cams["records"] and all(os.path.getsize(out / "cam" / r["png"]) > 0 for r in cams["records"])
    assert json.load(open(out / "dissect" / "summary.json"))["layers"]
    page = open(out / "report.html").read()
    assert summary["report"] == str(out / "report.html") and "Not present" not in page
    assert "mCAM gallery" in page and "Network dissection" in page and "| test | chance |" in printed
    assert f"report page (open in a browser): {out / 'report.html'}" in printed
    # a second run reuses the dataset when its parameters match, and says so when it replaces one
    demo.prepare_data(str(out / "data"), quick=True, seed=0, regenerate=False, progress=False)
    assert "reusing the dataset" in capsys.readouterr().out
    assert not demo._existing_matches(str(out / "data"), demo._dataset_params(quick=True, seed=1))
    demo.prepare_data(str(out / "data"), quick=True, seed=1, regenerate=False, progress=False)
    assert "replacing the dataset in" in capsys.readouterr().out


def test_demo_help_and_flags():
    from mmit_fast import cli

    p = cli.build_parser()
    a = p.parse_args(["demo", "--quick", "--out", "x", "--set", "lr=0.2"])
    assert a.quick and a.out == "x" and a.sets == ["lr=0.2"]
    assert p.parse_args(["demo"]).out is None and demo.QUICK_OUT != demo.FULL_OUT
    for verb in ("train", "finetune", "eval", "demo", "report"):
        with pytest.raises(SystemExit):
            p.parse_args([verb, "--help"])
