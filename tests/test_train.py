"""Training, evaluation and fine-tuning end to end on a tiny packed synthetic dataset.

Oracles: a single-process evaluation of the saved checkpoint for the distributed one
(gather + de-duplication), an uninterrupted run for a killed-and-resumed one (losses equal to
1e-6), scikit-learn's average precision for the per-class AP file, the cosine formula for the
logged learning rates, the source checkpoint for a frozen fine-tuned backbone, torch's
``clip_grad_norm_`` for the logged gradient norm, the losses module for the criterion.
"""
import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmit_fast import cli
from mmit_fast.config import CONFIG_DIR, ConfigError, TrainConfig, load_config, resolve_config, shipped_configs
from mmit_fast.models.checkpoint import read_checkpoint
from mmit_fast.train import NonFiniteLossError, train
from train_helpers import TINY, free_port, read_csv, sub_env, tiny_cfg, tiny_dataset


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_dataset()


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


def test_shipped_configs_load_and_name_no_missing_files():
    from mmit_fast.demo import DEMO_CONFIG

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("demo_cpu.yaml", "i3d_demo_cpu.yaml"):
        cfg = load_config(os.path.join(CONFIG_DIR, name))
        for k, v in DEMO_CONFIG.items():
            assert getattr(cfg, k) == v, (name, k)
    models = set()
    for name in sorted(os.listdir(CONFIG_DIR)):
        path = os.path.join(CONFIG_DIR, name)
        models.add(load_config(path).model)
        for ref in re.findall(r"\b((?:docs|configs|benchmarks)/[\w./-]+\.\w+)", open(path).read()):
            ok = os.path.exists(os.path.join(here, ref)) or (ref.startswith("configs/") and resolve_config(ref))
            assert ok, f"{name} names {ref}, which does not exist"
    assert {"i3d", "tsm", "soundnet", "fusion"} <= models


def test_config_by_name_from_any_folder(tmp_path, monkeypatch):
    """--config takes a shipped config's name (the documented commands work outside the clone);
    the old clone-relative path still works; a file the user has wins; a wrong name lists the names."""
    monkeypatch.chdir(tmp_path)
    want = os.path.join(CONFIG_DIR, "demo_cpu.yaml")
    assert "demo_cpu" in shipped_configs()
    for given in ("demo_cpu", "demo_cpu.yaml", "configs/demo_cpu.yaml", "./configs/demo_cpu.yaml"):
        assert resolve_config(given) == want
    assert load_config("demo_cpu").to_dict() == load_config(want).to_dict()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo_cpu.yaml").write_text("epochs: 1\n")
    assert resolve_config("configs/demo_cpu.yaml") == "configs/demo_cpu.yaml"
    assert load_config("configs/demo_cpu.yaml").epochs == 1
    with pytest.raises(ConfigError, match=r"config 'demo_gpu': no such file, and not a shipped config \(names: .*demo_cpu"):
        resolve_config("demo_gpu")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_config("elsewhere/demo_cpu.yaml")


# --------------------------------------------------------------------------- losses (paper's Table 1 rows)
def test_loss_flag_means_the_papers_form(tiny_data):
    """--loss lsep|warp|bce are the plain eqs. 1-3; wlsep is weighted (eq. 4); weighted variants by name."""
    from mmit_fast.losses import class_weights
    from mmit_fast.shards import load_manifest
    from mmit_fast.recipes import make_criterion

    man = load_manifest(tiny_data)
    w = torch.as_tensor(np.asarray(class_weights(man.class_counts("train"), scheme="min_ratio")), dtype=torch.float32)
    dev = torch.device("cpu")
    for loss in ("bce", "warp", "lsep"):
        assert make_criterion(tiny_cfg(tiny_data, "x", loss=loss), man, "train", dev).weights is None, loss
        c = make_criterion(tiny_cfg(tiny_data, "x", loss=loss, class_weights="min_ratio"), man, "train", dev)
        torch.testing.assert_close(c.weights, w)
    from mmit_fast.losses.weights import DEFAULT_WLSEP_SCHEME

    auto = make_criterion(tiny_cfg(tiny_data, "x"), man, "train", dev).weights   # --loss wlsep, class_weights: auto
    torch.testing.assert_close(auto, class_weights(man.class_counts("train"), DEFAULT_WLSEP_SCHEME))
    assert make_criterion(tiny_cfg(tiny_data, "x", class_weights="none"), man, "train", dev).weights is None
    for spec in ("tempered", "tempered:0.25", "effective_number", "effective_number:0.99"):   # a scheme with its parameter
        c = make_criterion(tiny_cfg(tiny_data, "x", class_weights=spec), man, "train", dev)
        torch.testing.assert_close(c.weights, class_weights(man.class_counts("train"), spec))
    for bad, msg in (("inverse", "unknown scheme 'inverse'"), ("min_ratio:2", "takes no parameter"),
                     ("tempered:x", "not a number")):
        with pytest.raises(ConfigError, match=msg):
            tiny_cfg(tiny_data, "x", class_weights=bad)
    c = make_criterion(tiny_cfg(tiny_data, "x", loss_normalize="pair"), man, "train", dev)
    assert c.normalize == "pair"
    from mmit_fast.evaluate import loss_label  # the table rows say which variant was trained

    label = lambda **c: loss_label({"config": c})  # noqa: E731
    assert (label(loss="lsep", class_weights="auto"), label(loss="wlsep", class_weights="auto")) == ("LSEP", "wLSEP")
    assert label(loss="lsep", class_weights="min_ratio") == "LSEP (min_ratio weights)"
    assert label(loss="wlsep", class_weights="none") == "wLSEP (no weights)"


def test_pair_normalisation_other_losses_is_a_config_error(tiny_data, tmp_path, capsys):
    for loss in ("lsep", "warp", "bce"):
        with pytest.raises(ConfigError, match=f"loss_normalize='pair' applies to loss=wlsep only.*loss='{loss}'"):
            tiny_cfg(tiny_data, tmp_path, loss=loss, loss_normalize="pair")
    rc = cli.main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--loss", "lsep",
                   "--loss-normalize", "pair", *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "applies to loss=wlsep only" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- single process
def test_train_logs_schedule_and_checkpoints(tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_data, out, epochs=2, warmup_steps=2, lr=0.05, min_lr=0.001, tensorboard=True, ckpt_every=4)
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
    ck = read_checkpoint(str(out / "checkpoints" / "last.pt"))  # weights_only=True
    assert (ck["epoch"], ck["batch"], ck["step"]) == (2, 0, 12)
    assert ck["model_spec"]["name"] == "i3d" and len(ck["classes"]) == ck["model_spec"]["num_classes"]
    assert ck["version"] == 2 and isinstance(ck["config"], dict) and ck["config"]["loss"] == "wlsep"
    pre = ck["preprocess"]
    assert (pre["frames"], pre["crop"], pre["stride"], pre["sampling"]) == (4, 32, 2, "consecutive")
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert isinstance(ck["rng"][0]["numpy"]["state"], torch.Tensor) and ck["rng"][0]["numpy"]["state"].numel() == 624
    best = read_checkpoint(str(out / "checkpoints" / "best.pt"))
    vals = [float(r["micro_map"]) for r in val]
    assert best["best"]["value"] == pytest.approx(max(vals)) and best["step"] == 6 * (1 + int(np.argmax(vals)))
    assert any(f.startswith("events.") for f in os.listdir(out / "tb"))
    assert s["steps"] == 12 and json.load(open(out / "summary.json"))["steps"] == 12


def test_grad_norm_logged_on_every_row_without_clipping(tiny_data, tmp_path):
    """grad_norm is logged with clipping off; a clip threshold never reached logs the same values
    (torch's clip_grad_norm_ as the oracle) and trains identically."""
    train(tiny_cfg(tiny_data, tmp_path / "a", val_split="", deterministic=True))
    train(tiny_cfg(tiny_data, tmp_path / "b", val_split="", deterministic=True, grad_clip=1e30))
    a, b = read_csv(tmp_path / "a" / "metrics.csv"), read_csv(tmp_path / "b" / "metrics.csv")
    ga, gb = [float(r["grad_norm"]) for r in a], [float(r["grad_norm"]) for r in b]
    assert len(ga) == 6 and all(np.isfinite(ga)) and all(g > 0 for g in ga)
    np.testing.assert_allclose(ga, gb, rtol=1e-5)
    np.testing.assert_allclose([float(r["loss"]) for r in a], [float(r["loss"]) for r in b], rtol=1e-6)


def test_one_line_per_epoch_without_a_terminal(tiny_data, tmp_path, capsys):
    """stdout is not a TTY here (captured): no bar, no carriage return, one line per epoch."""
    train(tiny_cfg(tiny_data, tmp_path / "r", epochs=2, progress=True))
    cap = capsys.readouterr()
    assert "\r" not in cap.out and "\r" not in cap.err
    lines = [l for l in cap.out.splitlines() if l.startswith("[mmit train] epoch")]
    assert len(lines) == 2
    val = read_csv(tmp_path / "r" / "val_metrics.csv")
    for line, v in zip(lines, val):
        assert re.match(r"\[mmit train\] epoch \d step \d+: train loss \d+\.\d{4}, lr [\d.e-]+, [\d.]+ clips/s; val "
                        r"top1 [\d.]+, top5 [\d.]+, micro_map [\d.]+, macro_map [\d.]+$", line), line
        assert f"micro_map {float(v['micro_map']):.4f}" in line


def test_nonfinite_loss_stops_or_skips(tiny_data, tmp_path, capsys):
    # lr 1e30: the first SGD step sends the weights to ~1e29, the logits overflow, the loss is NaN
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* first at optimiser step \d+ \(epoch 0.*--skip-nonfinite"):
        train(tiny_cfg(tiny_data, tmp_path / "a", lr=1e30, momentum=0.0, val_split=""))
    assert not os.path.exists(tmp_path / "a" / "checkpoints" / "last.pt")  # never a non-finite checkpoint
    rc = cli.main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "b"), "--lr", "1e30", "--momentum", "0",
                   "--val-split", "", *TINY])
    err = capsys.readouterr().err
    assert rc == 1 and "non-finite loss" in err and len(err.strip().splitlines()) == 1
    s = train(tiny_cfg(tiny_data, tmp_path / "c", lr=1e30, momentum=0.0, val_split="", skip_nonfinite=True))
    rows = read_csv(tmp_path / "c" / "metrics.csv")
    assert s["steps"] == 6 and s["skipped_nonfinite"] > 0
    assert int(rows[-1]["skipped"]) == s["skipped_nonfinite"]


def test_skipped_micro_batch_divides_by_the_used_ones(tiny_data, tmp_path):
    """accum 2 with the 2nd micro-batch of step 1 non-finite: the update is the 1st micro-batch's
    gradient alone (divided by 1, not 2) = step 1 of an accum-1 run."""
    from train_helpers import patch_nan_criterion
    from mmit_fast.train import setup

    orig = setup.make_criterion
    kw = dict(val_split="", max_steps=1, momentum=0.0, weight_decay=0.0, skip_nonfinite=True, deterministic=True)
    try:
        patch_nan_criterion({(0, 1)})
        train(tiny_cfg(tiny_data, tmp_path / "a", accum_steps=2, **kw))
    finally:
        setup.make_criterion = orig
    train(tiny_cfg(tiny_data, tmp_path / "b", accum_steps=1, **kw))
    a = read_checkpoint(str(tmp_path / "a" / "checkpoints" / "last.pt"))
    b = read_checkpoint(str(tmp_path / "b" / "checkpoints" / "last.pt"))
    assert a["skipped"] == 1
    names = [k for k, v in a["model"].items() if v.is_floating_point() and "running_" not in k]
    for k in names:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)


def test_max_steps_then_resume_equals_uninterrupted(tiny_data, tmp_path):
    kw = dict(epochs=2, accum_steps=2, model_args={"conv1_t": 1, "dropout": 0.3}, val_split="", deterministic=True)
    train(tiny_cfg(tiny_data, tmp_path / "full", **kw))
    full = [float(r["loss"]) for r in read_csv(tmp_path / "full" / "metrics.csv")]
    assert len(full) == 6  # 6 batches per epoch, 2 per optimiser step, 2 epochs
    train(tiny_cfg(tiny_data, tmp_path / "part", max_steps=2, **kw))
    ck = read_checkpoint(str(tmp_path / "part" / "checkpoints" / "last.pt"))
    assert (ck["epoch"], ck["batch"], ck["step"]) == (0, 4, 2)
    train(tiny_cfg(tiny_data, tmp_path / "part", resume="auto", **kw))
    part = [float(r["loss"]) for r in read_csv(tmp_path / "part" / "metrics.csv")]
    np.testing.assert_allclose(part, full, rtol=0, atol=1e-6)


def test_kill_and_resume_gives_the_same_losses(tiny_data, tmp_path):
    """SIGKILL after step 5 (checkpoint at step 4, mid-epoch 1): the resumed run redoes step 5
    and continues; metrics.csv equals the uninterrupted run's."""
    args = ["--data", str(tiny_data), "--epochs", "2", "--ckpt-every", "4", "--deterministic", "--lr", "0.05",
            *TINY[:-2], "--set", "model_args={conv1_t: 1, dropout: 0.3}"]
    train(tiny_cfg(tiny_data, tmp_path / "full", epochs=2, ckpt_every=4, deterministic=True,
                   model_args={"conv1_t": 1, "dropout": 0.3}))
    env = sub_env()
    env["MMIT_FAULT_KILL_AT_STEP"] = "5"
    out = str(tmp_path / "killed")
    p = subprocess.run([sys.executable, "-m", "mmit_fast.train", "--out", out, *args], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert len(read_csv(os.path.join(out, "metrics.csv"))) == 5  # step 5 was logged, then lost
    ck = read_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
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
    from mmit_fast.evaluate import evaluate_checkpoint

    val = read_csv(os.path.join(out, "val_metrics.csv"))[-1]
    m = evaluate_checkpoint(os.path.join(out, "checkpoints", "last.pt"), str(data), "val",
                            out=os.path.join(out, "eval1"), progress=False, chance=False)
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
    assert len(read_csv(os.path.join(out, "metrics.csv"))) == 2  # 3 batches per rank, 2 per step
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
    from mmit_fast.losses.weights import DEFAULT_WLSEP_SCHEME   # the row names the weights the run recorded

    assert f"| I3D-R18w8 | wLSEP ({DEFAULT_WLSEP_SCHEME} weights) |" in printed and "chance" in printed
    classes = read_checkpoint(ck)["classes"]
    for split in ("val", "test"):
        m = json.load(open(out / f"{split}_metrics.json"))
        z = np.load(out / f"{split}_scores.npz")
        s, t = z["scores"], z["targets"]
        assert m["num_videos"] == len(s) == 5 and len(set(z["keys"].tolist())) == 5
        assert z["classes"].tolist() == classes and s.shape[1] == len(classes)
        assert z["keys"].tolist() == sorted(z["keys"].tolist())
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
    (tmp_path / "subset.txt").write_text("\n".join(classes[:12]) + "\n")
    assert cli.main(["eval", ck, "--split", "val", "--out", str(out), "--classes", str(tmp_path / "subset.txt"),
                     "--single-label", "--views", "2", "--no-progress"]) == 0
    assert (out / "val-subset-subset-single-2views_metrics.json").exists()
    (tmp_path / "bad.txt").write_text("no_such_class\n")
    capsys.readouterr()
    assert cli.main(["eval", ck, "--out", str(out), "--classes", str(tmp_path / "bad.txt"), "--no-progress"]) == 2
    assert re.search(r"bad.txt:1: 'no_such_class' is not a class", capsys.readouterr().err)


def _bare_checkpoint(src, dst):
    """What a released/imported model looks like: no config, no training state."""
    ck = read_checkpoint(src)
    bare = {k: ck[k] for k in ("format", "version", "model_spec", "classes", "modality", "model", "preprocess")}
    torch.save(bare, dst)
    return dst


def test_eval_and_finetune_accept_a_checkpoint_without_training_state(tiny_data, tmp_path, capsys):
    src = tmp_path / "src"
    train(tiny_cfg(tiny_data, src, epochs=1, val_split=""))
    bare = _bare_checkpoint(str(src / "checkpoints" / "last.pt"), str(tmp_path / "bare.pt"))
    assert cli.main(["eval", bare, "--data", str(tiny_data), "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    full = json.load(open(src / "eval" / "val_metrics.json")) if (src / "eval").exists() else None
    m = json.load(open(tmp_path / "e" / "val_metrics.json"))
    assert m["num_videos"] == 5 and full is None
    cli.main(["eval", str(src / "checkpoints" / "last.pt"), "--out", str(tmp_path / "e2"), "--no-progress"])
    assert json.load(open(tmp_path / "e2" / "val_metrics.json"))["micro_map"] == pytest.approx(m["micro_map"])
    assert cli.main(["eval", bare, "--out", str(tmp_path / "e3"), "--no-progress"]) == 2
    assert "records no training dataset" in capsys.readouterr().err
    # without --out: a run's checkpoint writes <run>/eval; any other file a folder named after it,
    # beside it (never the folder above its own: models/x.pt once wrote ./eval)
    os.makedirs(tmp_path / "models")
    os.replace(bare, tmp_path / "models" / "bare.pt")
    assert cli.main(["eval", str(tmp_path / "models" / "bare.pt"), "--data", str(tiny_data), "--no-progress"]) == 0
    assert json.load(open(tmp_path / "models" / "bare-eval" / "val_metrics.json"))["micro_map"] == pytest.approx(m["micro_map"])
    assert not (tmp_path / "eval").exists()
    bare = str(tmp_path / "models" / "bare.pt")
    rc = cli.main(["finetune", "--from", bare, "--data", str(tiny_data), "--out", str(tmp_path / "ft"), "--epochs", "1",
                   "--val-split", "", *TINY])
    assert rc == 0
    ck = read_checkpoint(str(tmp_path / "ft" / "checkpoints" / "last.pt"))
    assert ck["config"]["frames"] == 4 and ck["config"]["crop"] == 32
    capsys.readouterr()
    assert cli.main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--resume", bare, *TINY]) == 2
    assert "no training state" in capsys.readouterr().err


def test_finetune_replaces_classifier_and_trains(tiny_data, tmp_path, capsys):
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

    ck_src = read_checkpoint(str(src / "checkpoints" / "last.pt"))
    out = tmp_path / "ft"
    rc = cli.main(["finetune", "--from", str(src / "checkpoints" / "last.pt"), "--data", str(other), "--out", str(out),
                   "--epochs", "1", "--freeze-backbone", "--lr", "0.5", "--weight-decay", "0", *TINY])
    assert rc == 0
    ck = read_checkpoint(str(out / "checkpoints" / "last.pt"))
    assert ck["model"]["classifier.weight"].shape[0] == len(man.classes) == ck["model_spec"]["num_classes"]
    assert ck["classes"][-2:] == ["new_a", "new_b"]
    params = [k for k in ck_src["model"] if not k.startswith("classifier.") and "running_" not in k
              and "num_batches" not in k]
    assert params and all(torch.equal(ck["model"][k], ck_src["model"][k]) for k in params)  # frozen backbone
    assert not torch.equal(ck["model"]["classifier.weight"][:-2], ck_src["model"]["classifier.weight"])
    # full fine-tuning (the source run's settings, no model flags) moves the backbone too
    rc = cli.main(["finetune", "--from", str(src / "checkpoints" / "last.pt"), "--data", str(other), "--out",
                   str(tmp_path / "ft2"), "--epochs", "1", "--val-split", ""])
    ck2 = read_checkpoint(str(tmp_path / "ft2" / "checkpoints" / "last.pt"))
    assert rc == 0 and not all(torch.equal(ck2["model"][k], ck_src["model"][k]) for k in params)
    assert ck2["model_spec"]["kwargs"]["width"] == 8 and ck2["config"]["frames"] == 4 and ck2["config"]["threads"] == 1
    capsys.readouterr()
    assert cli.main(["finetune", "--from", str(tmp_path / "nope.pt"), "--data", str(other)]) == 2
    assert "nope.pt" in capsys.readouterr().err


# --------------------------------------------------------------------------- exit codes
def test_exit_code_convention(monkeypatch, capsys):
    """0 success, 2 bad input/usage (ValueError family, SystemExit with a message), 1 anything else."""
    from mmit_fast._exits import run_verb

    p = cli.build_parser()
    a = p.parse_args(["eval", "x.pt"])

    def boom(exc):
        def f(args):
            raise exc
        return f

    for exc, rc in ((ValueError("bad value in f.csv"), 2), (FileNotFoundError("f.pt: no such file"), 2),
                    (SystemExit("mmit eval: bad flag"), 2), (RuntimeError("worker died\nmore"), 1),
                    (NonFiniteLossError("non-finite loss"), 1)):
        a.func = boom(exc)
        assert run_verb(a.verb, a.func, a) == rc, exc
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
    a.func = lambda args: 0
    assert run_verb(a.verb, a.func, a) == 0
    monkeypatch.setenv("MMIT_DEBUG", "1")
    a.func = boom(RuntimeError("x"))
    with pytest.raises(RuntimeError):
        run_verb(a.verb, a.func, a)


@pytest.mark.parametrize("family", ["tsm", "soundnet", "fusion"])
def test_family_config_trains_on_the_synthetic_data(family, tiny_data, tmp_path):
    """the shipped <family>_demo_cpu config (demo_cpu.yaml is I3D) trains and evaluates; sizes shrunk."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(f"{family}_demo_cpu",
                      overrides=dict(data=str(tiny_data), out=str(tmp_path / family), max_steps=2, batch_size=2,
                                     num_workers=0, threads=1, crop=32, frames=4, progress=False, tensorboard=False))
    if family != "soundnet":
        cfg.width = 8
    s = train(cfg)
    ck = read_checkpoint(str(tmp_path / family / "checkpoints" / "last.pt"))
    assert s["steps"] == 2 and ck["model_spec"]["name"] == family and s["last_val"]["num_videos"] == 5
    assert ck["modality"] == {"tsm": "video", "soundnet": "audio", "fusion": "audio-video"}[family]


def test_damaged_training_sample_is_named_in_the_epoch_line(tiny_data, tmp_path, capsys):
    """Bytes overwritten inside one training video (tar still valid): the sample is skipped by
    its digest, and the epoch's log line counts it and names its key, shard and member."""
    import shutil
    import tarfile

    from mmit_fast import shards as S

    ds = tmp_path / "ds"
    shutil.copytree(tiny_data, ds)
    tar = S.load_manifest(str(ds)).shard_paths("train")[0]
    with tarfile.open(tar) as tf:
        ti = next(t for t in tf if t.name.endswith(".mp4"))
    key = ti.name.split(".", 1)[0]
    with open(tar, "r+b") as f:
        f.seek(ti.offset_data + ti.size // 2)
        f.write(b"\x00" * 64)
    train(tiny_cfg(str(ds), tmp_path / "r", epochs=1))
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[mmit train] epoch")]
    assert len(lines) == 1
    assert f"; 1 damaged sample(s) skipped (first: {key} in {tar}: " in lines[0], lines[0]
    assert "member .mp4 is damaged" in lines[0]
