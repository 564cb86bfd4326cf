"""The end of a run: per-rank records (samples seen, parameter digest) and ``summary.json``."""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Dict

import torch
import torch.nn as nn

from .._io import atomic_write_json
from ..inference import unwrap
from ..distributed import barrier


def param_digest(model: nn.Module) -> str:
    """SHA-256 of the parameters (float64 bytes, in order): equal on every rank of a correct run.
    Buffers are left out: BatchNorm running statistics are each rank's own between evaluations
    (DDP broadcasts rank 0's at the start of every forward pass)."""
    h = hashlib.sha256()
    for k, v in unwrap(model).named_parameters():
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def finish(run) -> Dict[str, Any]:
    elapsed = time.time() - run.t0
    clips = run.clips_run + run.clips
    digest = param_digest(run.model)
    out = run.cfg.out
    os.makedirs(os.path.join(out, "ranks"), exist_ok=True)
    atomic_write_json(os.path.join(out, "ranks", f"rank{run.rank}.json"), {
        "rank": run.rank, "world_size": run.world, "samples_seen": run.samples_seen, "param_digest": digest,
        "steps": run.step, "device": str(run.device)})
    last, best = os.path.join(run.ck_dir, "last.pt"), os.path.join(run.ck_dir, "best.pt")
    summary = {
        "out": os.path.abspath(out), "steps": run.step, "steps_run": run.step - run.start_step,
        "epochs_done": run.epoch, "world_size": run.world, "device": str(run.device), "amp": run.amp_mode or "off",
        "elapsed_s": elapsed, "steps_per_s": (run.step - run.start_step) / elapsed if elapsed > 0 else None,
        "clips_per_s": clips / elapsed if elapsed > 0 else None, "skipped_nonfinite": run.skipped,
        "best": run.best, "last_val": run.last_val, "last_checkpoint": os.path.abspath(last),
        "best_checkpoint": os.path.abspath(best) if os.path.exists(best) else None, "param_digest": digest,
    }
    barrier()
    if run.is_main:
        run.log.close()
        atomic_write_json(os.path.join(out, "summary.json"), summary)
    return summary
