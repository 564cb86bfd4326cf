"""What a run writes while it runs (rank 0): ``metrics.csv`` (one row per log interval),
``val_metrics.csv`` (one row per evaluation), TensorBoard, and the console: a tqdm bar when
stdout is a terminal and ``progress`` is on; always one line per epoch (train loss, lr, speed,
val metrics), so that a log file reads well and holds no carriage-return bars.

On resume the CSVs are cut back to the rows the checkpoint had seen, so that a killed and
resumed run's files equal an uninterrupted run's.
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
from typing import Any, Dict, Optional, Sequence

from .._io import atomic_write_text

TRAIN_CSV_FIELDS = ["step", "epoch", "batch", "loss", "lr", "grad_norm", "clips", "clips_per_s", "elapsed_s", "skipped"]
VAL_CSV_FIELDS = ["epoch", "step", "split", "top1", "top5", "micro_map", "macro_map", "pooled_ap", "num_videos"]
VAL_METRICS = VAL_CSV_FIELDS[3:]


def fmt(v: Any) -> Any:
    """Floats at full precision (exact comparison of loss sequences)."""
    return repr(float(v)) if isinstance(v, float) else v


class CsvLog:
    """Append-only CSV; on resume truncated to the ``keep_rows`` rows the checkpoint had seen."""

    def __init__(self, path: str, fieldnames: Sequence[str], keep_rows: Optional[int]):
        self.path, self.fieldnames, self.rows = path, list(fieldnames), 0
        rows = []
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
        self._f = open(path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.fieldnames)

    def write(self, row: Dict[str, Any]) -> None:
        self._w.writerow({k: fmt(row.get(k, "")) for k in self.fieldnames})
        self._f.flush()
        self.rows += 1

    def close(self) -> None:
        self._f.close()


class TrainLog:
    """CSV + TensorBoard + console of rank 0 (every method is a no-op on other ranks)."""

    def __init__(self, cfg, is_main: bool, keep_rows: Optional[Dict[str, int]], step: int, stop_step: int):
        self.is_main, self.tcsv, self.vcsv, self.writer, self.bar = is_main, None, None, None, None
        if not is_main:
            return
        out = cfg.out
        os.makedirs(out, exist_ok=True)
        cfg.save(os.path.join(out, "config.yaml"))
        keep = keep_rows or {}
        self.tcsv = CsvLog(os.path.join(out, "metrics.csv"), TRAIN_CSV_FIELDS,
                           keep.get("train") if keep_rows is not None else None)
        self.vcsv = CsvLog(os.path.join(out, "val_metrics.csv"), VAL_CSV_FIELDS,
                           keep.get("val") if keep_rows is not None else None)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(out, "tb"), purge_step=step if keep_rows is not None else None)
        if cfg.progress and sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=stop_step, initial=step, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)

    @property
    def train_rows(self) -> int:
        return self.tcsv.rows if self.tcsv else 0

    @property
    def val_rows(self) -> int:
        return self.vcsv.rows if self.vcsv else 0

    @property
    def bar_on(self) -> bool:
        return self.bar is not None

    def line(self, text: str, err: bool = False) -> None:
        """One console line (through tqdm when a bar is shown)."""
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr if err else sys.stdout)
        else:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def train_row(self, row: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.tcsv.write(row)
        if self.writer is not None:
            for k in ("loss", "lr", "grad_norm", "clips_per_s"):
                self.writer.add_scalar(f"train/{k}", row[k], row["step"])
        if self.bar is not None:
            self.bar.set_postfix(epoch=row["epoch"], loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.3g}", refresh=False)

    def val_row(self, epoch: int, step: int, split: str, m: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        row = {"epoch": epoch, "step": step, "split": split}
        row.update({k: float(m[k]) for k in VAL_METRICS if k in m})
        self.vcsv.write(row)
        if self.writer is not None:
            for k in VAL_METRICS:
                if k in m:
                    self.writer.add_scalar(f"val/{k}", float(m[k]), step)

    def close(self) -> None:
        for x in (self.bar, self.tcsv, self.vcsv, self.writer):
            if x is not None:
                x.close()


def epoch_line(epoch: int, step: int, stats: Dict[str, float], lr: float, clips_per_s: float,
               val: Optional[Dict[str, Any]], split: str, bad_samples: Sequence = (), best_metric: str = "") -> str:
    """``[mmit train] epoch 3 step 120: train loss 0.4123, lr 0.00181, 41.2 clips/s; val top1 ...``

    ``bad_samples``: the ``(shard, key, reason)`` of the damaged samples this rank's loader skipped
    during the epoch; when there are any the line ends with their count and the first reason.
    A NaN ``best_metric`` is named: it is never taken as the best."""
    text = (f"[mmit train] epoch {epoch} step {step}: train loss {stats['epoch_loss']:.4f}, lr {lr:.3g}, "
            f"{clips_per_s:.1f} clips/s")
    if val:
        text += f"; {split} " + ", ".join(f"{k} {float(val[k]):.4f}" for k in ("top1", "top5", "micro_map", "macro_map")
                                          if k in val)
        if best_metric in val and math.isnan(float(val[best_metric])):
            text += f"; {split} {best_metric} is NaN: not a best (best.pt unchanged)"
    if bad_samples:
        shard, key, reason = bad_samples[0]
        text += f"; {len(bad_samples)} damaged sample(s) skipped (first: {key} in {shard}: {reason})"
    return text
