"""What a resume may do. Rules:

* ``--resume auto`` takes ``out/checkpoints/last.pt``. When it is missing but ``out`` holds a
  run (metrics rows, ``best.pt``, ``summary.json``), the resume is refused: starting over would
  truncate the history and replace ``best.pt``. Without any history it starts a fresh run.
* The new configuration is compared with the checkpoint's, key by key (plus the number of
  processes and the dataset's vocabulary and split size). ``class_weights`` is compared as the
  scheme it resolves to (``auto`` -> the default of its time; :func:`checkpoint_weight_scheme`),
  so a run trained before the default changed is not resumed with the new one. Keys that do not change the
  computation (:data:`FREE_KEYS`: output, logging, workers, threads, ``max_steps``...) may
  differ. Any other difference refuses the resume, naming each key with its old and new
  value, unless the key is listed in ``--resume-allow KEY[,KEY]``.
* After an allowed change the run continues with the new values; the learning-rate schedule
  stays continuous (:func:`.schedule.plan_schedule`); a changed global batch maps the loader
  position to the first batch not yet fully seen (some samples of the current epoch repeat,
  none is skipped).
"""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List, Optional

from ..config import ConfigError, TrainConfig, checkpoint_weight_scheme

FREE_KEYS = frozenset({"out", "resume", "resume_allow", "progress", "tensorboard", "num_workers", "threads",
                       "max_steps", "ckpt_every", "log_every", "record_keys", "device", "eval_every", "compile"})
PSEUDO_KEYS = ("world_size", "dataset")


class ResumeError(ValueError):
    """A resume that would change the run (or lose its history): one line, what and why."""


def _csv_rows(path: str) -> int:
    try:
        with open(path, newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except OSError:
        return 0


def run_history(out: str) -> List[str]:
    """What of a previous run ``out`` holds (empty when nothing)."""
    found = []
    for name in ("metrics.csv", "val_metrics.csv"):
        n = _csv_rows(os.path.join(out, name))
        if n:
            found.append(f"{name} with {n} rows")
    for rel in (os.path.join("checkpoints", "best.pt"), "summary.json"):
        if os.path.exists(os.path.join(out, rel)):
            found.append(rel)
    return found


def find_resume(cfg: TrainConfig) -> Optional[str]:
    """The checkpoint to resume from, None for a fresh run; refuses a resume that would lose history."""
    if not cfg.resume:
        return None
    if cfg.resume in ("auto", "last", "true", "True", "1", "yes"):
        p = os.path.join(cfg.out, "checkpoints", "last.pt")
        if os.path.exists(p):
            return p
        history = run_history(cfg.out)
        if history:
            raise ResumeError(
                f"--resume {cfg.resume}: {cfg.out} holds a run ({', '.join(history)}) but no checkpoints/last.pt; "
                "starting over would truncate its metrics and replace best.pt. Resume from a checkpoint with "
                "--resume PATH, or train into a new --out")
        return None
    if not os.path.exists(cfg.resume):
        raise FileNotFoundError(f"--resume {cfg.resume}: no such checkpoint")
    return cfg.resume


def allowed_keys(cfg: TrainConfig) -> List[str]:
    keys = [k.strip().replace("-", "_") for k in cfg.resume_allow.split(",") if k.strip()]
    valid = set(TrainConfig.__dataclass_fields__) | set(PSEUDO_KEYS)
    bad = [k for k in keys if k not in valid]
    if bad:
        raise ConfigError(f"--resume-allow: unknown key(s) {bad} (config keys, or {', '.join(PSEUDO_KEYS)})")
    return keys


def config_changes(ck: Dict[str, Any], cfg: TrainConfig, world: int, fingerprint: Dict[str, Any]) -> Dict[str, tuple]:
    """``{key: (checkpoint value, new value)}`` for every difference that changes the run."""
    defaults = TrainConfig().to_dict()
    old, new = dict(ck.get("config") or {}), cfg.to_dict()
    changes = {k: (old.get(k, defaults[k]), v) for k, v in new.items()
               if k not in FREE_KEYS and k != "class_weights" and old.get(k, defaults[k]) != v}
    old_w, new_w = checkpoint_weight_scheme(ck), cfg.weight_scheme()
    if old_w != new_w:
        changes["class_weights"] = (old_w, new_w)
    if int(ck.get("world_size", world)) != world:
        changes["world_size"] = (int(ck["world_size"]), world)
    if ck.get("dataset") and ck["dataset"] != fingerprint:
        changes["dataset"] = (ck["dataset"], fingerprint)
    return changes


def check_resume(ck: Dict[str, Any], cfg: TrainConfig, world: int, fingerprint: Dict[str, Any], path: str) -> Dict[str, tuple]:
    """Raise :class:`ResumeError` naming the changed keys not in ``--resume-allow``; return the
    allowed changes."""
    changes = config_changes(ck, cfg, world, fingerprint)
    allowed = allowed_keys(cfg)
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise ResumeError(f"--resume {path}: the run would change ({what}); resume with the checkpoint's settings, "
                          f"or allow the change with --resume-allow {','.join(refused)}")
    return changes


def map_position(ck: Dict[str, Any], cfg: TrainConfig, world: int) -> int:
    """The next batch index under the new batch geometry (the same one when unchanged)."""
    old_cfg = ck.get("config") or {}
    old_global = int(old_cfg.get("batch_size", cfg.batch_size)) * int(ck.get("world_size", world))
    new_global = cfg.batch_size * world
    batch = int(ck["batch"])
    return batch if old_global == new_global else (batch * old_global) // new_global
