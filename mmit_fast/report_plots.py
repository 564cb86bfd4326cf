"""The pictures of ``mmit report``: matplotlib (Agg) figures returned as PNG bytes, so the
page can embed them as ``data:`` URIs. Numbers in, bytes out; no file reading here."""
from __future__ import annotations

import io
from typing import Dict, List, Optional, Sequence

import numpy as np

METRIC_NAMES = {"top1": "top-1", "top5": "top-5", "micro_map": "micro mAP", "macro_map": "macro mAP"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def _text(s) -> str:
    """A string from data as plot text: ``$`` escaped, so a class name is never read as mathtext."""
    return str(s).replace("$", r"\$")


def _col(rows: List[Dict[str, str]], key: str) -> np.ndarray:
    """A numeric column of CSV rows; blanks and non-numbers become NaN."""
    out = []
    for r in rows:
        try:
            out.append(float(r.get(key, "") or "nan"))
        except ValueError:
            out.append(float("nan"))
    return np.asarray(out, dtype=np.float64)


def curves_png(train_rows: List[Dict[str, str]], val_rows: List[Dict[str, str]],
               chance: Optional[Dict[str, float]] = None) -> bytes:
    """Three panels: training loss per step (with a moving average), learning rate per step,
    validation metrics per evaluation (epoch), with the chance level dashed when known."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    step = _col(train_rows, "step")
    loss = _col(train_rows, "loss")
    ax = axes[0]
    if len(step):
        ax.plot(step, loss, color="#95a5a6", lw=0.8, label="loss")
        k = max(1, len(loss) // 20)
        if k > 1 and len(loss) >= k:
            smooth = np.convolve(np.nan_to_num(loss), np.ones(k) / k, mode="valid")
            ax.plot(step[k - 1:], smooth, color="#c0392b", lw=1.6, label=f"mean of {k}")
        ax.legend(fontsize=8)
    ax.set(title="training loss", xlabel="optimiser step")
    ax = axes[1]
    if len(step):
        ax.plot(step, _col(train_rows, "lr"), color="#2c3e50")
    ax.set(title="learning rate", xlabel="optimiser step")
    ax = axes[2]
    x = _col(val_rows, "epoch")
    colors = {"top1": "#2980b9", "top5": "#8e44ad", "micro_map": "#c0392b", "macro_map": "#27ae60"}
    for k, name in METRIC_NAMES.items():
        y = 100 * _col(val_rows, k)
        if len(y) and np.isfinite(y).any():
            ax.plot(x, y, marker="o", ms=3, color=colors[k], label=name)
            if chance and k in chance:
                ax.axhline(100 * chance[k], color=colors[k], ls="--", lw=0.8)
    ax.set(title="validation (dashed: chance)", xlabel="epoch", ylabel="%", ylim=(0, 100))
    if len(x):
        ax.legend(fontsize=8, loc="lower right")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def per_class_ap_png(names: Sequence[str], ap: Sequence[float], eval_pos: Sequence[int],
                     train_counts: Optional[Sequence[int]] = None) -> bytes:
    """Horizontal bars of per-class AP, sorted best first; each label carries the class's
    positives in the evaluated split (and its training count when known). Classes without a
    positive (AP undefined) are listed last, marked "no positives" (no bar)."""
    plt = _plt()
    ap = np.asarray(ap, dtype=np.float64)
    order = sorted(range(len(names)), key=lambda i: (np.isnan(ap[i]), -np.nan_to_num(ap[i])))
    labels = []
    for i in order:
        freq = f"eval {int(eval_pos[i])}"
        if train_counts is not None:
            freq = f"train {int(train_counts[i])}, " + freq
        labels.append(f"{_text(names[i])} ({freq})")
    h = max(2.5, 0.24 * len(order) + 0.8)
    fig, ax = plt.subplots(figsize=(8, h))
    vals = [100 * np.nan_to_num(ap[i]) for i in order]
    colors = ["#bdc3c7" if np.isnan(ap[i]) else "#c0392b" for i in order]
    ax.barh(range(len(order)), vals, color=colors)
    for row, i in enumerate(order):
        if np.isnan(ap[i]):
            ax.text(1, row, "no positives in this split", va="center", fontsize=8, color="#666666")
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 100), xlabel="AP (%)", title="per-class AP, sorted (class: training / evaluation positives)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)
