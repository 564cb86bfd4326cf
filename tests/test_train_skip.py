"""Training's non-finite skip path and its neighbours, each case built and its exact outcome
asserted: fp16 loss scaling across skipped groups, BatchNorm buffers of a skipped micro-batch,
a non-finite tensor at checkpoint time, a NaN validation metric, ``*_every 0``, and a planted
symlink in place of the keys file.

Oracles: the model state captured just before the skipped micro-batch (bit for bit); a
reference run without the skipped batches (bit for bit) and ``GradScaler``'s own rule for an
overflow (scale times ``backoff_factor``, growth tracker reset); the val_metrics.csv rows for
the best checkpoint; the victim file's bytes for the symlink.
"""
import math
import os

import pytest
import torch

from mmit_fast import cli
from mmit_fast.inference import unwrap
from mmit_fast.models.checkpoint import read_checkpoint
from mmit_fast.train import train
from train_helpers import TINY, NaNAt, patch_forward, read_csv, state_copy, tiny_cfg, tiny_dataset


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_dataset()


def _nan_loss(monkeypatch, calls):
    """The training criterion returns NaN at the given micro-batch calls (0-based)."""
    from mmit_fast.train import setup

    orig = setup.make_criterion
    monkeypatch.setattr(setup, "make_criterion",
                        lambda cfg, man, split, dev: NaNAt(orig(cfg, man, split, dev), 0, {(0, c) for c in calls}))


def _last(out):
    return read_checkpoint(str(out / "checkpoints" / "last.pt"))


def _assert_same_state(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


INIT_SCALE = 2.0 ** 16  # GradScaler's default init_scale


def test_fp16_skipped_groups_back_off_the_scaler_like_an_overflow(tiny_data, tmp_path, monkeypatch):
    """accum 1: the very first group skipped (the scaler has no scale yet), and later two
    skipped groups in a row (the second used to raise 'unscale_() has already been called').
    A skipped group backs the scale off and resets the growth tracker, with no update."""
    kw = dict(amp="fp16", skip_nonfinite=True, val_split="", momentum=0.0, deterministic=True)
    init = {}
    patch_forward(monkeypatch, lambda call, model, batch: init.setdefault("state", state_copy(model)))
    _nan_loss(monkeypatch, {0})
    train(tiny_cfg(tiny_data, tmp_path / "first", max_steps=1, **kw))
    ck = _last(tmp_path / "first")
    assert ck["skipped"] == 1 and ck["step"] == 1
    assert ck["scaler"]["scale"] == INIT_SCALE * 0.5 and ck["scaler"]["_growth_tracker"] == 0
    _assert_same_state(ck["model"], init["state"])  # no update, BatchNorm statistics included
    assert ck["optimizer"]["state"] == {}

    monkeypatch.undo()
    train(tiny_cfg(tiny_data, tmp_path / "ref", max_steps=1, **kw))  # one step, nothing skipped
    ref = _last(tmp_path / "ref")
    _nan_loss(monkeypatch, {1, 2})
    train(tiny_cfg(tiny_data, tmp_path / "later", max_steps=3, **kw))
    ck = _last(tmp_path / "later")
    assert ck["skipped"] == 2 and ck["step"] == 3
    assert ck["scaler"]["scale"] == ref["scaler"]["scale"] * 0.5 ** 2 and ck["scaler"]["_growth_tracker"] == 0
    _assert_same_state(ck["model"], ref["model"])


def test_skipped_micro_batch_leaves_no_trace_in_batchnorm_buffers(tiny_data, tmp_path, monkeypatch):
    """One NaN pixel in micro-batch 1 (accum 1): its forward pass updated every BatchNorm's
    running statistics before its loss was found NaN. The checkpoint after the skipped step
    equals the state just before that micro-batch, buffers included, and holds no NaN."""
    seen = {}

    def hook(call, model, batch):
        if call == 1:
            seen["before"] = state_copy(model)
            batch.video[0, 0, 0, 0, 0] = float("nan")

    patch_forward(monkeypatch, hook)
    train(tiny_cfg(tiny_data, tmp_path / "run", max_steps=2, skip_nonfinite=True, val_split=""))
    ck = _last(tmp_path / "run")
    assert ck["skipped"] == 1
    assert [k for k, v in ck["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()] == []
    _assert_same_state(ck["model"], seen["before"])


def test_a_nonfinite_tensor_is_never_written_to_a_checkpoint(tiny_data, tmp_path, monkeypatch, capsys):
    """A buffer that turns infinite with a finite loss (what a bug would do): the checkpoint of
    step 2 is refused with one line naming the tensor; step 1's last.pt stays."""

    def hook(call, model, batch):
        if call == 1:
            with torch.no_grad():
                unwrap(model).bn1.running_var[3] = math.inf

    patch_forward(monkeypatch, hook)
    out = tmp_path / "run"
    capsys.readouterr()
    rc = cli.main(["train", "--data", str(tiny_data), "--out", str(out), "--max-steps", "2", "--ckpt-every", "1",
                   "--val-split", "", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert "refusing to write" in err[0] and "last.pt" in err[0] and "model bn1.running_var" in err[0], err
    assert "1 of 8 values" in err[0], err
    assert _last(out)["step"] == 1


def test_a_nan_metric_is_never_the_best(tiny_data, tmp_path, monkeypatch, capsys):
    """Epoch 0's val micro_map is NaN, epoch 1's a number: best.pt is epoch 1's, and the epoch
    0 line says the NaN was not taken as a best."""
    from mmit_fast.train import loop

    orig, calls = loop.evaluate_model, []

    def evaluate(*a, **k):
        m = orig(*a, **k)
        calls.append(1)
        return dict(m, micro_map=float("nan")) if len(calls) == 1 else m

    monkeypatch.setattr(loop, "evaluate_model", evaluate)
    out = tmp_path / "run"
    capsys.readouterr()
    train(tiny_cfg(tiny_data, out, epochs=2))
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[mmit train] epoch")]
    rows = read_csv(out / "val_metrics.csv")
    assert len(rows) == 2 and math.isnan(float(rows[0]["micro_map"])) and not math.isnan(float(rows[1]["micro_map"]))
    assert "val micro_map is NaN: not a best (best.pt unchanged)" in lines[0] and "NaN" not in lines[1]
    best = read_checkpoint(str(out / "checkpoints" / "best.pt"))
    assert best["step"] == 12 and best["best"]["epoch"] == 1
    assert best["best"]["value"] == float(rows[1]["micro_map"])


def test_every_zero_means_never_or_is_refused(tiny_data, tmp_path, capsys):
    """--eval-every 0 over 2 epochs: no evaluation, no best.pt, epoch-end checkpoints;
    --ckpt-every 0: epoch ends only (documented); --log-every 0: refused at config time."""
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "2", *TINY]
    assert cli.main([*args, "--eval-every", "0", "--ckpt-every", "0"]) == 0
    assert read_csv(out / "val_metrics.csv") == [] and len(read_csv(out / "metrics.csv")) == 12
    assert not os.path.exists(out / "checkpoints" / "best.pt") and _last(out)["step"] == 12
    capsys.readouterr()
    assert cli.main([*args, "--log-every", "0"]) == 2
    assert "log_every=0 must be >= 1" in capsys.readouterr().err


def test_record_keys_replaces_a_planted_symlink(tiny_data, tmp_path):
    """ranks/keys-rank0.tsv is a symlink to a file outside the run: the file is left as it was,
    and the run writes its keys into a regular file of its own."""
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    out = tmp_path / "run"
    os.makedirs(out / "ranks")
    os.symlink(victim, out / "ranks" / "keys-rank0.tsv")
    train(tiny_cfg(tiny_data, out, max_steps=2, val_split="", record_keys=True))
    assert victim.read_text() == "mine\n"
    keys = out / "ranks" / "keys-rank0.tsv"
    assert not os.path.islink(keys)
    rows = [l.split("\t") for l in keys.read_text().splitlines()]
    assert len(rows) == 4 and all(r[0] == "0" and r[1] for r in rows)
