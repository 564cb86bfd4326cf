"""Resume rules: history is never silently lost, a changed configuration is refused unless
allowed by name, and an allowed change keeps the learning-rate schedule continuous.

Oracles: the files as they were before the refused command (byte for byte), the schedule
formula of the docstring of mmit_fast.train.schedule evaluated independently here.
"""
import math
import os

import pytest
import torch

from mmit_fast import cli
from mmit_fast.config import TrainConfig
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


# ------------------------------------------------------------------ resumes during the warm-up
WARM = dict(val_split="", lr=0.05, min_lr=0.0, epochs=4, warmup_epochs=1.0, momentum=0.0)


@pytest.fixture(scope="module")
def warming_run(tiny_data, tmp_path_factory):
    """4 epochs of 6 steps, warm-up 1 epoch (6 steps), stopped after step 3 (factor 3/6)."""
    out = tmp_path_factory.mktemp("warm") / "run"
    train(tiny_cfg(tiny_data, out, max_steps=3, **WARM))
    return out


def _expected_lr(s, done, w_new, s0, total):
    """The docstring's schedule after a resume at step ``s0`` during the warm-up: from the
    fraction ``done`` of the warm-up already seen, ``1/w_new`` more per step up to the peak,
    then the cosine from the warm-up's end to ``total``."""
    end = s0 + math.ceil((1 - done) * w_new - 1e-9)
    if s < end:
        return 0.05 * min(1.0, done + (s - s0 + 1) / w_new)
    return 0.05 * 0.5 * (1 + math.cos(math.pi * (s - end) / (total - end)))


@pytest.mark.parametrize("change, w_new, total", [
    (dict(batch_size=4), 3, 3 + 3 + 3 * 3 - 1),       # 3 batches per epoch; resumed at batch 1 of epoch 0
    (dict(accum_steps=2), 3, 3 + 2 + 3 * 3),          # 3 steps per epoch; the partial group [3] is one step
    (dict(warmup_steps=10), 10, 24),
    (dict(warmup_epochs=2.0), 12, 24),
])
def test_resume_during_warmup_keeps_the_lr_continuous(warming_run, tiny_data, tmp_path, change, w_new, total):
    """Resumed at step 3 of a 6-step warm-up with one allowed change: the warm-up continues from
    the fraction reached (1/2) by 1/w_new per step (w_new: the new warm-up length in the new
    steps), reaches the peak, and the cosine then runs to the new total."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(warming_run, out)
    train(tiny_cfg(tiny_data, out, resume="auto", resume_allow=",".join(change), max_steps=10, **{**WARM, **change}))
    lr = [float(r["lr"]) for r in read_csv(out / "metrics.csv")]
    assert len(lr) == 10
    assert lr[:3] == pytest.approx([0.05 / 6, 0.05 * 2 / 6, 0.05 * 3 / 6], rel=1e-12)
    for s in range(3, 10):
        assert lr[s] == pytest.approx(_expected_lr(s, 0.5, w_new, 3, total), rel=1e-9), (s, lr)
    assert max(b - a for a, b in zip(lr, lr[1:])) <= 0.05 / min(w_new, 6) + 1e-12  # no jump up
    assert min(b - a for a, b in zip(lr[:4], lr[1:4])) > 0  # nor down during the warm-up
    assert max(lr) == pytest.approx(0.05)


def test_resume_during_warmup_with_another_world_size_plan_unit():
    """world_size 1 -> 2 halves the batches per rank (6 -> 3 per epoch): the same plan as a
    doubled batch, computed from the loader's length alone."""
    from mmit_fast.train.setup import plan_length

    old_cfg = TrainConfig(epochs=4, warmup_epochs=1.0, lr=0.05)
    total, _, _, warm = plan_length(old_cfg, 6, 0, 0, 0)
    old = plan_schedule(old_cfg, total, warm, 0, None)
    total2, _, _, warm2 = plan_length(old_cfg, 3, 0, 1, 3)
    new = plan_schedule(old_cfg, total2, warm2, 3, old.to_dict())
    assert [old.lr_at(s) for s in range(3)] == pytest.approx([0.05 / 6, 0.05 / 3, 0.05 / 2])
    assert [new.lr_at(s) for s in range(3, 6)] == pytest.approx([0.05 * (0.5 + 1 / 3), 0.05, 0.05])
    assert new.warmup == 5 and new.lr_at(total2) == pytest.approx(0.0)


def test_resume_inside_an_accumulation_group_weights_the_partial_group(tiny_data, tmp_path):
    """accum 1 for 3 steps, resumed with accum_steps 2 allowed: the position (batch 3) lies
    inside group [2, 3]; the resumed step is the partial group [3], whose gradient is batch 3's
    alone (divided by 1, not 2): the parameters equal a 4-step accum-1 run's."""
    kw = dict(val_split="", momentum=0.0, weight_decay=0.0, deterministic=True)
    train(tiny_cfg(tiny_data, tmp_path / "ref", max_steps=4, **kw))
    out = tmp_path / "run"
    train(tiny_cfg(tiny_data, out, max_steps=3, **kw))
    train(tiny_cfg(tiny_data, out, max_steps=4, accum_steps=2, resume="auto", resume_allow="accum_steps", **kw))
    a, b = read_checkpoint(str(out / "checkpoints" / "last.pt")), read_checkpoint(str(tmp_path / "ref" / "checkpoints" / "last.pt"))
    assert (a["step"], a["epoch"], a["batch"]) == (4, 0, 4) == (b["step"], b["epoch"], b["batch"])
    la, lb = read_csv(out / "metrics.csv"), read_csv(tmp_path / "ref" / "metrics.csv")
    assert float(la[3]["lr"]) == pytest.approx(float(lb[3]["lr"]), rel=1e-12)
    for k, v in b["model"].items():
        if v.is_floating_point() and "running_" not in k:
            torch.testing.assert_close(a["model"][k], v, rtol=1e-6, atol=1e-7, msg=k)
