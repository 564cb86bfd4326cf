"""Two processes on gloo (torch.multiprocessing.spawn): replicas never diverge when a
micro-batch is skipped, and an N-process evaluation equals the single-process one.

Oracles: every rank's parameter digest (identical replicas); the single-process evaluation of
the same checkpoint (files compared value by value, the chance row included).
"""
import json
import os

import numpy as np
import pytest
import torch.multiprocessing as mp

from mmit_fast.evaluate import evaluate_checkpoint
from train_helpers import ddp_worker, free_port, read_csv, tiny_cfg, tiny_dataset


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_dataset()


def test_skip_nonfinite_with_accumulation_keeps_replicas_equal_and_eval_matches(tiny_data, tmp_path):
    """accum 2, 3 batches per rank: groups [0, 1] and [2]. Rank 1's micro-batch 1 (the last of
    the first group, its all-reduce point) is non-finite: both ranks skip it and still step
    with the same all-reduced gradient of micro-batch 0. Then a 2-process eval of the result
    equals a 1-process eval, chance level and scores file included.

    lr 0.001: at lr 0.05 two steps on 2-clip per-rank batches leave eval-mode scores near 1e7
    (1e3 at lr 0.005: BatchNorm's running statistics after two updates do not describe the
    trained activations), and comparing such values to rtol 1e-5 is flaky by construction. The
    scores are checked to stay small, so that the comparison tests the replicas."""
    out = tmp_path / "ddp"
    cfg = tiny_cfg(tiny_data, out, accum_steps=2, skip_nonfinite=True, val_split="", momentum=0.0, lr=0.001).to_dict()
    ck = str(out / "checkpoints" / "last.pt")
    mp.spawn(ddp_worker, args=(2, free_port(), cfg, [(1, 1)], str(tmp_path / "eval2"), ck), nprocs=2, join=True)
    ranks = [json.load(open(out / "ranks" / f"rank{r}.json")) for r in (0, 1)]
    assert ranks[0]["param_digest"] == ranks[1]["param_digest"], "the replicas diverged"
    rows = read_csv(out / "metrics.csv")
    assert [int(r["skipped"]) for r in rows] == [1, 1] and len(rows) == 2

    evaluate_checkpoint(ck, None, "val", out=str(tmp_path / "eval1"), progress=False, num_workers=0)
    one = json.load(open(tmp_path / "eval1" / "val_metrics.json"))
    two = json.load(open(tmp_path / "eval2" / "val_metrics.json"))
    assert two["world_size"] == 2 and one["world_size"] == 1 and one["num_videos"] == two["num_videos"] == 5
    for k in ("top1", "top5", "micro_map", "macro_map", "pooled_ap"):
        assert two[k] == pytest.approx(one[k], abs=1e-6), k
        assert two["chance"][k] == one["chance"][k], f"chance {k}"
    z1, z2 = np.load(tmp_path / "eval1" / "val_scores.npz"), np.load(tmp_path / "eval2" / "val_scores.npz")
    assert z1["keys"].tolist() == z2["keys"].tolist()
    assert np.abs(z1["scores"]).max() < 10, "the tiny run diverged: the comparison below would test nothing"
    # float32 convolutions over differently split batches differ by a few ulp of the logits'
    # scale, not of each entry: the absolute tolerance follows the largest score (< 10, above)
    np.testing.assert_allclose(z1["scores"], z2["scores"], rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(z1["scores"]).max())))
    np.testing.assert_array_equal(z1["targets"], z2["targets"])
