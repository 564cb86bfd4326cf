"""Training: the DDP loop, checkpoints, logging. ``python -m mmit_fast.train`` / ``mmit train``.

One process per device under ``torchrun`` (NCCL on GPUs, gloo on CPU), or a single process
without it. The config is a :class:`mmit_fast.config.TrainConfig` (YAML + ``--set`` + flags).

Optimisation. With ``B`` clips per rank, ``W`` ranks and ``A`` accumulation steps, one
optimiser step sees ``B * W * A`` clips; the gradient is the mean of the per-batch loss
gradients: each micro-batch loss is divided by the number of micro-batches in its group, and
DDP averages over ranks (gradient all-reduce only on the last micro-batch of a group,
``no_sync`` on the others). The learning rate follows linear warm-up then cosine decay per
optimiser step (see :mod:`mmit_fast.config`). Weight decay is not applied to 1-D parameters
(norm scales, biases). On GPU the forward pass runs under bf16 autocast and the loss is
computed in float32.

Checkpoints (``out/checkpoints/last.pt``, written atomically every ``ckpt_every`` optimiser
steps and at the end of each epoch; ``best.pt`` when the val metric improves) hold the model,
optimiser, scheduler, AMP scaler, the loader position (``epoch``, next ``batch`` index; on
resume ``loader.set_epoch(epoch, start_batch=batch)``), the global step, the number of CSV rows
written, and the RNG states (python, numpy, torch, CUDA) of every rank. A resumed run therefore
replays exactly the steps an uninterrupted run would have taken: no step is lost or repeated.
The RNG states are restored at the point where they were captured: for a mid-epoch position,
after the resumed epoch's iterator has produced its first batch (creating an iterator may draw
from the global RNG), for an epoch boundary, before the next epoch's iterator is created.

A non-finite loss (checked on every rank, agreed through an all-reduce so all ranks act alike)
stops the run with :class:`NonFiniteLossError`, or, with ``skip_nonfinite``, skips that
micro-batch's backward pass and counts it.

Evaluation after each epoch runs the val split on every rank, gathers ``(key, scores,
targets)`` on rank 0, drops the duplicates the distributed loader adds as padding (same key),
and calls :func:`mmit_fast.metrics.evaluate`.

Outputs in ``out/``: ``config.yaml``, ``metrics.csv`` (one row per logged optimiser step),
``val_metrics.csv`` (one row per evaluation), ``tb/`` (TensorBoard), ``checkpoints/``,
``summary.json``, ``ranks/rank<r>.json`` (samples seen and a parameter digest per rank).

Fault injection for tests: the environment variable ``MMIT_FAULT_KILL_AT_STEP=N`` makes every
rank SIGKILL itself right after optimiser step N has been logged (a crash without clean-up).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Tuple

# OpenMP threads that spin while waiting make a 2-core machine with other load 10x slower;
# sleeping waits cost nothing measurable here. Effective only if torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ._io import atomic_path, atomic_write_json, atomic_write_text
from .config import ConfigError, TrainConfig, add_config_args, config_from_args

CHECKPOINT_FORMAT = "mmit-checkpoint"
CHECKPOINT_VERSION = 1

TRAIN_CSV_FIELDS = ["step", "epoch", "batch", "loss", "lr", "grad_norm", "clips", "clips_per_s", "elapsed_s", "skipped"]
VAL_CSV_FIELDS = ["epoch", "step", "split", "top1", "top5", "micro_map", "macro_map", "pooled_ap", "num_videos"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used."""


# ============================================================================ distributed
def dist_env() -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("config device=cuda but no CUDA device is available")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: torch.device) -> Tuple[int, int]:
    """Join the process group torchrun described (NCCL on GPU, gloo on CPU)."""
    rank, world, _ = dist_env()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kw)
    return rank, world


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> List[Any]:
    if not is_dist():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_dist():
        dist.barrier()


# ============================================================================ RNG
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


# ============================================================================ schedule
def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, lr: float, min_lr: float) -> float:
    """Multiplier of the peak ``lr`` at optimiser step ``step`` (0-based): linear warm-up to 1
    over ``warmup_steps``, then cosine from 1 to ``min_lr/lr`` at ``total_steps`` (or constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    p = min(1.0, max(0.0, (step - warmup_steps) / span))
    floor = min_lr / lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


# ============================================================================ model / data / loss
def model_spec(cfg: TrainConfig, num_classes: int) -> Dict[str, Any]:
    """Name and keyword arguments of :func:`mmit_fast.models.create_model` (without weights)."""
    kw: Dict[str, Any] = {}
    if cfg.model in ("i3d", "tsm", "fusion"):
        kw["depth"] = cfg.depth
        kw["width"] = cfg.width
    if cfg.model == "tsm":
        kw["segments"] = cfg.frames
    kw.update(cfg.model_args)
    return {"name": cfg.model, "num_classes": int(num_classes), "kwargs": kw}


def build_model(spec: Dict[str, Any], pretrained: str = "") -> nn.Module:
    from .models import create_model

    kw = dict(spec.get("kwargs", {}))
    if pretrained:
        kw["pretrained"] = pretrained
    try:
        return create_model(spec["name"], num_classes=spec["num_classes"], **kw)
    except TypeError as e:
        raise ConfigError(f"model {spec['name']!r} does not accept {sorted(kw)}: {e} (set model_args in the config)") from None


def model_modality(model: nn.Module) -> str:
    m = model.module if hasattr(model, "module") else model
    m = getattr(m, "_orig_mod", m)
    return getattr(m, "modality", "video")


def clip_spec(cfg_or_dict: Any, model_name: str):
    from .data import ClipSpec

    d = cfg_or_dict if isinstance(cfg_or_dict, dict) else cfg_or_dict.to_dict()
    defaults = TrainConfig().to_dict()
    g = lambda k: d.get(k, defaults[k])  # noqa: E731
    mode = g("clip_mode")
    if mode == "auto":
        mode = "segments" if model_name == "tsm" else "consecutive"
    extra = {"resize": g("resize") or None, "flip": bool(g("flip"))}
    if mode == "segments":
        return ClipSpec(mode="segments", frames=g("frames"), crop=g("crop"), **extra)
    return ClipSpec(mode="consecutive", frames=g("frames"), stride=g("stride"), crop=g("crop"), **extra)


def make_loader_for(cfg: TrainConfig, split: str, *, train: bool, rank: int, world: int, device: torch.device,
                    with_audio: bool, views: int = 1, batch_size: Optional[int] = None, data: Optional[str] = None):
    from .data import make_loader

    return make_loader(
        data or cfg.data, split, clip=clip_spec(cfg, cfg.model), batch_size=batch_size or cfg.batch_size,
        rank=rank, world_size=world, train=train, backend=cfg.backend, device=str(device), seed=cfg.seed,
        with_audio=with_audio, num_workers=cfg.num_workers, views=views,
    )


def make_criterion(cfg: TrainConfig, manifest, split: str, device: torch.device) -> nn.Module:
    from .losses import class_weights, get_loss

    w = None
    if cfg.class_weights != "none":
        counts = manifest.class_counts(split)
        w = torch.as_tensor(np.asarray(class_weights(counts, scheme=cfg.class_weights)), dtype=torch.float32, device=device)
    kw: Dict[str, Any] = {"weights": w}
    if cfg.loss_normalize != "row":
        kw["normalize"] = cfg.loss_normalize
    return get_loss(cfg.loss, **kw)


def forward(model: nn.Module, batch, modality: str) -> torch.Tensor:
    if modality == "audio":
        if batch.audio is None:
            raise RuntimeError("the audio model got a batch without audio (loader with_audio=False?)")
        return model(batch.audio)
    if modality == "audio-video":
        has_audio = batch.has_audio
        if has_audio is not None and batch.video.shape[0] != has_audio.shape[0]:   # views: B*V video rows
            has_audio = has_audio.repeat_interleave(batch.video.shape[0] // has_audio.shape[0])
        return model(batch.video, batch.audio, has_audio)
    return model(batch.video)


def autocast_ctx(cfg_amp: str, device: torch.device):
    mode = cfg_amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    if mode == "off":
        return nullcontext(), None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), mode


def unwrap(model: nn.Module) -> nn.Module:
    m = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return getattr(m, "_orig_mod", m)


def param_digest(model: nn.Module) -> str:
    """SHA-256 of all parameters and buffers (float64 bytes, in state_dict order)."""
    h = hashlib.sha256()
    for k, v in unwrap(model).state_dict().items():
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


# ============================================================================ checkpoints
def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """``torch.save`` to a temporary file next to ``path``, fsync, rename (atomic)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or not a torch file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an mmit-fast checkpoint (no format={CHECKPOINT_FORMAT!r})")
    if int(ck.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ck.get('version')} is newer than this mmit-fast")
    return ck


def resolve_resume(cfg: TrainConfig) -> Optional[str]:
    if not cfg.resume:
        return None
    if cfg.resume in ("auto", "last", "true", "True", "1", "yes"):
        p = os.path.join(cfg.out, "checkpoints", "last.pt")
        return p if os.path.exists(p) else None
    if not os.path.exists(cfg.resume):
        raise FileNotFoundError(f"--resume {cfg.resume}: no such checkpoint")
    return cfg.resume


# ============================================================================ logging
class CsvLog:
    """Append-only CSV (rank 0); on resume truncated to the rows the checkpoint had seen."""

    def __init__(self, path: str, fieldnames: Sequence[str], keep_rows: Optional[int]):
        self.path, self.fieldnames, self.rows = path, list(fieldnames), 0
        if keep_rows is not None and os.path.exists(path):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))[:keep_rows]
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.fieldnames)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in self.fieldnames})
            atomic_write_text(path, buf.getvalue())
            self.rows = len(rows)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fieldnames).writeheader()
        self._f = open(path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.fieldnames)

    def write(self, row: Dict[str, Any]) -> None:
        self._w.writerow({k: row.get(k, "") for k in self.fieldnames})
        self._f.flush()
        self.rows += 1

    def close(self) -> None:
        self._f.close()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # full precision: exact comparison of loss sequences
    return v


# ============================================================================ evaluation
@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, amp: str = "auto", views: int = 1,
            progress: bool = False, desc: str = "eval") -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Scores (logits, averaged over ``views`` per video), targets and keys of one rank."""
    from tqdm.auto import tqdm

    modality = model_modality(model)
    was_training = model.training
    model.eval()
    ctx, _ = autocast_ctx(amp, device)
    keys: List[str] = []
    scores: List[np.ndarray] = []
    targets: List[np.ndarray] = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        with ctx:
            logits = forward(model, batch, modality)
        logits = logits.float()
        b = batch.targets.shape[0]
        if logits.shape[0] != b:
            if logits.shape[0] != b * views:
                raise RuntimeError(f"model gave {logits.shape[0]} score rows for {b} videos x {views} views")
            logits = logits.view(b, views, -1).mean(1)
        keys.extend(batch.keys)
        scores.append(logits.cpu().numpy())
        targets.append(batch.targets.float().cpu().numpy())
    model.train(was_training)
    c = getattr(loader, "num_classes", None)
    s = np.concatenate(scores) if scores else np.zeros((0, c or 0), np.float32)
    t = np.concatenate(targets) if targets else np.zeros((0, c or 0), np.float32)
    return keys, s, t


def gather_predictions(keys: List[str], scores: np.ndarray, targets: np.ndarray) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Concatenate every rank's predictions (in rank order) and keep the first of each key
    (the distributed loader pads the last batches with repeated samples)."""
    parts = all_gather_objects((keys, scores, targets))
    seen = set()
    out_k: List[str] = []
    idx_s: List[np.ndarray] = []
    idx_t: List[np.ndarray] = []
    for k, s, t in parts:
        for i, key in enumerate(k):
            if key in seen:
                continue
            seen.add(key)
            out_k.append(key)
            idx_s.append(s[i])
            idx_t.append(t[i])
    if not out_k:
        c = parts[0][1].shape[1] if parts and parts[0][1].ndim == 2 else 0
        return [], np.zeros((0, c), np.float32), np.zeros((0, c), np.float32)
    return out_k, np.stack(idx_s), np.stack(idx_t)


def evaluate_model(model: nn.Module, loader, device: torch.device, amp: str = "auto", views: int = 1,
                   progress: bool = False, desc: str = "eval", **eval_kw) -> Optional[Dict[str, Any]]:
    """Distributed evaluation: metrics on rank 0, None on the other ranks."""
    from .metrics import evaluate

    k, s, t = predict(model, loader, device, amp=amp, views=views, progress=progress, desc=desc)
    k, s, t = gather_predictions(k, s, t)
    if is_dist() and dist.get_rank() != 0:
        return None
    if not np.isfinite(s).all():  # a diverged model: report NaN metrics instead of failing
        print(f"[mmit] warning: {int((~np.isfinite(s)).any(1).sum())} of {len(s)} videos have non-finite scores; "
              "metrics are NaN", file=sys.stderr)
        m = evaluate(np.zeros_like(s), t, **eval_kw)
        for name in ("top1", "top5", "micro_map", "macro_map", "pooled_ap"):
            m[name] = float("nan")
        m["per_class_ap"] = np.full_like(np.asarray(m["per_class_ap"], dtype=np.float64), np.nan)
    else:
        m = evaluate(s, t, **eval_kw)
    m["keys"] = k
    m["scores"], m["targets"] = s, t
    return m


# ============================================================================ the loop
def _metric_value(m: Dict[str, Any], name: str) -> float:
    if name not in m:
        raise ConfigError(f"best_metric={name!r} is not a metric (have {sorted(k for k in m if not isinstance(m[k], (list, np.ndarray)))})")
    return float(m[name])


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Run one training job (all epochs, or up to ``max_steps``); return the summary dict
    (also written to ``out/summary.json`` on rank 0)."""
    from tqdm.auto import tqdm

    cfg.validate()
    if not cfg.data:
        raise ConfigError("config data is empty: give the packed dataset folder (--data DIR)")
    _, _, local_rank = dist_env()
    device = resolve_device(cfg.device, local_rank)
    rank, world = init_distributed(device)
    is_main = rank == 0
    try:
        return _train(cfg, device, rank, world, is_main, tqdm)
    finally:
        if is_dist():
            dist.destroy_process_group()


def _train(cfg, device, rank, world, is_main, tqdm) -> Dict[str, Any]:
    from .shards import load_manifest

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

    out = cfg.out
    ck_dir = os.path.join(out, "checkpoints")
    if is_main:
        os.makedirs(ck_dir, exist_ok=True)

    manifest = load_manifest(cfg.data)
    num_classes = manifest.num_classes

    # ---- resume / init
    resume_path = resolve_resume(cfg)
    ck = load_checkpoint(resume_path) if resume_path else None
    init_ck = None
    if ck is None and cfg.init_from:
        init_ck = load_checkpoint(cfg.init_from)

    if ck is not None:
        spec = ck["model_spec"]
        if spec["num_classes"] != num_classes:
            raise CheckpointError(f"resume checkpoint {resume_path} has {spec['num_classes']} classes, the dataset {cfg.data} has {num_classes}")
        model = build_model(spec)
    elif init_ck is not None:
        old = init_ck["model_spec"]
        model = build_model(old)
        model.load_state_dict(init_ck["model"])
        if old["num_classes"] != num_classes or cfg.replace_classifier:
            from .models import replace_classifier

            model = replace_classifier(model, num_classes) or model
        spec = dict(old, num_classes=num_classes)
    else:
        spec = model_spec(cfg, num_classes)
        model = build_model(spec, pretrained=cfg.pretrained)
    if ck is not None:
        unwrap(model).load_state_dict(ck["model"])
    if cfg.freeze_backbone:
        head = unwrap(model).classifier
        head_ids = {id(p) for p in head.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head_ids)
    model.to(device)
    if cfg.channels_last and device.type == "cuda":
        from .models import to_channels_last

        model = to_channels_last(model)
    modality = model_modality(model)
    with_audio = cfg.with_audio if cfg.with_audio is not None else modality != "video"

    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
        )
    run_model = torch.compile(ddp_model) if cfg.compile else ddp_model

    # ---- data
    train_loader = make_loader_for(cfg, cfg.train_split, train=True, rank=rank, world=world, device=device, with_audio=with_audio)
    val_loader = None
    if cfg.val_split and cfg.eval_every > 0:
        val_loader = make_loader_for(cfg, cfg.val_split, train=False, rank=rank, world=world, device=device,
                                     with_audio=with_audio, views=cfg.eval_views)
    n_batches = len(train_loader)
    if n_batches == 0:
        raise RuntimeError(f"the {cfg.train_split} split of {cfg.data} gives no batches on rank {rank} "
                           f"({manifest.num_samples(cfg.train_split)} samples, batch_size {cfg.batch_size}, {world} ranks)")
    A = cfg.accum_steps
    steps_per_epoch = math.ceil(n_batches / A)
    total_steps = cfg.epochs * steps_per_epoch if cfg.epochs > 0 else cfg.max_steps
    stop_step = min(total_steps, cfg.max_steps) if cfg.max_steps > 0 else total_steps
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else int(round(cfg.warmup_epochs * steps_per_epoch))
    epochs = cfg.epochs if cfg.epochs > 0 else math.ceil(cfg.max_steps / steps_per_epoch)

    # ---- loss, optimiser, schedule
    criterion = make_criterion(cfg, manifest, cfg.train_split, device)
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.schedule, cfg.lr, cfg.min_lr))
    ctx, amp_mode = autocast_ctx(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_mode == "fp16" else None

    # ---- state
    epoch, start_batch, step = 0, 0, 0
    best = {"metric": cfg.best_metric, "value": None, "epoch": None, "step": None}
    train_rows = val_rows = None
    skipped = 0
    rng_to_restore = None
    if ck is not None:
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        epoch, start_batch, step = int(ck["epoch"]), int(ck["batch"]), int(ck["step"])
        best = ck.get("best", best)
        skipped = int(ck.get("skipped", 0))
        train_rows, val_rows = ck.get("csv_rows", {}).get("train"), ck.get("csv_rows", {}).get("val")
        states = ck.get("rng") or []
        if len(states) == world:
            rng_to_restore = states[rank]
        elif is_main:
            print(f"[mmit train] resuming on {world} ranks from a {len(states)}-rank checkpoint: RNG states re-seeded", file=sys.stderr)
        if is_main:
            print(f"[mmit train] resumed from {resume_path}: epoch {epoch}, batch {start_batch}, step {step}", file=sys.stderr)

    # ---- logging (rank 0)
    tcsv = vcsv = writer = None
    if is_main:
        cfg.save(os.path.join(out, "config.yaml"))
        tcsv = CsvLog(os.path.join(out, "metrics.csv"), TRAIN_CSV_FIELDS, keep_rows=train_rows if ck else None)
        vcsv = CsvLog(os.path.join(out, "val_metrics.csv"), VAL_CSV_FIELDS, keep_rows=val_rows if ck else None)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(os.path.join(out, "tb"), purge_step=step if ck else None)

    fault_step = int(os.environ.get("MMIT_FAULT_KILL_AT_STEP", "0") or 0)
    last_path, best_path = os.path.join(ck_dir, "last.pt"), os.path.join(ck_dir, "best.pt")
    last_val: Optional[Dict[str, Any]] = ck.get("last_val") if ck else None

    def checkpoint(next_epoch: int, next_batch: int, also_best: bool = False) -> None:
        rngs = all_gather_objects(rng_state())
        if not is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": cfg.to_dict(), "model_spec": spec, "classes": list(manifest.classes),
            "modality": modality,
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "epoch": next_epoch, "batch": next_batch, "step": step, "world_size": world,
            "rng": rngs, "best": best, "skipped": skipped, "last_val": last_val,
            "csv_rows": {"train": tcsv.rows, "val": vcsv.rows},
            "time": time.time(),
        }
        save_checkpoint(last_path, state)
        if also_best:
            save_checkpoint(best_path, state)

    # ---- run
    model.train()
    t0 = time.time()
    start_step = step
    clips_run = 0
    seen_samples = 0
    bar = tqdm(total=stop_step, initial=step, desc="train", unit="step", disable=not (is_main and cfg.progress),
               dynamic_ncols=True, mininterval=1.0)
    group_loss, group_n, group_clips = 0.0, 0, 0
    t_group = time.time()
    if rng_to_restore is not None and (start_batch == 0 or start_batch >= n_batches):
        set_rng_state(rng_to_restore)
        rng_to_restore = None
    keys_file = None
    if cfg.record_keys:
        os.makedirs(os.path.join(out, "ranks"), exist_ok=True)
        keys_file = open(os.path.join(out, "ranks", f"keys-rank{rank}.tsv"), "a")
    while epoch < epochs and step < stop_step:
        pos = start_batch
        if start_batch < n_batches:
            train_loader.set_epoch(epoch, start_batch=start_batch)
            it = iter(train_loader)
            for k in range(start_batch, n_batches):
                try:
                    batch = next(it)
                except StopIteration:
                    raise RuntimeError(f"train loader stopped at batch {k} of {n_batches} (epoch {epoch}, rank {rank})") from None
                if rng_to_restore is not None:
                    set_rng_state(rng_to_restore)
                    rng_to_restore = None
                g0 = (k // A) * A
                g_size = min(g0 + A, n_batches) - g0
                last_in_group = k == g0 + g_size - 1
                sync_ctx = ddp_model.no_sync() if (world > 1 and not last_in_group) else nullcontext()
                bsz = int(batch.targets.shape[0])
                with sync_ctx:
                    with ctx:
                        logits = forward(run_model, batch, modality)
                    loss = criterion(logits.float(), batch.targets.to(device=logits.device, dtype=torch.float32))
                    finite = bool(torch.isfinite(loss.detach()).item())
                    # one all-reduce: [ranks with a non-finite loss, sum of the finite losses]
                    stat = torch.tensor([0.0 if finite else 1.0, loss.item() if finite else 0.0],
                                        dtype=torch.float64, device=device)
                    all_reduce_sum(stat)
                    if stat[0].item() > 0:
                        if not cfg.skip_nonfinite:
                            raise NonFiniteLossError(
                                f"non-finite loss ({loss.item()} on rank {rank}; {int(stat[0].item())} of {world} ranks) "
                                f"at epoch {epoch}, batch {k}, optimiser step {step + 1}, "
                                f"lr {scheduler.get_last_lr()[0]:.4g}. The last good checkpoint is "
                                f"{last_path if os.path.exists(last_path) else '(none yet)'}. Lower the learning "
                                "rate, check the data, or pass --skip-nonfinite to skip such steps.")
                        skipped += 1
                        if is_main:
                            tqdm.write(f"[mmit train] skipped batch {k} of epoch {epoch}: non-finite loss "
                                       f"({skipped} skipped so far)", file=sys.stderr)
                    else:
                        l = loss / g_size
                        (scaler.scale(l) if scaler is not None else l).backward()
                        group_loss += stat[1].item() / world
                        group_n += 1
                group_clips += bsz * world
                seen_samples += bsz
                if keys_file is not None:
                    keys_file.write("".join(f"{epoch}\t{key}\n" for key in batch.keys))
                pos = k + 1
                if not last_in_group:
                    continue
                # ---- optimiser step
                if scaler is not None:
                    scaler.unscale_(optimizer)
                gnorm = float("nan")
                if cfg.grad_clip > 0:
                    gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                lr_now = scheduler.get_last_lr()[0]
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                clips_run += group_clips
                dt = max(1e-9, time.time() - t_group)
                if is_main:
                    mean_loss = group_loss / group_n if group_n else float("nan")
                    if step % cfg.log_every == 0 or step == stop_step:
                        tcsv.write({"step": step, "epoch": epoch, "batch": k, "loss": _fmt(mean_loss), "lr": _fmt(lr_now),
                                    "grad_norm": _fmt(gnorm), "clips": group_clips,
                                    "clips_per_s": round(group_clips / dt, 3), "elapsed_s": round(time.time() - t0, 3),
                                    "skipped": skipped})
                        if writer is not None:
                            writer.add_scalar("train/loss", mean_loss, step)
                            writer.add_scalar("train/lr", lr_now, step)
                            writer.add_scalar("train/clips_per_s", group_clips / dt, step)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.4f}", lr=f"{lr_now:.3g}", refresh=False)
                group_loss, group_n, group_clips = 0.0, 0, 0
                t_group = time.time()
                if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                    checkpoint(epoch, k + 1)
                if fault_step and step == fault_step:
                    if keys_file is not None:
                        keys_file.flush()
                    barrier()
                    os.kill(os.getpid(), signal.SIGKILL)
                if step >= stop_step:
                    break
        epoch_done = pos >= n_batches
        # ---- evaluate (end of epoch, or the final step); the RNG is left as it was
        improved = False
        if val_loader is not None and ((epoch_done and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == epochs))
                                       or step >= stop_step):
            saved_rng = rng_state()
            m = evaluate_model(run_model, val_loader, device, amp=cfg.amp, views=cfg.eval_views,
                               progress=is_main and cfg.progress, desc=f"val e{epoch}")
            set_rng_state(saved_rng)
            if is_main:
                last_val = {k2: float(m[k2]) for k2 in VAL_CSV_FIELDS[3:] + [cfg.best_metric] if k2 in m}
                value = _metric_value(m, cfg.best_metric)
                if best["value"] is None or (value > best["value"] if cfg.best_mode == "max" else value < best["value"]):
                    best = {"metric": cfg.best_metric, "value": value, "epoch": epoch, "step": step}
                    improved = True
                row = {"epoch": epoch, "step": step, "split": cfg.val_split}
                row.update({k2: _fmt(float(m[k2])) for k2 in VAL_CSV_FIELDS[3:] if k2 in m})
                vcsv.write(row)
                if writer is not None:
                    for k2 in VAL_CSV_FIELDS[3:]:
                        if k2 in m:
                            writer.add_scalar(f"val/{k2}", float(m[k2]), step)
                if cfg.progress:
                    tqdm.write(f"[mmit train] epoch {epoch} step {step} {cfg.val_split}: " + ", ".join(
                        f"{k2} {float(m[k2]):.4f}" for k2 in ("top1", "top5", "micro_map", "macro_map") if k2 in m))
            improved = bool(all_gather_objects(improved)[0])
        if epoch_done:
            checkpoint(epoch + 1, 0, also_best=improved)
            epoch, start_batch = epoch + 1, 0
        else:  # stopped mid-epoch by max_steps: --resume continues from here
            checkpoint(epoch, pos, also_best=improved)
            break
    bar.close()
    if keys_file is not None:
        keys_file.close()

    elapsed = time.time() - t0
    digest = param_digest(model)
    os.makedirs(os.path.join(out, "ranks"), exist_ok=True)
    atomic_write_json(os.path.join(out, "ranks", f"rank{rank}.json"), {
        "rank": rank, "world_size": world, "samples_seen": seen_samples, "param_digest": digest,
        "steps": step, "device": str(device)})
    summary = {
        "out": os.path.abspath(out), "steps": step, "steps_run": step - start_step, "epochs_done": epoch, "world_size": world, "device": str(device),
        "amp": amp_mode or "off", "elapsed_s": elapsed,
        "steps_per_s": (step - start_step) / elapsed if elapsed > 0 else None,
        "clips_per_s": clips_run / elapsed if elapsed > 0 else None,
        "skipped_nonfinite": skipped, "best": best, "last_val": last_val,
        "last_checkpoint": os.path.abspath(last_path),
        "best_checkpoint": os.path.abspath(best_path) if os.path.exists(best_path) else None,
        "param_digest": digest,
    }
    barrier()
    if is_main:
        tcsv.close()
        vcsv.close()
        if writer is not None:
            writer.close()
        atomic_write_json(os.path.join(out, "summary.json"), summary)
    return summary


def finetune_base_config(checkpoint: str) -> TrainConfig:
    """The config a fine-tuning run starts from: the source run's settings (clips, loss,
    optimiser...), with its data, output, resume and evaluation history cleared."""
    ck = load_checkpoint(checkpoint)
    d = {k: v for k, v in (ck.get("config") or {}).items() if k in TrainConfig.__dataclass_fields__}
    d.update(data="", out="runs/finetune", resume="", init_from=os.path.abspath(checkpoint), replace_classifier=True,
             pretrained="", freeze_backbone=False, max_steps=0, record_keys=False)
    return TrainConfig(**d)


# ============================================================================ entry point
def build_parser(prog: str = "mmit train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train a model on packed shards. One process, or one per device under torchrun "
                    "(torchrun --nproc_per_node=N -m mmit_fast.train --config run.yaml). "
                    "Config precedence: defaults < --config YAML < --set key=value < flags.",
    )
    add_config_args(p)
    return p


def run_cli(args: argparse.Namespace, base: Optional[TrainConfig] = None) -> int:
    """Shared by ``python -m mmit_fast.train`` and ``mmit train``: exit codes 0 ok, 2 config
    error, 3 non-finite loss, 4 bad checkpoint."""
    try:
        cfg = config_from_args(args, base=base)
        summary = train(cfg)
    except ConfigError as e:
        print(f"mmit train: config error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"mmit train: stopped: {e}", file=sys.stderr)
        return 3
    except CheckpointError as e:
        print(f"mmit train: {e}", file=sys.stderr)
        return 4
    if dist_env()[0] == 0:
        best = summary.get("best") or {}
        msg = f"mmit train: {summary['steps_run']} steps in {summary['elapsed_s']:.1f}s (step {summary['steps']})"
        if summary.get("clips_per_s"):
            msg += f" ({summary['clips_per_s']:.1f} clips/s)"
        if best.get("value") is not None:
            msg += f"; best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}"
        print(msg + f"; outputs in {summary['out']}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(build_parser("python -m mmit_fast.train").parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
