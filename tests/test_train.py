"""Training, evaluation and fine-tuning end to end on a tiny packed synthetic dataset.

Oracles: a single-process evaluation of the saved checkpoint for the distributed one
(gather + de-duplication), an uninterrupted run for a killed-and-resumed one (losses equal to
1e-6), scikit-learn's average precision for the per-class AP file, the cosine formula for the
logged learning rates, the source checkpoint for a frozen fine-tuned backbone.
"""
import csv
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmit_fast import cli
from mmit_fast.config import ConfigError, TrainConfig, load_config
from mmit_fast.train import NonFiniteLossError, load_checkpoint, train

TINY = ["--depth", "18", "--width", "8", "--frames", "4", "--stride", "2", "--crop", "32", "--batch-size", "2",
        "--num-workers", "0", "--threads", "1", "--no-progress", "--no-tensorboard", "--set", "model_args={conv1_t: 1}"]


def tiny_cfg(data, out, **kw):
    d = dict(data=str(data), out=str(out), depth=18, width=8, frames=4, stride=2, crop=32, batch_size=2,
             num_workers=0, threads=1, progress=False, tensorboard=False, model_args={"conv1_t": 1},
             lr=0.05, epochs=1)
    d.update(kw)
    return TrainConfig(**d).validate()


def sub_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")
    env.pop("MMIT_FAULT_KILL_AT_STEP", None)
    return env


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from mmit_fast.pack.synth import generate_dataset

    d = tmp_path_factory.mktemp("synth")
    # 22 videos: 12 train, 5 val, 5 test (odd val: the 2-rank evaluation pads one sample)
    generate_dataset(str(d), num_videos=22, size=64, seconds=1.0, splits=(0.5, 0.25, 0.25), progress=False, workers=1)
    return d


# --------------------------------------------------------------------------- config
def test_config_precedence_and_errors(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("lr: 0.2\nepochs: 3\namp: off\nmodel_args: {conv1_t: 1}\n")
    cfg = load_config(str(y), overrides={"epochs": 5}, sets=["lr=0.3", "flip=no"])
    assert (cfg.lr, cfg.epochs, cfg.amp, cfg.flip, cfg.model_args) == (0.3, 5, "off", False, {"conv1_t": 1})

    y.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rate' in .*run.yaml"):
        load_config(str(y))
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr' in --set; did you mean lr"):
        load_config(sets=["lrr=1"])
    with pytest.raises(ConfigError, match=r"epochs='abc' .* should be of type int"):
        load_config(sets=["epochs=abc"])
    with pytest.raises(ConfigError, match=r"loss='focal' is not one of"):
        load_config(sets=["loss=focal"])
    y.write_text("- not\n- a mapping\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(str(y))


def test_cli_reports_bad_config_key(capsys, tmp_path):
    rc = cli.main(["train", "--data", str(tmp_path), "--set", "batchsize=4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown config key 'batchsize'" in err and "batch_size" in err


def test_demo_yaml_matches_demo_config():
    from mmit_fast.demo import DEMO_CONFIG

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(here, "configs", "demo_cpu.yaml"))
    for k, v in DEMO_CONFIG.items():
        assert getattr(cfg, k) == v, k
    load_config(os.path.join(here, "configs", "i3d_r50_wlsep.yaml"))


# --------------------------------------------------------------------------- single process
def test_train_logs_schedule_and_checkpoints(tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_data, out, epochs=2, warmup_steps=2, lr=0.05, min_lr=0.001, tensorboard=True, ckpt_every=4,
                   loss="wlsep", class_weights="min_ratio")
    s = train(cfg)
    rows = read_csv(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))  # 12 train videos / batch 2 x 2 epochs
    # learning rate: linear warm-up over 2 steps, then cosine from 0.05 to 0.001 over the other 10
    for r in rows:
        s_ = int(r["step"]) - 1
        want = 0.05 * (s_ + 1) / 2 if s_ < 2 else 0.001 + (0.05 - 0.001) * 0.5 * (1 + math.cos(math.pi * (s_ - 2) / 10))
        assert float(r["lr"]) == pytest.approx(want, rel=1e-9)
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    val = read_csv(out / "val_metrics.csv")
    assert [int(r["epoch"]) for r in val] == [0, 1] and all(int(float(r["num_videos"])) == 5 for r in val)
    ck = load_checkpoint(str(out / "checkpoints" / "last.pt"))
    assert (ck["epoch"], ck["batch"], ck["step"]) == (2, 0, 12)
    assert ck["model_spec"]["name"] == "i3d" and len(ck["classes"]) == ck["model_spec"]["num_classes"]
    best = load_checkpoint(str(out / "checkpoints" / "best.pt"))
    vals = [float(r["micro_map"]) for r in val]
    assert best["best"]["value"] == pytest.approx(max(vals)) and best["step"] == 6 * (1 + int(np.argmax(vals)))
    assert any(f.startswith("events.") for f in os.listdir(out / "tb"))
    assert s["steps"] == 12 and json.load(open(out / "summary.json"))["steps"] == 12


def test_nonfinite_loss_stops_or_skips(tiny_data, tmp_path, capsys):
    # lr 1e30: the first SGD step sends the weights to ~1e29, the logits overflow, the loss is NaN
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at epoch 0, batch \d+, optimiser step \d+.*--skip-nonfinite"):
        train(tiny_cfg(tiny_data, tmp_path / "a", lr=1e30, momentum=0.0, val_split=""))
    rc = cli.main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "b"), "--lr", "1e30", "--momentum", "0",
                   "--val-split", "", *TINY])
    assert rc == 3 and "non-finite loss" in capsys.readouterr().err
    s = train(tiny_cfg(tiny_data, tmp_path / "c", lr=1e30, momentum=0.0, val_split="", skip_nonfinite=True))
    rows = read_csv(tmp_path / "c" / "metrics.csv")
    assert s["steps"] == 6 and s["skipped_nonfinite"] > 0
    assert int(rows[-1]["skipped"]) == s["skipped_nonfinite"]


def test_max_steps_then_resume_equals_uninterrupted(tiny_data, tmp_path):
    kw = dict(epochs=2, accum_steps=2, model_args={"conv1_t": 1, "dropout": 0.3}, val_split="", deterministic=True)
    train(tiny_cfg(tiny_data, tmp_path / "full", **kw))
    full = [float(r["loss"]) for r in read_csv(tmp_path / "full" / "metrics.csv")]
    assert len(full) == 6  # 6 batches per epoch, 2 per optimiser step, 2 epochs
    train(tiny_cfg(tiny_data, tmp_path / "part", max_steps=2, **kw))
    ck = load_checkpoint(str(tmp_path / "part" / "checkpoints" / "last.pt"))
    assert (ck["epoch"], ck["batch"], ck["step"]) == (0, 4, 2)
    train(tiny_cfg(tiny_data, tmp_path / "part", resume="auto", **kw))
    part = [float(r["loss"]) for r in read_csv(tmp_path / "part" / "metrics.csv")]
    np.testing.assert_allclose(part, full, rtol=0, atol=1e-6)


def test_kill_and_resume_gives_the_same_losses(tiny_data, tmp_path):
    """SIGKILL after step 5 (checkpoint at step 4, mid-epoch 1): the resumed run redoes step 5
    and continues; metrics.csv equals the uninterrupted run's."""
    args = ["--data", str(tiny_data), "--epochs", "2", "--ckpt-every", "4", "--deterministic", "--lr", "0.05",
            *TINY[:-2], "--set", "model_args={conv1_t: 1, dropout: 0.3}"]
    cfg_full = load_config(overrides=dict(data=str(tiny_data), out=str(tmp_path / "full"), epochs=2, ckpt_every=4,
                                          deterministic=True, lr=0.05, depth=18, width=8, frames=4, stride=2, crop=32,
                                          batch_size=2, num_workers=0, threads=1, progress=False, tensorboard=False,
                                          model_args={"conv1_t": 1, "dropout": 0.3}))
    train(cfg_full)
    env = sub_env()
    env["MMIT_FAULT_KILL_AT_STEP"] = "5"
    out = str(tmp_path / "killed")
    p = subprocess.run([sys.executable, "-m", "mmit_fast.train", "--out", out, *args], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert len(read_csv(os.path.join(out, "metrics.csv"))) == 5  # step 5 was logged, then lost
    ck = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
    assert (ck["epoch"], ck["batch"], ck["step"]) == (0, 4, 4)
    rc = cli.main(["train", "--out", out, "--resume", "auto", *args])
    assert rc == 0
    a, b = read_csv(tmp_path / "full" / "metrics.csv"), read_csv(os.path.join(out, "metrics.csv"))
    assert [int(r["step"]) for r in b] == list(range(1, 13))
    np.testing.assert_allclose([float(r["loss"]) for r in b], [float(r["loss"]) for r in a], rtol=0, atol=1e-6)
    va, vb = read_csv(tmp_path / "full" / "val_metrics.csv"), read_csv(os.path.join(out, "val_metrics.csv"))
    assert [(r["step"], r["micro_map"]) for r in va] == [(r["step"], r["micro_map"]) for r in vb]


# --------------------------------------------------------------------------- distributed
def _check_ddp_run(out, data, world):
    ranks = [json.load(open(os.path.join(out, "ranks", f"rank{r}.json"))) for r in range(world)]
    assert [r["world_size"] for r in ranks] == [world] * world
    assert len({r["param_digest"] for r in ranks}) == 1, "ranks ended with different parameters"
    keys = []
    for r in range(world):
        with open(os.path.join(out, "ranks", f"keys-rank{r}.tsv")) as f:
            keys.append([line.split("\t")[1].strip() for line in f if line.startswith("0\t")])
    assert all(keys) and not set(keys[0]) & set(keys[1]), "ranks saw overlapping samples"
    assert len(keys[0]) == len(keys[1]) == 6 and len(set(keys[0]) | set(keys[1])) == 12
    # distributed evaluation (gather + dedupe of the padded val split) == one process on the checkpoint
    val = read_csv(os.path.join(out, "val_metrics.csv"))[-1]
    m = __import__("mmit_fast.evaluate", fromlist=["x"]).evaluate_checkpoint(
        os.path.join(out, "checkpoints", "last.pt"), str(data), "val", out=os.path.join(out, "eval1"), progress=False,
        chance=False)
    assert int(float(val["num_videos"])) == m["num_videos"] == 5
    for k in ("top1", "top5", "micro_map", "macro_map"):
        assert float(val[k]) == pytest.approx(m[k], abs=1e-5), k


def test_torchrun_two_processes_gloo(tiny_data, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "mmit_fast.train", "--data", str(tiny_data), "--out", out,
           "--epochs", "1", "--record-keys", "--accum-steps", "2", *TINY]
    p = subprocess.run(cmd, env=sub_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert len(read_csv(os.path.join(out, "metrics.csv"))) == 2  # 6 batches per rank, 2 per step... 3 batches, accum 2
    _check_ddp_run(out, tiny_data, 2)


def test_torchrun_two_nodes_loopback(tiny_data, tmp_path):
    out = str(tmp_path / "nodes")
    port = free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=mmit-test",
               "-m", "mmit_fast.train", "--data", str(tiny_data), "--out", out, "--epochs", "1", "--record-keys", *TINY]
        procs.append(subprocess.Popen(cmd, env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    res = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, res):
        assert p.returncode == 0, o[-2000:] + e[-3000:]
    assert len(read_csv(os.path.join(out, "metrics.csv"))) == 3
    _check_ddp_run(out, tiny_data, 2)


# --------------------------------------------------------------------------- eval, finetune
def test_eval_writes_metrics_files(tiny_data, tmp_path, capsys):
    from sklearn.metrics import average_precision_score

    run = tmp_path / "run"
    train(tiny_cfg(tiny_data, run, epochs=1, val_split=""))
    ck = str(run / "checkpoints" / "last.pt")
    out = tmp_path / "eval"
    assert cli.main(["eval", ck, "--split", "val", "--split", "test", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| I3D-R18w8 | wLSEP |" in printed and "chance" in printed
    for split in ("val", "test"):
        m = json.load(open(out / f"{split}_metrics.json"))
        z = np.load(out / f"{split}_scores.npz")
        s, t = z["scores"], z["targets"]
        assert m["num_videos"] == len(s) == 5 and len(set(z["keys"].tolist())) == 5
        rows = read_csv(out / f"{split}_per_class_ap.csv")
        for r in rows:
            c = int(r["class_id"])
            assert int(r["positives"]) == int(t[:, c].sum())
            if t[:, c].sum() > 0:
                assert float(r["ap"]) == pytest.approx(average_precision_score(t[:, c], s[:, c]), abs=1e-5)
        has = t.sum(1) > 0
        assert m["micro_map"] == pytest.approx(average_precision_score(t[has].T, s[has].T, average="macro"), abs=1e-5)
        table = (out / f"{split}_table.md").read_text()
        assert table.splitlines()[0].startswith("| model | loss | top-1")
    # Table 2: a class subset, single-label ground truth, and multi-view scores
    classes = load_checkpoint(ck)["classes"]
    (tmp_path / "subset.txt").write_text("\n".join(classes[:12]) + "\n")
    assert cli.main(["eval", ck, "--split", "val", "--out", str(out), "--classes", str(tmp_path / "subset.txt"),
                     "--single-label", "--views", "2", "--no-progress"]) == 0
    assert (out / "val-subset-subset-single-2views_metrics.json").exists()
    (tmp_path / "bad.txt").write_text("no_such_class\n")
    capsys.readouterr()
    assert cli.main(["eval", ck, "--out", str(out), "--classes", str(tmp_path / "bad.txt"), "--no-progress"]) == 2
    assert re.search(r"bad.txt:1: 'no_such_class' is not a class", capsys.readouterr().err)


def test_finetune_replaces_classifier_and_trains(tiny_data, tmp_path):
    from mmit_fast.shards import load_manifest

    src = tmp_path / "src"
    train(tiny_cfg(tiny_data, src, epochs=1, val_split=""))
    # "another dataset": the same shards under a larger vocabulary (2 new classes without videos)
    other = tmp_path / "other"
    other.mkdir()
    man = load_manifest(str(tiny_data))
    for sh in man.shards:
        for rel in (sh.path, sh.index):
            os.symlink(os.path.join(str(tiny_data), rel), other / rel)
    man.classes = list(man.classes) + ["new_a", "new_b"]
    for sp in man.splits.values():
        sp["class_counts"] = list(sp["class_counts"]) + [0, 0]
    man.save(str(other / "manifest.json"))

    ck_src = load_checkpoint(str(src / "checkpoints" / "last.pt"))
    out = tmp_path / "ft"
    rc = cli.main(["finetune", "--from", str(src / "checkpoints" / "last.pt"), "--data", str(other), "--out", str(out),
                   "--epochs", "1", "--freeze-backbone", "--lr", "0.5", "--weight-decay", "0", *TINY])
    assert rc == 0
    ck = load_checkpoint(str(out / "checkpoints" / "last.pt"))
    assert ck["model"]["classifier.weight"].shape[0] == len(man.classes) == ck["model_spec"]["num_classes"]
    assert ck["classes"][-2:] == ["new_a", "new_b"]
    params = [k for k in ck_src["model"] if not k.startswith("classifier.") and "running_" not in k
              and "num_batches" not in k]
    assert params and all(torch.equal(ck["model"][k], ck_src["model"][k]) for k in params)  # frozen backbone
    assert not torch.equal(ck["model"]["classifier.weight"][:-2], ck_src["model"]["classifier.weight"])
    # full fine-tuning (the source run's settings, no model flags) moves the backbone too
    rc = cli.main(["finetune", "--from", str(src / "checkpoints" / "last.pt"), "--data", str(other), "--out",
                   str(tmp_path / "ft2"), "--epochs", "1", "--val-split", ""])
    ck2 = load_checkpoint(str(tmp_path / "ft2" / "checkpoints" / "last.pt"))
    assert rc == 0 and not all(torch.equal(ck2["model"][k], ck_src["model"][k]) for k in params)
    assert ck2["model_spec"]["kwargs"]["width"] == 8 and ck2["config"]["frames"] == 4 and ck2["config"]["threads"] == 1
    assert cli.main(["finetune", "--from", str(tmp_path / "nope.pt"), "--data", str(other)]) == 4
