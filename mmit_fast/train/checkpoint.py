"""Writing training checkpoints, and reading the one to resume from.

A checkpoint is data: tensors and plain containers only, so that
:func:`mmit_fast.models.checkpoint.read_checkpoint` (``torch.load(weights_only=True)``, no
fallback) reads it. Keys: ``format``, ``version``, ``model_spec``, ``classes``, ``modality``,
``model``, ``config`` (plain dict), ``loss_weights`` (the class-weight scheme the loss used:
``class_weights: auto`` resolved, so that a later change of the default is seen), ``preprocess`` (frames, crop, mean/std, sampling...), and the
training state: ``optimizer``, ``scaler``, ``schedule`` (plain dict, see :mod:`.schedule`),
``epoch`` and ``batch`` (the loader position to continue from), ``step``, ``world_size``,
``rng`` (per rank, tensors: :mod:`.rng`), ``best``, ``skipped``, ``last_val``, ``csv_rows``
(rows of metrics.csv / val_metrics.csv this state had written) and ``dataset`` (the fingerprint
a resume compares). Written atomically (temp file, fsync, rename, fsync of the folder).

Never a non-finite tensor: before a checkpoint is written every floating-point tensor of the
model (parameters and buffers) and of the optimiser state is checked (one host sync per
checkpoint); a NaN or infinite value anywhere refuses the write with
:class:`NonFiniteStateError`, naming the tensor, and the previous checkpoint stays.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from .._io import atomic_path
from ..models.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointError, read_checkpoint

TRAINING_KEYS = ("optimizer", "epoch", "batch", "step", "schedule")


class NonFiniteStateError(RuntimeError):
    """A tensor of the training state holds NaN or inf at checkpoint time: nothing is written."""


def _state_tensors(run) -> Iterator[Tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the model's state and the optimiser's per-parameter state."""
    from ..inference import unwrap

    model = unwrap(run.model)
    for k, v in model.state_dict().items():
        yield f"model {k}", v
    names = {id(p): n for n, p in model.named_parameters()}
    for g in run.optimizer.param_groups:
        for p in g["params"]:
            for k, v in run.optimizer.state.get(p, {}).items():
                if torch.is_tensor(v):
                    yield f"optimizer {k} of {names.get(id(p), '?')}", v


def nonfinite_state(run) -> Optional[str]:
    """``'model bn1.running_var holds NaN or inf (1 of 8 values)'``: the first floating-point tensor of the
    state that holds a NaN or inf, or None (one host sync for all of them)."""
    items = [(n, t.detach()) for n, t in _state_tensors(run) if t.is_floating_point() and t.numel()]
    if not items:
        return None
    finite = torch.stack([torch.isfinite(t).all().to(run.device) for _, t in items]).tolist()
    for (name, t), ok in zip(items, finite):
        if not ok:
            return f"{name} holds NaN or inf ({int((~torch.isfinite(t)).sum())} of {t.numel()} values)"
    return None


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """``torch.save`` to a temporary file next to ``path``, fsync, rename (atomic)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def checkpoint_state(run, next_epoch: int, next_batch: int, rngs) -> Dict[str, Any]:
    """The checkpoint dict of a :class:`~mmit_fast.train.loop.Run` at a loader position."""
    from ..inference import unwrap

    log = run.log
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model_spec": run.spec, "classes": list(run.manifest.classes), "modality": run.modality,
        "model": unwrap(run.model).state_dict(), "config": run.cfg.to_dict(),
        "loss_weights": run.cfg.weight_scheme(), "preprocess": run.preprocess,
        "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict() if run.scaler else None,
        "schedule": run.schedule.to_dict(), "epoch": int(next_epoch), "batch": int(next_batch), "step": int(run.step),
        "world_size": int(run.world), "rng": rngs, "best": dict(run.best), "skipped": int(run.skipped),
        "last_val": run.last_val, "csv_rows": {"train": log.train_rows, "val": log.val_rows},
        "dataset": run.fingerprint, "time": time.time(),
    }


def read_training_checkpoint(path: str) -> Dict[str, Any]:
    """A checkpoint to resume from: read safely, and it must carry the training state."""
    ck = read_checkpoint(path)
    missing = [k for k in TRAINING_KEYS if k not in ck]
    if missing:
        raise CheckpointError(f"{os.fspath(path)}: no training state ({', '.join(missing)} missing; a released or "
                              "exported model?): it cannot be resumed; start a run from it with mmit finetune --from")
    return ck
