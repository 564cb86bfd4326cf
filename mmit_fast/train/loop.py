"""The training run: setup, the epoch loop, evaluation, checkpoints, the summary.

:func:`train` builds a :class:`Run` (model, loaders, loss, optimiser, schedule and position,
from the config and, on resume, the checkpoint) and then runs epochs of micro-batches
(:mod:`.step`), logging every ``log_every`` optimiser steps (:mod:`.log`), checkpointing every
``ckpt_every`` steps and at every epoch end (:mod:`.checkpoint`), and evaluating the val split
at epoch ends (:mod:`mmit_fast.inference`).

Exact resume. A checkpoint holds the loader position (``epoch``, next ``batch``) and every
rank's RNG states; the RNG is restored where it was captured: for a mid-epoch position after
the resumed epoch's iterator produced its first batch (creating an iterator may draw from the
global RNG), at an epoch boundary before the next epoch's iterator is created. A resumed run
thus replays exactly the steps an uninterrupted run would have taken.

Outputs in ``out/``: ``config.yaml``, ``metrics.csv``, ``val_metrics.csv``, ``tb/``,
``checkpoints/{last,best}.pt``, ``summary.json``, ``ranks/rank<r>.json`` (samples seen and a
parameter digest per rank) and, with ``record_keys``, ``ranks/keys-rank<r>.tsv``.

Fault injection for tests: ``MMIT_FAULT_KILL_AT_STEP=N`` makes every rank SIGKILL itself right
after optimiser step N has been logged (a crash without clean-up).
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from ..config import ConfigError, TrainConfig
from ..inference import evaluate_model
from ..distributed import all_gather_objects, barrier, dist_env, init_distributed, resolve_device, shutdown
from .log import VAL_METRICS, TrainLog, epoch_line
from .rng import rng_state, set_rng_state
from .schedule import Schedule
from .setup import build_run
from .step import micro_step, optimizer_step
from .checkpoint import NonFiniteStateError, checkpoint_state, nonfinite_state, save_checkpoint
from .summary import finish


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite (and ``skip_nonfinite`` is off)."""


@dataclass
class Run:
    """Everything one training process holds (built by :func:`.setup.build_run`)."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    manifest: Any
    spec: Dict[str, Any]
    model: nn.Module          # the bare model
    ddp: nn.Module            # DDP wrapper (or the model)
    net: nn.Module            # what runs forward (maybe compiled)
    modality: str
    preprocess: Dict[str, Any]
    fingerprint: Dict[str, Any]
    params: List[torch.Tensor]
    train_loader: Any
    val_loader: Any
    n_batches: int
    epochs: int
    stop_step: int
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    autocast: Any
    amp_mode: Optional[str]
    schedule: Schedule
    stats: Any
    buffers: Any = None       # BufferGuard of skip_nonfinite (a skipped micro-batch's buffer updates undone)
    log: Optional[TrainLog] = None
    epoch: int = 0
    start_batch: int = 0
    step: int = 0
    start_step: int = 0
    best: Dict[str, Any] = field(default_factory=dict)
    skipped: int = 0
    last_val: Optional[Dict[str, float]] = None
    rng_to_restore: Optional[Dict[str, Any]] = None
    keys_file: Any = None
    clips: int = 0            # clips (all ranks) since the last log row
    clips_run: int = 0        # clips (all ranks) in this process's run
    samples_seen: int = 0     # samples of this rank
    t0: float = 0.0
    t_log: float = 0.0
    lr: float = 0.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ck_dir(self) -> str:
        return os.path.join(self.cfg.out, "checkpoints")


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Run one training job (all epochs, or up to ``max_steps``); return the summary dict
    (also written to ``out/summary.json`` on rank 0)."""
    cfg.validate()
    if not cfg.data:
        raise ConfigError("config data is empty: give the packed dataset folder (--data DIR)")
    if cfg.best_metric not in VAL_METRICS:
        raise ConfigError(f"config best_metric={cfg.best_metric!r} is not one of {VAL_METRICS}")
    device = resolve_device(cfg.device, dist_env()[2])
    rank, world = init_distributed(device)
    try:
        run = build_run(cfg, device, rank, world, Run)
        try:
            run_epochs(run)
        except BaseException:
            run.log.close()
            raise
        finally:
            if run.keys_file is not None:
                run.keys_file.close()
        return finish(run)
    finally:
        shutdown()


def run_epochs(run: Run) -> None:
    run.model.train()
    run.t0 = run.t_log = time.time()
    if run.rng_to_restore is not None and (run.start_batch == 0 or run.start_batch >= run.n_batches):
        set_rng_state(run.rng_to_restore)
        run.rng_to_restore = None
    while run.epoch < run.epochs and run.step < run.stop_step:
        bad_before = len(getattr(run.train_loader, "skipped_samples", ()))
        pos = train_epoch(run)
        done = pos >= run.n_batches
        val = evaluate_epoch(run, done)
        stats = run.stats.read(reset_epoch=True)
        rate = (run.clips_run + run.clips) / max(1e-9, time.time() - run.t0)
        bad = list(getattr(run.train_loader, "skipped_samples", ()))[bad_before:]
        improved = _update_best(run, val)
        run.log.line(epoch_line(run.epoch, run.step, stats, run.lr, rate, val, run.cfg.val_split, bad,
                                best_metric=run.cfg.best_metric))
        if not done:  # stopped mid-epoch by max_steps: --resume continues from here
            save(run, run.epoch, pos, improved)
            break
        save(run, run.epoch + 1, 0, improved)
        run.epoch, run.start_batch = run.epoch + 1, 0


def _next_batch(it, run: Run, k: int):
    try:
        batch = next(it)
    except StopIteration:
        raise RuntimeError(f"train loader stopped at batch {k} of {run.n_batches} (epoch {run.epoch}, rank {run.rank})") from None
    if run.rng_to_restore is not None:
        set_rng_state(run.rng_to_restore)
        run.rng_to_restore = None
    return batch


def train_epoch(run: Run) -> int:
    """Micro-batches of the current epoch from ``start_batch``; returns the next batch index.

    Groups of ``accum_steps`` micro-batches are aligned to the epoch's start. A resume after an
    allowed change of ``batch_size``/``world_size``/``accum_steps`` may land inside a group:
    that step is the rest of the group, and its micro-batches are divided by their own number
    (the mean over what it holds), not by ``accum_steps``."""
    A, pos, used = run.cfg.accum_steps, run.start_batch, 0
    if run.start_batch >= run.n_batches:
        return pos
    run.train_loader.set_epoch(run.epoch, start_batch=run.start_batch)
    it = iter(run.train_loader)
    for k in range(run.start_batch, run.n_batches):
        batch = _next_batch(it, run, k)
        g0 = (k // A) * A
        g_size = min(g0 + A, run.n_batches) - max(g0, run.start_batch)  # a resume may land inside a group
        last = k == min(g0 + A, run.n_batches) - 1
        if micro_step(run, batch, g_size, last):
            used += 1
        else:
            run.skipped += 1
            run.log.line(f"[mmit train] skipped batch {k} of epoch {run.epoch}: non-finite loss "
                         f"({run.skipped} skipped so far)", err=True)
        bsz = int(batch.targets.shape[0])
        run.clips += bsz * run.world
        run.samples_seen += bsz
        if run.keys_file is not None:
            run.keys_file.write("".join(f"{run.epoch}\t{key}\n" for key in batch.keys))
        pos = k + 1
        if not last:
            continue
        after_step(run, k, used)
        used = 0
        if run.step >= run.stop_step:
            break
    return pos


def after_step(run: Run, k: int, used: int) -> None:
    """The optimiser step, then (on its interval) the log row, the checkpoint, the fault."""
    cfg = run.cfg
    log_now = (run.step + 1) % cfg.log_every == 0 or run.step + 1 == run.stop_step
    out = optimizer_step(run, used, log_now)
    run.lr = out["lr"]
    run.log.tick()
    if log_now:
        log_row(run, k, out)
    if cfg.ckpt_every and run.step % cfg.ckpt_every == 0:
        save(run, run.epoch, k + 1)
    fault = int(os.environ.get("MMIT_FAULT_KILL_AT_STEP", "0") or 0)
    if fault and run.step == fault:
        if run.keys_file is not None:
            run.keys_file.flush()
        barrier()
        os.kill(os.getpid(), signal.SIGKILL)


def log_row(run: Run, k: int, out: Dict[str, Any]) -> None:
    """The one host sync of a log interval: read the stats (all ranks), stop on a non-finite loss."""
    s = check_finite(run, reset_interval=True, grad_norm=out["grad_norm"])
    now = time.time()
    dt = max(1e-9, now - run.t_log)
    run.clips_run += run.clips
    run.log.train_row({"step": run.step, "epoch": run.epoch, "batch": k, "loss": s["loss"], "lr": out["lr"],
                       "grad_norm": s["grad_norm"], "clips": run.clips,
                       "clips_per_s": round(run.clips / dt, 3), "elapsed_s": round(now - run.t0, 3),
                       "skipped": run.skipped})
    run.clips, run.t_log = 0, now


def check_finite(run: Run, **read) -> Dict[str, float]:
    """Read the running stats; raise :class:`NonFiniteLossError` if a loss was not finite."""
    s = run.stats.read(**read)
    if s["nonfinite"] and not run.cfg.skip_nonfinite:
        bad = s["first_bad"]
        steps_per_epoch = max(1, -(-run.n_batches // run.cfg.accum_steps))
        last = os.path.join(run.ck_dir, "last.pt")
        raise NonFiniteLossError(
            f"non-finite loss ({s['nonfinite']} micro-batches on {run.world} rank(s)), first at optimiser step {bad} "
            f"(epoch {(bad - 1) // steps_per_epoch}, lr {run.schedule.lr_at(bad - 1):.4g}); the last good checkpoint is "
            f"{last if os.path.exists(last) else '(none yet)'}. Lower the learning rate, check the data, or pass "
            "--skip-nonfinite to skip such batches")
    return s


def evaluate_epoch(run: Run, epoch_done: bool) -> Optional[Dict[str, Any]]:
    """Val metrics at an epoch end (every ``eval_every`` epochs, and the last) or the final step."""
    cfg = run.cfg
    if run.val_loader is None or cfg.eval_every == 0:  # eval_every 0: never
        return None
    due = epoch_done and ((run.epoch + 1) % cfg.eval_every == 0 or run.epoch + 1 == run.epochs)
    if not (due or run.step >= run.stop_step):
        return None
    check_finite(run)
    saved = rng_state()  # evaluation leaves the training RNG as it was
    m = evaluate_model(run.net, run.val_loader, run.device, amp=cfg.amp, views=cfg.eval_views,
                       progress=run.log.bar_on, desc=f"val e{run.epoch}")
    set_rng_state(saved)
    if m is not None:
        run.log.val_row(run.epoch, run.step, cfg.val_split, m)
        run.last_val = {k: float(m[k]) for k in VAL_METRICS + [cfg.best_metric] if k in m}
    return m


def _update_best(run: Run, m: Optional[Dict[str, Any]]) -> bool:
    """Rank 0 decides whether the val metric improved; every rank learns the answer. A NaN
    metric is never a best (and a NaN best read from an older checkpoint counts as none)."""
    improved = False
    if run.is_main and m is not None:
        name = run.cfg.best_metric
        value, best = float(m[name]), run.best.get("value")
        if math.isnan(value):
            pass
        elif best is None or math.isnan(best) or (value > best if run.cfg.best_mode == "max" else value < best):
            run.best = {"metric": name, "value": value, "epoch": run.epoch, "step": run.step}
            improved = True
    return bool(all_gather_objects(improved)[0])


def save(run: Run, next_epoch: int, next_batch: int, also_best: bool = False) -> None:
    """``last.pt`` (and ``best.pt``) at a loader position, after checking the loss was finite
    and that no tensor of the state is (every rank learns rank 0's answer)."""
    check_finite(run)
    gathered = all_gather_objects((rng_state(), nonfinite_state(run) if run.is_main else None))
    last = os.path.join(run.ck_dir, "last.pt")
    bad = gathered[0][1]
    if bad:
        raise NonFiniteStateError(
            f"refusing to write {last} at step {run.step}: {bad} although the loss was finite; "
            f"the last good checkpoint is {last if os.path.exists(last) else '(none yet)'}, kept as it was")
    if not run.is_main:
        return
    state = checkpoint_state(run, next_epoch, next_batch, [g[0] for g in gathered])
    save_checkpoint(last, state)
    if also_best:
        save_checkpoint(os.path.join(run.ck_dir, "best.pt"), state)
