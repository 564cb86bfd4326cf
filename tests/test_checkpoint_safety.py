"""A checkpoint is data, not code: every loading path refuses a planted pickle without running
it, and the checkpoints and files training writes are readable by colleagues (umask respected).

Oracle for "never runs": the marker file the planted object would ``touch`` does not exist.
"""
import os
import stat

import pytest
import torch

from mmit_fast import cli
from mmit_fast.models.checkpoint import read_checkpoint
from mmit_fast.train import train
from train_helpers import TINY, plant_checkpoint, tiny_cfg, tiny_dataset


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_dataset()


@pytest.fixture(scope="module")
def real_ck(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("src")
    train(tiny_cfg(tiny_data, out, max_steps=1, val_split=""))
    return str(out / "checkpoints" / "last.pt")


def _refused(capsys, rc, path, marker):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not os.path.exists(marker), "the planted pickle ran"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "refused" in lines[0], err


def test_planted_pickle_never_runs_in_any_loading_path(tiny_data, real_ck, tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = plant_checkpoint(tmp_path / "planted.pt", marker, like=read_checkpoint(real_ck))
    # mmit eval
    _refused(capsys, cli.main(["eval", bad, "--data", str(tiny_data), "--no-progress"]), bad, marker)
    # mmit finetune --from
    _refused(capsys, cli.main(["finetune", "--from", bad, "--data", str(tiny_data), "--out", str(tmp_path / "ft"),
                               *TINY]), bad, marker)
    # --resume PATH
    _refused(capsys, cli.main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r1"), "--resume", bad,
                               *TINY]), bad, marker)
    # --resume auto with a planted last.pt
    run = tmp_path / "r2"
    os.makedirs(run / "checkpoints")
    last = plant_checkpoint(run / "checkpoints" / "last.pt", marker, like=read_checkpoint(real_ck))
    _refused(capsys, cli.main(["train", "--data", str(tiny_data), "--out", str(run), "--resume", "auto", *TINY]),
             last, marker)
    # pretrained= (a planted "state dict")
    sd = plant_checkpoint(tmp_path / "weights.pth", marker, like=read_checkpoint(real_ck)["model"])
    _refused(capsys, cli.main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r3"), "--pretrained", sd,
                               *TINY]), sd, marker)
    # sanity: the same object is live when loaded unsafely (the test's planted file really is hostile)
    torch.load(bad, weights_only=False)
    assert os.path.exists(marker)


def test_written_files_respect_the_umask_and_the_folder_is_synced(tiny_data, tmp_path, monkeypatch):
    synced_dirs = []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_dirs.append(fd)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    old = os.umask(0o027)
    try:
        out = tmp_path / "run"
        train(tiny_cfg(tiny_data, out, max_steps=2, ckpt_every=1))
    finally:
        os.umask(old)
    for rel in ("checkpoints/last.pt", "checkpoints/best.pt", "summary.json", "metrics.csv", "val_metrics.csv",
                "config.yaml", "ranks/rank0.json"):
        assert stat.S_IMODE(os.stat(out / rel).st_mode) == 0o640, rel
    assert len(synced_dirs) >= 3  # every atomic write fsyncs its folder after the rename
