"""The learning-rate schedule and the optimiser.

Per optimiser step ``s`` (0-based) the learning rate is ``lr * f(s)``:

* warm-up, ``s < warmup``: ``f(s) = (s + 1) / warmup``;
* cosine: ``f(s) = r + (f0 - r) * (1 + cos(pi * p)) / 2`` with ``r = min_lr / lr``,
  ``p = clamp((s - s0) / (total - s0), 0, 1)``; a fresh run has ``s0 = warmup``, ``f0 = 1``;
* ``constant``: ``f(s) = f0``.

A resume that is allowed to change the schedule's length (``--resume-allow epochs``) re-anchors
the cosine at the resume step: ``s0`` = that step and ``f0`` = the factor the old schedule had
there, so the learning rate is continuous (an allowed change of ``lr`` itself scales the curve) and decays from where it was to ``min_lr`` over the
new remaining steps (a finished run extended this way continues at ``min_lr``). The schedule is
stored in the checkpoint as a plain dict; anchors chain over several such resumes.

A resume *during the warm-up* that changes its length in steps (``world_size``,
``batch_size``, ``accum_steps``: other steps per epoch; ``warmup_steps``/``warmup_epochs``)
continues the warm-up by fraction: after ``s_w`` steps the old warm-up had reached
``f_w = f(s_w - 1)`` (the fraction of it seen: ``s_w / W`` for a fresh one), and each new step
adds ``1 / W'``, with ``W'`` the new configuration's warm-up length in its own steps:
``f(s) = min(1, f_w + (s - s_w + 1) / W')`` up to the warm-up's new end
``E = s_w + ceil((1 - f_w) W')``, then the cosine from ``E`` (``s0 = E``, ``f0 = 1``). With the
warm-up given in epochs this is exactly the fraction of the warm-up's samples seen (``W b =
W' b'`` for ``b`` samples per step), so the learning rate keeps rising from where it was.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn as nn


@dataclass
class Schedule:
    lr: float
    min_lr: float
    kind: str            # cosine | constant
    warmup: int          # the step the warm-up ends at (its length for a fresh run)
    total: int           # optimiser steps of the whole run
    anchor_step: int = -1      # s0 of a re-anchored cosine (-1: the warm-up end)
    anchor_factor: float = 1.0  # f0
    warmup_anchor_step: int = -1       # s_w of a warm-up continued after a resume (-1: none)
    warmup_anchor_factor: float = 0.0  # f_w
    warmup_length: int = 0             # W': the warm-up length of the resumed configuration

    def factor(self, step: int) -> float:
        if step < self.warmup and self.anchor_step < 0:
            if self.warmup_anchor_step >= 0:
                return min(1.0, self.warmup_anchor_factor + (step - self.warmup_anchor_step + 1) / self.warmup_length)
            return (step + 1) / self.warmup
        s0 = self.anchor_step if self.anchor_step >= 0 else self.warmup
        if self.kind == "constant":
            return self.anchor_factor
        floor = self.min_lr / self.lr
        p = min(1.0, max(0.0, (step - s0) / max(1, self.total - s0)))
        return floor + (self.anchor_factor - floor) * 0.5 * (1.0 + math.cos(math.pi * p))

    def lr_at(self, step: int) -> float:
        return self.lr * self.factor(step)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, lr: float, min_lr: float) -> float:
    """The fresh-run factor ``f(step)`` (see the module docstring)."""
    return Schedule(lr, min_lr, schedule, warmup_steps, total_steps).factor(step)


def plan_schedule(cfg, total: int, warmup: int, step: int, old: Optional[Dict[str, Any]]) -> Schedule:
    """The schedule of this run. ``old``: the checkpoint's schedule (on resume) or None;
    ``warmup``: the warm-up length of this configuration in its steps.

    Unchanged length: the checkpoint's schedule is kept as it was. A resume during the old
    warm-up: the warm-up continues by fraction (the module docstring). A changed length past
    the warm-up: re-anchored at ``step`` with the factor the old schedule had there."""
    new = Schedule(float(cfg.lr), float(cfg.min_lr), cfg.schedule, int(warmup), int(total))
    if old is None:
        return new
    prev = Schedule(**old)
    same = (prev.total, prev.warmup, prev.kind, prev.min_lr) == (new.total, new.warmup, new.kind, new.min_lr)
    if same:
        prev.lr = new.lr  # an allowed change of the peak lr scales the curve
        return prev
    if step < prev.warmup and prev.anchor_step < 0:  # resumed during the warm-up
        if prev.warmup_anchor_step < 0 and new.warmup == prev.warmup:
            return new  # the same warm-up: the new curve is the same so far
        done = prev.factor(step - 1) if step > 0 else 0.0
        new.warmup = int(step + max(0, math.ceil((1.0 - done) * warmup - 1e-9)))
        new.warmup_anchor_step, new.warmup_anchor_factor, new.warmup_length = int(step), done, int(warmup)
        return new
    new.anchor_step, new.anchor_factor = int(step), prev.factor(step)
    return new


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def make_optimizer(cfg, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW; no weight decay on 1-D parameters (norms, biases)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    # fused on CUDA: no per-step host read of the step counter
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=device.type == "cuda" or None)
