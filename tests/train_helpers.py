"""Shared by the training tests: one tiny packed synthetic dataset per test session, tiny
configs, CSV reading, a planted pickle, and the 2-process gloo worker used with mp.spawn."""
import atexit
import csv
import os
import shutil
import socket
import tempfile

import torch

from mmit_fast.config import TrainConfig

TINY = ["--depth", "18", "--width", "8", "--frames", "4", "--stride", "2", "--crop", "32", "--batch-size", "2",
        "--num-workers", "0", "--threads", "1", "--no-progress", "--no-tensorboard", "--set", "model_args={conv1_t: 1}"]

_DATA = {}


def tiny_dataset() -> str:
    """22 videos (12 train, 5 val, 5 test; odd val: a 2-rank evaluation pads one sample),
    generated once per process and removed at exit."""
    if "path" not in _DATA:
        from mmit_fast.pack.synth import generate_dataset

        d = tempfile.mkdtemp(prefix="mmit-train-tests-")
        atexit.register(shutil.rmtree, d, True)
        generate_dataset(d, num_videos=22, size=64, seconds=1.0, splits=(0.5, 0.25, 0.25), progress=False, workers=1)
        _DATA["path"] = d
    return _DATA["path"]


def tiny_cfg(data, out, **kw) -> TrainConfig:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Planted:
    """Unpickling this runs ``touch MARKER`` (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_checkpoint(path, marker, like=None):
    """A checkpoint-looking file whose unpickling would run a command: a real checkpoint
    (``like``, a dict) with one extra planted object, or a minimal mmit-looking dict."""
    state = dict(like) if like is not None else {"format": "mmit-checkpoint", "version": 2}
    state["config_extra"] = Planted(marker)
    torch.save(state, str(path))
    return str(path)


# ----------------------------------------------------------------------------- mp.spawn worker
class NaNAt(torch.nn.Module):
    """A criterion returning NaN on the given (rank, call) micro-batches (calls 0-based)."""

    def __init__(self, inner, rank, bad):
        super().__init__()
        self.inner, self.rank, self.bad, self.calls = inner, rank, set(bad), 0

    def forward(self, logits, targets):
        loss = self.inner(logits, targets)
        if (self.rank, self.calls) in self.bad:
            loss = loss * float("nan")
        self.calls += 1
        return loss


def patch_nan_criterion(bad):
    """Make training's criterion return NaN at ``bad`` = {(rank, call), ...}."""
    from mmit_fast.train import setup

    orig = setup.make_criterion

    def make(cfg, manifest, split, device):
        return NaNAt(orig(cfg, manifest, split, device), int(os.environ.get("RANK", 0)), bad)

    setup.make_criterion = make


def ddp_worker(rank, world, port, cfg_dict, bad, eval_out, ckpt):
    """One rank: train ``cfg_dict`` (criterion NaN at ``bad``), then evaluate ``ckpt`` on val."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import warnings

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    from mmit_fast.evaluate import evaluate_checkpoint
    from mmit_fast.train import train

    if cfg_dict is not None:
        patch_nan_criterion({tuple(b) for b in bad})
        train(TrainConfig(**cfg_dict))
    if eval_out is not None:
        os.environ["MASTER_PORT"] = str(port + 1)
        evaluate_checkpoint(ckpt, None, "val", out=eval_out, progress=False, num_workers=0)


def patch_forward(monkeypatch, hook):
    """Call ``hook(call, model, batch)`` before every training forward pass (calls 0-based,
    evaluation not included); the hook may change the batch or look at the model."""
    from mmit_fast.train import step

    orig, calls = step.forward, [0]

    def forward(model, batch, modality):
        hook(calls[0], model, batch)
        calls[0] += 1
        return orig(model, batch, modality)

    monkeypatch.setattr(step, "forward", forward)


def state_copy(model):
    """Every tensor of the model's state (parameters and buffers), copied."""
    from mmit_fast.inference import unwrap

    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
