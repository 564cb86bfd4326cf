"""Assembling a :class:`~mmit_fast.train.loop.Run`: threads and determinism, the model (fresh,
pretrained, fine-tuned from ``init_from``, or resumed), DDP, the loaders, the loss, the
optimiser, the schedule, and the position and state a resume continues from."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from ..inference import autocast_context, model_modality, unwrap
from ..models.checkpoint import CheckpointError, check_spec_fits
from ..recipes import (build_model, dataset_fingerprint, make_criterion, make_loader_for, model_from_init, model_spec,
                    preprocess_spec)
from .checkpoint import read_training_checkpoint
from .log import TrainLog
from .resume import check_resume, find_resume, map_position, run_history
from .rng import seed_everything
from .schedule import make_optimizer, plan_schedule
from .step import BufferGuard, RunningStats


def configure_torch(cfg, device: torch.device, rank: int) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(cfg.seed + 1000 * rank)


def make_model(cfg, num_classes: int, ck: Optional[Dict[str, Any]], device: torch.device, ck_path: str = ""):
    """(model on ``device``, spec): resumed (``ck`` read from ``ck_path``), fine-tuned from
    ``init_from``, or new."""
    if ck is not None:
        spec = ck["model_spec"]
        check_spec_fits(ck_path, spec, ck["model"])  # a spec claiming more than the weights: refused first
        model = build_model(spec)
        model.load_state_dict(ck["model"])
    elif cfg.init_from:
        model, spec = model_from_init(cfg.init_from, num_classes, cfg.replace_classifier)
    else:
        spec = model_spec(cfg, num_classes)
        model = build_model(spec, pretrained=cfg.pretrained)
    if int(spec["num_classes"]) != num_classes:
        raise CheckpointError(f"the checkpoint's model has {spec['num_classes']} classes, the dataset {cfg.data} "
                              f"has {num_classes}")
    if cfg.freeze_backbone:
        head_ids = {id(p) for p in unwrap(model).classifier.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head_ids)
    model.to(device)
    if cfg.channels_last and device.type == "cuda":
        from ..models import to_channels_last

        model = to_channels_last(model)
    return model, spec


def make_loaders(cfg, manifest, rank: int, world: int, device: torch.device, with_audio: bool,
                 modality: str = "video"):
    train_loader = make_loader_for(cfg, cfg.train_split, train=True, rank=rank, world=world, device=device,
                                   with_audio=with_audio, modality=modality)
    val_loader = None
    if cfg.val_split and cfg.eval_every > 0:
        val_loader = make_loader_for(cfg, cfg.val_split, train=False, rank=rank, world=world, device=device,
                                     with_audio=with_audio, views=cfg.eval_views, modality=modality)
    if len(train_loader) == 0:
        raise ValueError(f"the {cfg.train_split} split of {cfg.data} gives no batches on rank {rank} "
                         f"({manifest.num_samples(cfg.train_split)} samples, batch_size {cfg.batch_size}, {world} ranks)")
    return train_loader, val_loader


def plan_length(cfg, n_batches: int, epoch: int, start_batch: int, step: int):
    """(total optimiser steps of the schedule, stop step, epochs, warm-up steps) from a position."""
    A = cfg.accum_steps
    spe = math.ceil(n_batches / A)
    epochs = cfg.epochs if cfg.epochs > 0 else math.ceil(cfg.max_steps / spe)
    if cfg.epochs == 0:
        total = cfg.max_steps
    elif start_batch >= n_batches:
        total = step + (epochs - epoch - 1) * spe
    else:
        total = step + ((n_batches - 1) // A - start_batch // A + 1) + (epochs - epoch - 1) * spe
    stop = min(total, cfg.max_steps) if cfg.max_steps > 0 else total
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else int(round(cfg.warmup_epochs * spe))
    return total, stop, epochs, warmup


def _restore(run, ck: Dict[str, Any], path: str, changes: Dict[str, tuple]) -> None:
    run.optimizer.load_state_dict(ck["optimizer"])
    if run.scaler is not None and ck.get("scaler"):
        run.scaler.load_state_dict(ck["scaler"])
    run.epoch, run.step = int(ck["epoch"]), int(ck["step"])
    run.start_batch = map_position(ck, run.cfg, run.world)
    run.best = ck.get("best") or run.best
    run.skipped, run.last_val = int(ck.get("skipped", 0)), ck.get("last_val")
    states = ck.get("rng") or []
    if len(states) == run.world and "world_size" not in changes and "batch_size" not in changes:
        run.rng_to_restore = states[run.rank]
    elif run.is_main:
        print(f"[mmit train] resuming with a changed geometry: RNG states re-seeded", flush=True)
    if run.is_main:
        allowed = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
        print(f"[mmit train] resumed from {path}: epoch {run.epoch}, batch {run.start_batch}, step {run.step}"
              + (f" (allowed changes: {allowed})" if allowed else ""), flush=True)


def build_run(cfg, device: torch.device, rank: int, world: int, Run) -> Any:
    from ..shards import load_manifest

    configure_torch(cfg, device, rank)
    manifest = load_manifest(cfg.data)
    fingerprint = dataset_fingerprint(manifest, cfg.train_split)
    resume_path = find_resume(cfg)
    ck = read_training_checkpoint(resume_path) if resume_path else None
    changes = check_resume(ck, cfg, world, fingerprint, resume_path) if ck is not None else {}
    if ck is None and rank == 0 and run_history(cfg.out):
        print(f"[mmit train] warning: {cfg.out} holds a previous run ({', '.join(run_history(cfg.out))}); "
              "starting a new one replaces it (--resume auto continues it)", flush=True)
    model, spec = make_model(cfg, manifest.num_classes, ck, device, resume_path or "")
    modality = model_modality(model)
    with_audio = cfg.with_audio if cfg.with_audio is not None else modality != "video"
    ddp: nn.Module = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net = torch.compile(ddp) if cfg.compile else ddp
    train_loader, val_loader = make_loaders(cfg, manifest, rank, world, device, with_audio, modality)
    ctx, amp_mode = autocast_context(cfg.amp, device)
    run = Run(cfg=cfg, device=device, rank=rank, world=world, manifest=manifest, spec=spec, model=model, ddp=ddp,
              net=net, modality=modality, preprocess=preprocess_spec(cfg, spec["name"], modality),
              fingerprint=fingerprint, params=[p for p in model.parameters() if p.requires_grad],
              train_loader=train_loader, val_loader=val_loader, n_batches=len(train_loader), epochs=0, stop_step=0,
              criterion=make_criterion(cfg, manifest, cfg.train_split, device),
              optimizer=make_optimizer(cfg, model, device),
              scaler=torch.amp.GradScaler(device.type) if amp_mode == "fp16" else None,
              autocast=ctx, amp_mode=amp_mode, schedule=None, stats=RunningStats(device),
              best={"metric": cfg.best_metric, "value": None, "epoch": None, "step": None},
              buffers=BufferGuard(model) if cfg.skip_nonfinite else None)
    if ck is not None:
        _restore(run, ck, resume_path, changes)
    total, run.stop_step, run.epochs, warmup = plan_length(cfg, run.n_batches, run.epoch, run.start_batch, run.step)
    run.schedule = plan_schedule(cfg, total, warmup, run.step, ck.get("schedule") if ck else None)
    run.start_step, run.lr = run.step, run.schedule.lr_at(run.step)
    run.log = TrainLog(cfg, rank == 0, ck.get("csv_rows", {}) if ck else None, run.step, run.stop_step)
    if rank == 0:
        os.makedirs(os.path.join(cfg.out, "checkpoints"), exist_ok=True)
    if cfg.record_keys:
        run.keys_file = open_keys_file(os.path.join(cfg.out, "ranks", f"keys-rank{rank}.tsv"))
    return run


def open_keys_file(path: str):
    """``ranks/keys-rank<r>.tsv`` for appending, never through a symlink: a link found there
    (planted in a run folder) is replaced by a file of the run's own, as every other output is."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.islink(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, "a")
