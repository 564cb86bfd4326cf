"""Resume rules: history is never silently lost, a changed configuration is refused unless
allowed by name, and an allowed change keeps the learning-rate schedule continuous.

Oracles: the files as they were before the refused command (byte for byte), the schedule
formula of the docstring of mmit_fast.train.schedule evaluated independently here.
"""
import math
import os

import pytest

from mmit_fast import cli
from mmit_fast.models.checkpoint import read_checkpoint
from mmit_fast.train import train
from mmit_fast.train.schedule import Schedule, plan_schedule
from train_helpers import TINY, read_csv, tiny_cfg, tiny_dataset


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_dataset()


def _snapshot(out):
    files = {}
    for root, _, names in os.walk(out):
        for n in names:
            p = os.path.join(root, n)
            files[os.path.relpath(p, out)] = open(p, "rb").read()
    return files


def test_resume_auto_without_last_refuses_to_start_over(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_cfg(tiny_data, out, max_steps=2))
    os.remove(out / "checkpoints" / "last.pt")
    before = _snapshot(out)
    capsys.readouterr()
    rc = cli.main(["train", "--data", str(tiny_data), "--out", str(out), "--resume", "auto", *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "holds a run (metrics.csv with 2 rows, val_metrics.csv with 1 rows, checkpoints/best.pt, summary.json)" in err
    assert "no checkpoints/last.pt" in err
    assert _snapshot(out) == before  # metrics.csv not truncated, best.pt not replaced
    # an empty folder: --resume auto starts a fresh run
    assert cli.main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "new"), "--resume", "auto",
                     "--max-steps", "1", "--val-split", "", *TINY]) == 0


def test_changed_config_is_refused_naming_the_keys(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data", str(tiny_data), "--out", str(out), "--epochs", "2", "--val-split", "", *TINY]
    assert cli.main(["train", *args, "--max-steps", "3"]) == 0
    from mmit_fast.losses.weights import DEFAULT_WLSEP_SCHEME   # the run records the scheme auto gave it

    assert read_checkpoint(str(out / "checkpoints" / "last.pt"))["loss_weights"] == DEFAULT_WLSEP_SCHEME
    before = _snapshot(out)
    for extra, named in ((["--epochs", "4"], "epochs: 2 -> 4"), (["--batch-size", "3"], "batch_size: 2 -> 3"),
                         (["--lr", "0.5", "--loss", "bce"], "loss: 'wlsep' -> 'bce'; lr: 0.1 -> 0.5")):
        capsys.readouterr()
        rc = cli.main(["train", *args, "--resume", "auto", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and named in err and "--resume-allow" in err and len(err.strip().splitlines()) == 1, err
        assert _snapshot(out) == before
    capsys.readouterr()
    assert cli.main(["train", *args, "--resume", "auto", "--epochs", "4", "--resume-allow", "lr"]) == 2
    assert "epochs: 2 -> 4" in capsys.readouterr().err
    assert cli.main(["train", *args, "--resume", "auto", "--resume-allow", "nonsense"]) == 2
    assert "unknown key(s) ['nonsense']" in capsys.readouterr().err
    # keys that do not change the computation may differ (max_steps, workers, logging)
    assert cli.main(["train", *args, "--resume", "auto", "--max-steps", "4", "--log-every", "2"]) == 0


def test_allowed_epochs_change_keeps_the_schedule_continuous(tiny_data, tmp_path):
    """2 epochs (12 steps) stopped at step 3, resumed with epochs=4 allowed: the lr at step 4 is
    the old schedule's, then decays by cosine to min_lr at step 24."""
    out = tmp_path / "run"
    kw = dict(val_split="", lr=0.05, min_lr=0.005, warmup_steps=1)
    train(tiny_cfg(tiny_data, out, epochs=2, max_steps=3, **kw))
    train(tiny_cfg(tiny_data, out, epochs=4, resume="auto", resume_allow="epochs", **kw))
    rows = read_csv(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 25))
    lr = [float(r["lr"]) for r in rows]

    def old(s):  # step s (0-based) of the 12-step run: warm-up 1, cosine over 11
        return 0.05 if s < 1 else 0.005 + 0.045 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 11))

    f0 = old(3)
    for s in range(24):
        want = old(s) if s < 3 else 0.005 + (f0 - 0.005) * 0.5 * (1 + math.cos(math.pi * (s - 3) / 21))
        assert lr[s] == pytest.approx(want, rel=1e-9), s
    assert max(abs(a - b) for a, b in zip(lr, lr[1:])) < 0.01  # no jump
    ck = read_checkpoint(str(out / "checkpoints" / "last.pt"))
    assert ck["schedule"]["anchor_step"] == 3 and ck["step"] == 24


def test_class_weights_compared_as_resolved(monkeypatch):
    """``class_weights: auto`` is compared as the scheme it gave the run: a checkpoint from
    before the default changed (no ``loss_weights``: auto meant min_ratio) is not resumed with
    the new default, and is resumed with ``--class-weights min_ratio``."""
    from mmit_fast.config import TrainConfig, checkpoint_weight_scheme
    from mmit_fast.losses import weights
    from mmit_fast.train.resume import config_changes

    monkeypatch.setattr(weights, "DEFAULT_WLSEP_SCHEME", "tempered")
    old = {"config": TrainConfig(loss="wlsep", class_weights="auto").to_dict()}
    assert checkpoint_weight_scheme(old) == "min_ratio"
    assert config_changes(old, TrainConfig(), 1, {})["class_weights"] == ("min_ratio", "tempered")
    assert "class_weights" not in config_changes(old, TrainConfig(class_weights="min_ratio"), 1, {})
    new = dict(old, loss_weights="tempered")
    assert checkpoint_weight_scheme(new) == "tempered" and "class_weights" not in config_changes(new, TrainConfig(), 1, {})
    assert checkpoint_weight_scheme({"config": {"loss": "lsep", "class_weights": "auto"}}) == "none"
    assert checkpoint_weight_scheme({"config": {"loss": "lsep", "class_weights": "tempered:0.25"}}) == "tempered:0.25"
    from mmit_fast.evaluate import loss_label

    assert (loss_label(old), loss_label(new)) == ("wLSEP", "wLSEP (tempered weights)")


def test_schedule_plan_unit():
    class C:
        lr, min_lr, schedule = 0.1, 0.0, "cosine"

    s = plan_schedule(C, 100, 10, 0, None)
    assert s.lr_at(0) == pytest.approx(0.01) and s.lr_at(9) == pytest.approx(0.1) and s.lr_at(100) == pytest.approx(0)
    same = plan_schedule(C, 100, 10, 50, s.to_dict())
    assert same == s
    longer = plan_schedule(C, 200, 10, 50, s.to_dict())
    assert longer.lr_at(50) == pytest.approx(s.lr_at(50)) and longer.lr_at(200) == pytest.approx(0.0)
    assert plan_schedule(C, 200, 10, 5, s.to_dict()) == Schedule(0.1, 0.0, "cosine", 10, 200)  # still warming up
    chained = plan_schedule(C, 300, 10, 120, longer.to_dict())
    assert chained.lr_at(120) == pytest.approx(longer.lr_at(120)) and chained.anchor_step == 120
