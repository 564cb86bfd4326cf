"""One micro-batch and one optimiser step, without waiting on the host.

Gradient of one optimiser step: with ``B`` clips per rank, ``W`` ranks and ``A`` micro-batches
per group, ``g = 1/(W n) sum_ranks sum_{m used} grad L_m`` where ``n`` is the number of
micro-batches used (``A``, or fewer at the end of an epoch or when ``skip_nonfinite`` dropped
some). By default each micro-batch loss is divided by its group's size and DDP all-reduces on
the group's last micro-batch (``no_sync`` on the others). With ``skip_nonfinite`` every
micro-batch runs under ``no_sync`` and the group's summed gradients are all-reduced explicitly
and divided by ``W n`` at the step, so a dropped micro-batch (the last one included) never
leaves the ranks with different gradients.

Host synchronisation. The default step makes none: the loss, the number of micro-batches and
of non-finite losses are summed in a device tensor (:class:`RunningStats`) that is all-reduced
and read once per log interval; the grad norm stays a device tensor until then; the targets go
to the loss as ``bool`` (no value check). A non-finite loss is therefore detected at the next
log row or checkpoint (never written with non-finite weights), not at the very batch. The one
exception is ``skip_nonfinite``: skipping a micro-batch needs its decision before the backward
pass, agreed by all ranks: one small all-reduce and one read per micro-batch. fp16 AMP
(``GradScaler``) reads its inf check once per step; bf16 (the default on GPU) has no scaler.

A skipped micro-batch leaves no trace. Its forward pass has already updated the BatchNorm
running statistics, so in skip mode the model's buffers are copied before every forward pass
(:class:`BufferGuard`, a few kB: buffers are per-channel) and put back when it is skipped. A
group whose every micro-batch was skipped makes no update; under fp16 the ``GradScaler`` sees
it as the overflow it is: an infinite gradient goes through its own ``unscale_`` (which
finds it), ``step`` (which then skips the optimiser) and ``update`` (scale times
``backoff_factor``, growth tracker reset), so its state stays consistent for the next step.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Dict, List, Optional

import torch

from ..inference import forward
from ..distributed import all_reduce_, all_reduce_grads_
from .schedule import set_lr

INF = math.inf


class RunningStats:
    """Device sums: [interval loss, interval micro-batches, epoch loss, epoch micro-batches,
    non-finite count] and the first optimiser step with a non-finite loss."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)
        self.first_bad = torch.full((1,), INF, dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, step: int) -> None:
        """Add one micro-batch loss (a 0-d tensor) of optimiser step ``step`` (1-based)."""
        l = loss.detach().double()
        ok = torch.isfinite(l)
        lz, f = torch.where(ok, l, 0.0), ok.double()
        self.sums += torch.stack([lz, f, lz, f, 1.0 - f])
        torch.minimum(self.first_bad, torch.where(ok, INF, float(step)).reshape(1), out=self.first_bad)

    def read(self, reset_interval: bool = False, reset_epoch: bool = False,
             grad_norm: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """All-reduce over ranks and read, with ``grad_norm`` if given (one host sync)."""
        s = all_reduce_(self.sums.clone())
        fb = all_reduce_(self.first_bad.clone(), "min")
        g = grad_norm.detach().reshape(1).to(s) if grad_norm is not None else torch.full_like(fb, math.nan)
        v = torch.cat([s, fb, g]).tolist()
        if reset_interval:
            self.sums[0:2] = 0
        if reset_epoch:
            self.sums[2:4] = 0
        return {"loss": v[0] / v[1] if v[1] else float("nan"), "n": v[1],
                "epoch_loss": v[2] / v[3] if v[3] else float("nan"), "nonfinite": int(v[4]),
                "first_bad": None if math.isinf(v[5]) else int(v[5]), "grad_norm": v[6]}


def _finite_everywhere(loss: torch.Tensor) -> bool:
    """All ranks agree whether this micro-batch's loss is finite (skip_nonfinite only: a sync)."""
    bad = (~torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
    return not bool(all_reduce_(bad).item() > 0)


class BufferGuard:
    """The model's buffers (BatchNorm running statistics and counters), copied before a forward
    pass (:meth:`save`) and put back (:meth:`restore`) when its micro-batch is skipped."""

    def __init__(self, model: torch.nn.Module):
        self.live = list(model.buffers())
        self.saved = [b.detach().clone() for b in self.live]

    @torch.no_grad()
    def save(self) -> None:
        for s, b in zip(self.saved, self.live):
            s.copy_(b)

    @torch.no_grad()
    def restore(self) -> None:
        for s, b in zip(self.saved, self.live):
            b.copy_(s)


def micro_step(run, batch, group_size: int, last_in_group: bool) -> bool:
    """Forward, loss and backward of one micro-batch; returns False when it was skipped (its
    buffer updates undone)."""
    skip_mode = run.cfg.skip_nonfinite
    no_sync = run.world > 1 and (skip_mode or not last_in_group)
    if skip_mode:
        run.buffers.save()
    with run.ddp.no_sync() if no_sync else nullcontext():
        with run.autocast:
            logits = forward(run.net, batch, run.modality)
        targets = batch.targets.to(device=logits.device, dtype=torch.bool, non_blocking=True)
        loss = run.criterion(logits.float(), targets)
        if skip_mode and not _finite_everywhere(loss):
            run.buffers.restore()
            return False
        scaled = loss if skip_mode else loss / group_size
        (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
    run.stats.add(loss, run.step + 1)
    return True


def _grad_norm(params: List[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all gradients together (a device tensor; what clip_grad_norm_ reports)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else "cpu")
    return torch.nn.utils.get_total_norm(grads, 2.0)


def _scaler_overflow(scaler, optimizer, params: List[torch.Tensor]) -> None:
    """A group with no micro-batch left, under fp16: let the scaler find an overflow itself
    (an infinite gradient through ``unscale_``, ``step`` and ``update``): it backs off and
    skips the optimiser exactly as on an overflow of its own."""
    p = params[0]
    scaler.scale(torch.ones((), device=p.device))  # creates the scale when the first group is skipped
    p.grad = torch.full_like(p, INF)
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()


def optimizer_step(run, used: int, log_now: bool) -> Dict[str, Any]:
    """Reduce (skip mode), unscale, clip, set the lr, step; returns ``lr`` and ``grad_norm``
    (a device tensor, read at the log row). ``used == 0`` (every micro-batch skipped): no
    update, and under fp16 the scaler backs off as on an overflow."""
    params = run.params
    lr = run.schedule.lr_at(run.step)
    set_lr(run.optimizer, lr)
    gnorm = None
    if used == 0:
        gnorm = _grad_norm(params) if log_now or run.cfg.grad_clip > 0 else None  # no gradient: 0
        if run.scaler is not None:
            _scaler_overflow(run.scaler, run.optimizer, params)
    else:
        if run.cfg.skip_nonfinite:
            all_reduce_grads_(params, float(used * run.world))
        if run.scaler is not None:
            run.scaler.unscale_(run.optimizer)
        if run.cfg.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(params, run.cfg.grad_clip)
        elif log_now:
            gnorm = _grad_norm(params)
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return {"lr": lr, "grad_norm": gnorm}
