"""The GPU suite's CPU-side logic (it runs for real only on a CUDA machine) and the loss benchmark's
bookkeeping, on tiny shapes: steps recorded ok / missing / failed / skipped and the suite carries
on; the Triton exactness check and the benchmark's goals table computed end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_losses  # noqa: E402
import gpu_suite  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def test_suite_on_a_machine_without_gpu_names_what_is_missing(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: the suite really runs there")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((tmp_path / "gpu_suite_no-gpu.json").read_text())
    status = {r["step"]: r["status"] for r in res["steps"]}
    assert status == {"environment": "ok", "gpu_tests": "missing", "triton_exact": "missing",
                      "loss_speed": "missing", "dali_decode": "missing", "i3d_train": "missing"}
    assert all("no CUDA device" in m for m in res["missing"]) and len(res["missing"]) == 5
    md = (tmp_path / "gpu_suite_no-gpu.md").read_text()
    assert "| gpu_tests | missing |" in md and "the suite carried on" in md


def test_a_failing_step_is_recorded_and_the_suite_carries_on(tmp_path):
    def boom(ctx):
        raise RuntimeError("kernel mismatch\nsecond line")

    def fine(ctx):
        return {"value": 1.5}

    def absent(ctx):
        raise gpu_suite.Missing("DALI is not installed")

    written = []
    res = gpu_suite.run_suite([("a", boom), ("b", absent), ("c", fine)], str(tmp_path), budget_s=100,
                              write=lambda r: written.append((len(r["steps"]), r["complete"])))
    assert written == [(1, False), (2, False), (3, True)]  # a killed suite leaves what it finished
    assert [r["status"] for r in res["steps"]] == ["failed", "missing", "ok"]
    assert res["steps"][0]["reason"] == "RuntimeError: kernel mismatch" and "Traceback" in res["steps"][0]["traceback"]
    assert res["steps"][2]["result"] == {"value": 1.5}
    assert res["counts"] == {"ok": 1, "missing": 1, "failed": 1, "skipped": 0}
    assert res["missing"] == ["b: DALI is not installed"]
    md = gpu_suite.to_markdown(res)
    assert "| a | failed |" in md and "value=1.5" in md
    # out of time: later steps are skipped, named
    res = gpu_suite.run_suite([("a", fine), ("b", fine)], str(tmp_path), budget_s=3)
    assert [r["status"] for r in res["steps"]] == ["skipped", "skipped"] and "out of time" in res["steps"][0]["reason"]


def test_exactness_check_runs_and_passes_on_cpu_interpreter():
    """The suite's Triton-vs-oracle table, on CPU tensors under TRITON_INTERPRET (tiny C), both
    oracle branches (pairwise reference; float64 torch backend past ref_max_c)."""
    rows = gpu_suite.exactness("cpu", Cs=(23, 37), B=3, ref_max_c=30)
    assert len(rows) == 2 * 4 * 2 * 2
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad[:3]


def test_bench_losses_tiny_run_writes_table_and_goals(tmp_path):
    out = bench_losses.main(["--device", "cpu", "--shapes", "8x50,16x60", "--losses", "wlsep,warp",
                             "--impls", "user,torch,ours,ours_bool,reference", "--min-reps", "2", "--max-reps", "2",
                             "--min-time", "0", "--out", str(tmp_path)])
    impls = {(r["loss"], r["impl"]) for r in out["results"]}
    assert ("wlsep", "user") in impls and ("warp", "user") not in impls  # no plain-torch WARP a user would write
    assert all(r["reps"] == 2 and r["q1"] <= r["ms"] <= r["q3"] for r in out["results"] if r["impl"] != "reference")
    md = (tmp_path / "losses_cpu.md").read_text()
    assert "AMD" in md or out["machine"]["cpu"] in md
    assert "Load average" in md and "| wlsep | 8x50 | ours |" in md
    # the goals are computed from the table (not at the goal shapes here: none)
    assert out["goals"] == []
    fake = {"device": "cpu", "results": [
        {"loss": "wlsep", "impl": i, "B": 256, "C": 1000, "ms": ms} for i, ms in
        (("user", 3.0), ("user_compile", 2.0), ("ours", 1.0), ("ours_bool", 0.95))]}
    g = {x["goal"]: (x["measured"], x["met"]) for x in bench_losses.goals(fake)}
    assert g["wlsep 256x1000: ours (float targets) vs user"] == ("3.0x", True)
    assert g["wlsep 256x1000: ours (float targets) vs user_compile"] == ("2.0x", False)
    assert g["wlsep 256x1000: float targets vs bool targets"] == ("1.05x", True)


def test_bench_losses_without_gpu_skips_with_a_note(capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert bench_losses.main(["--device", "cuda"]) is None
    assert "no CUDA device" in capsys.readouterr().out
