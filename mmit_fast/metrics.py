r"""Multi-label evaluation (paper section 6.2): top-1, top-5, micro mAP, macro mAP, pooled AP.

Inputs: ``scores`` S (N x C, any real numbers: logits or probabilities; only their order
matters) and ``targets`` Y (N x C multi-hot, 0/1), numpy arrays or torch tensors.

**Average precision** of a ranking of n items by score s with positive set P (the definition
of scikit-learn's ``average_precision_score``, ties included)::

    AP = 1/|P| * sum_{i in P}  #{j in P : s_j >= s_i} / #{j : s_j >= s_i}

i.e. the precision at each positive's score threshold, where every item *tied* with it
counts as ranked at or above it (scikit-learn's step-wise precision-recall curve with one
step per distinct score). ``label_ranking_average_precision_score`` uses the same formula per
row, so row-wise AP equals it on rows with at least one positive (it scores rows with no
positive, or all positive, as 1; we exclude no-positive rows, see below).

* **top1** — fraction of videos whose highest-scoring class is a positive; **top5** — any of
  the 5 highest. Ties in the scores are broken as scikit-learn's ``top_k_accuracy_score``
  does: among equal scores the class with the *higher* index ranks first.
* **micro_map** (paper: "mean average precision over all videos", mmaction2's
  ``mmit_mean_average_precision``): AP of each video's ranking of the C classes, averaged
  over videos.
* **macro_map**: AP of each class's ranking of the N videos, averaged over classes with at
  least one positive video. **per_class_ap**: those APs (NaN for classes without positives).
* **pooled_ap**: AP of the single ranking of all N*C (video, class) scores (scikit-learn's
  ``average_precision_score(Y, S, average="micro")``).

Videos with **no positive label** have no defined AP and no possible top-k hit: they are left
out of top1, top5 and micro_map (mmaction2 would return NaN), but kept for macro_map,
pooled_ap and per_class_ap (where they are valid negatives); their count is reported as
``num_videos_without_positive``. (M-MiT videos all have at least one label.)

**Table 2 modes**: ``class_subset`` (class indices or a boolean mask over C) keeps those
columns and drops the videos with no positive among them; ``single_label=True`` then keeps
only the videos with exactly one positive (single-label ground truth).

Exact, not approximate: one sort per row / column, O(N C log) time; the streaming
:class:`MetricAccumulator` stores the scores in their own precision (float32 stays float32:
10 K x 292 is 11.7 MB) and gives bit-identical results to :func:`evaluate` on the
concatenation.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._io import atomic_write_text

__all__ = [
    "evaluate", "MetricAccumulator", "average_precision_rows", "per_class_ap_csv", "format_table_row",
    "results_table_markdown", "results_table_json", "result_to_json", "TABLE_COLUMNS",
]

ArrayLike = Any
TABLE_COLUMNS = (("top1", "top-1"), ("top5", "top-5"), ("micro_map", "micro mAP"), ("macro_map", "macro mAP"))


# ---------------------------------------------------------------------------- input checks
def _to_numpy(x: ArrayLike, what: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            x = x.numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.asarray(x)
    if a.dtype == object:
        raise ValueError(f"{what}: not a numeric array")
    return a


def _check_scores(scores: ArrayLike) -> np.ndarray:
    s = _to_numpy(scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"scores must be a 2-D array N x C, got shape {s.shape}")
    if s.dtype == np.float16 or not np.issubdtype(s.dtype, np.floating):
        if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool):
            raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
        s = s.astype(np.float64 if s.dtype.itemsize > 4 or np.issubdtype(s.dtype, np.integer) else np.float32)
    if not np.all(np.isfinite(s)):
        bad = np.argwhere(~np.isfinite(s))[0]
        raise ValueError(f"scores contain NaN or infinity (first at row {bad[0]}, class {bad[1]})")
    return s


def _check_targets(targets: ArrayLike, shape: Tuple[int, ...]) -> np.ndarray:
    y = _to_numpy(targets, "targets")
    if y.ndim != 2:
        raise ValueError(f"targets must be a 2-D multi-hot array N x C, got shape {y.shape}")
    if tuple(y.shape) != tuple(shape):
        raise ValueError(f"shape mismatch: scores are {tuple(shape)} but targets are {tuple(y.shape)}")
    if y.dtype != bool:
        if not np.issubdtype(y.dtype, np.number):
            raise ValueError(f"targets must be numeric 0/1, got dtype {y.dtype}")
        ok = (y == 0) | (y == 1)
        if not np.all(ok):
            bad = np.argwhere(~ok)[0]
            raise ValueError(f"targets must be binary (0/1): found {y[bad[0], bad[1]]!r} at row {bad[0]}, class {bad[1]}")
        y = y == 1
    return y


def _subset_columns(class_subset, num_classes: int) -> np.ndarray:
    sub = np.asarray(class_subset)
    if sub.dtype == bool:
        if sub.shape != (num_classes,):
            raise ValueError(f"class_subset mask has shape {sub.shape}, needs ({num_classes},)")
        idx = np.flatnonzero(sub)
    else:
        if sub.ndim != 1 or not np.issubdtype(sub.dtype, np.integer):
            if sub.size == 0:
                sub = sub.astype(np.int64).reshape(-1)
            else:
                raise ValueError("class_subset must be a 1-D sequence of class indices or a boolean mask")
        idx = sub.astype(np.int64)
        if np.any((idx < 0) | (idx >= num_classes)):
            raise ValueError(f"class_subset has indices outside [0, {num_classes}): {idx[(idx < 0) | (idx >= num_classes)][:5].tolist()}")
        if len(np.unique(idx)) != len(idx):
            raise ValueError("class_subset has duplicate class indices")
    if idx.size == 0:
        raise ValueError("class_subset is empty")
    return idx


# ---------------------------------------------------------------------------- the AP kernel
def average_precision_rows(scores: np.ndarray, targets: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """AP of each row's ranking (scikit-learn's tie treatment); NaN for rows with no positive.

    For each row: sort descending; for a position i, ``end(i)`` is the last position of its
    tie group; the precision credited to a positive at i is ``TP(end(i)) / (end(i) + 1)``.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=bool)
    n, m = scores.shape
    out = np.empty(n, dtype=np.float64)
    if m == 0:
        out[:] = np.nan
        return out
    step = max(1, int(chunk * 256 // max(m, 1)))  # ~1M elements per chunk
    cols = np.arange(m)
    for a in range(0, n, step):
        s = scores[a:a + step]
        y = targets[a:a + step]
        order = np.argsort(-s, axis=1)  # tie order is irrelevant: tie groups are handled below
        ss = np.take_along_axis(s, order, axis=1)
        yy = np.take_along_axis(y, order, axis=1)
        tp = np.cumsum(yy, axis=1, dtype=np.int64)
        is_end = np.ones(ss.shape, dtype=bool)
        is_end[:, :-1] = ss[:, :-1] != ss[:, 1:]
        end = np.where(is_end, cols, m)
        end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
        prec = np.take_along_axis(tp, end, axis=1) / (end + 1.0)
        npos = tp[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = np.where(yy, prec, 0.0).sum(axis=1) / npos
        ap[npos == 0] = np.nan
        out[a:a + step] = ap
    return out


def _topk_hits(scores: np.ndarray, targets: np.ndarray, ks: Sequence[int]) -> Dict[int, np.ndarray]:
    """Per-row hit (bool) for each k, scikit-learn's top_k_accuracy_score tie rule."""
    n, m = scores.shape
    kmax = min(max(ks), m)
    hits = {k: np.empty(n, dtype=bool) for k in ks}
    step = max(1, (1 << 20) // max(m, 1))
    for a in range(0, n, step):
        s = scores[a:a + step]
        order = np.argsort(s, axis=1, kind="mergesort")[:, ::-1][:, :kmax]
        hit_at = np.take_along_axis(targets[a:a + step], order, axis=1)
        for k in ks:
            hits[k][a:a + step] = hit_at[:, :min(k, m)].any(axis=1)
    return hits


# ---------------------------------------------------------------------------- evaluate
def evaluate(scores: ArrayLike, targets: ArrayLike, class_subset: Optional[ArrayLike] = None,
             single_label: bool = False) -> Dict[str, Any]:
    """All metrics of the module docstring in one dict.

    Returns ``top1``, ``top5``, ``micro_map``, ``macro_map``, ``pooled_ap`` (floats in [0, 1],
    NaN when undefined, e.g. no video or no class with a positive), ``per_class_ap`` (float64
    array over the evaluated classes, NaN where a class has no positive), ``num_positives``
    (per evaluated class), ``class_indices`` (the evaluated columns of the input),
    ``num_videos`` (rows evaluated), ``num_videos_without_positive``, ``num_classes_evaluated``
    (classes with at least one positive, the denominator of macro_map), ``num_labels``.
    Raises ValueError on a shape mismatch, non-binary targets, NaN/inf scores, a bad subset.
    """
    s = _check_scores(scores)
    y = _check_targets(targets, s.shape)
    n, c = s.shape
    cols = np.arange(c) if class_subset is None else _subset_columns(class_subset, c)
    if class_subset is not None:
        s, y = s[:, cols], y[:, cols]
        keep = y.any(axis=1)
        s, y = s[keep], y[keep]
    if single_label:
        keep = y.sum(axis=1) == 1
        s, y = s[keep], y[keep]
    n = s.shape[0]
    res: Dict[str, Any] = {}
    has_pos = y.any(axis=1)
    sp, yp = s[has_pos], y[has_pos]
    if sp.shape[0]:
        hits = _topk_hits(sp, yp, (1, 5))
        res["top1"] = float(hits[1].mean())
        res["top5"] = float(hits[5].mean())
        res["micro_map"] = float(np.mean(average_precision_rows(sp, yp)))
    else:
        res["top1"] = res["top5"] = res["micro_map"] = float("nan")
    if n:
        per_class = average_precision_rows(s.T, y.T)
        pooled = float(average_precision_rows(s.reshape(1, -1), y.reshape(1, -1))[0])
    else:
        per_class = np.full(len(cols), np.nan)
        pooled = float("nan")
    valid = ~np.isnan(per_class)
    res["macro_map"] = float(per_class[valid].mean()) if valid.any() else float("nan")
    res["pooled_ap"] = pooled
    res["per_class_ap"] = per_class
    res["num_positives"] = y.sum(axis=0).astype(np.int64)
    res["class_indices"] = cols
    res["num_videos"] = int(n)
    res["num_videos_without_positive"] = int(n - has_pos.sum())
    res["num_classes_evaluated"] = int(valid.sum())
    res["num_labels"] = int(y.sum())
    return res


class MetricAccumulator:
    """Streaming :func:`evaluate`: ``update(scores, targets)`` per batch, ``compute()`` at the end.

    Scores are kept as chunks in their own float precision (float32 in, float32 stored;
    10 K videos x 292 classes = 11.7 MB) and targets as booleans, so ``compute()`` is exactly
    ``evaluate`` on the concatenation (same numbers to the last bit). ``merge(other)`` adds
    another accumulator's chunks (e.g. gathered from other ranks).
    """

    def __init__(self, num_classes: int):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.reset()

    def reset(self) -> None:
        self._scores: List[np.ndarray] = []
        self._targets: List[np.ndarray] = []
        self.num_videos = 0

    def update(self, scores: ArrayLike, targets: ArrayLike) -> None:
        s = _check_scores(scores)
        if s.shape[1] != self.num_classes:
            raise ValueError(f"shape mismatch: accumulator has {self.num_classes} classes, scores are {s.shape}")
        y = _check_targets(targets, s.shape)
        self._scores.append(np.array(s, copy=True))
        self._targets.append(np.array(y, copy=True))
        self.num_videos += s.shape[0]

    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge accumulators of {other.num_classes} and {self.num_classes} classes")
        self._scores += other._scores
        self._targets += other._targets
        self.num_videos += other.num_videos
        return self

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        """(scores N x C, targets N x C bool) accumulated so far."""
        if not self._scores:
            return np.zeros((0, self.num_classes), np.float32), np.zeros((0, self.num_classes), bool)
        dt = np.result_type(*[a.dtype for a in self._scores])
        return np.concatenate(self._scores).astype(dt, copy=False), np.concatenate(self._targets)

    def compute(self, class_subset: Optional[ArrayLike] = None, single_label: bool = False) -> Dict[str, Any]:
        if not self._scores:
            raise ValueError("MetricAccumulator.compute(): no batch was added")
        s, y = self.arrays()
        return evaluate(s, y, class_subset=class_subset, single_label=single_label)


# ---------------------------------------------------------------------------- reporting
def _nan_to_none(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def result_to_json(result: Dict[str, Any]) -> Dict[str, Any]:
    """A JSON-serialisable copy of an :func:`evaluate` result (arrays -> lists, NaN -> null)."""
    out = {}
    for k, v in result.items():
        if isinstance(v, np.ndarray):
            out[k] = [_nan_to_none(x) for x in v.tolist()]
        elif isinstance(v, (np.floating, float)):
            out[k] = _nan_to_none(float(v))
        elif isinstance(v, np.integer):
            out[k] = int(v)
        else:
            out[k] = v
    return out


def per_class_ap_csv(result: Dict[str, Any], classes: Optional[Sequence[str]], path) -> None:
    """Write ``class_index,class,num_positives,ap`` (ap empty where undefined), one row per
    evaluated class, sorted by class index; atomically. ``classes``: the full vocabulary (names
    indexed by the original class index), or None."""
    idx = np.asarray(result.get("class_indices", np.arange(len(result["per_class_ap"]))))
    ap = np.asarray(result["per_class_ap"], dtype=np.float64)
    npos = np.asarray(result.get("num_positives", np.full(len(ap), -1)))
    if classes is not None and len(idx) and int(idx.max()) >= len(classes):
        raise ValueError(f"per_class_ap_csv: class index {int(idx.max())} but only {len(classes)} class names")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class_index", "class", "num_positives", "ap"])
    for j, i in enumerate(idx):
        w.writerow([int(i), classes[int(i)] if classes is not None else "", int(npos[j]),
                    "" if np.isnan(ap[j]) else repr(float(ap[j]))])
    atomic_write_text(path, buf.getvalue())


def _pct(v) -> str:
    v = float(v)
    return "n/a" if math.isnan(v) else f"{100.0 * v:.1f}"


def format_table_row(name: str, loss: str, result: Dict[str, Any]) -> str:
    """One Table 1-style markdown row: ``| model | loss | top-1 | top-5 | micro mAP | macro mAP |``
    in percent with one decimal."""
    return "| " + " | ".join([str(name), str(loss)] + [_pct(result[k]) for k, _ in TABLE_COLUMNS]) + " |"


def results_table_markdown(rows: Iterable[Union[Tuple[str, str, Dict[str, Any]], Dict[str, Any]]]) -> str:
    """A markdown table from ``(name, loss, result)`` tuples or dicts with ``model``, ``loss``
    and the metric keys (e.g. the JSON of :func:`results_table_json`)."""
    lines = ["| model | loss | " + " | ".join(h for _, h in TABLE_COLUMNS) + " |",
             "|---|---|" + "---|" * len(TABLE_COLUMNS)]
    for r in rows:
        if isinstance(r, dict):
            name, loss, res = r.get("model", ""), r.get("loss", ""), {k: (float("nan") if r.get(k) is None else r[k]) for k, _ in TABLE_COLUMNS}
        else:
            name, loss, res = r
        lines.append(format_table_row(name, loss, res))
    return "\n".join(lines) + "\n"


def results_table_json(rows: Iterable[Tuple[str, str, Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """``[{"model", "loss", "top1", "top5", "micro_map", "macro_map", "pooled_ap", "num_videos"}]``
    (fractions, null where undefined) for ``json.dump``."""
    out = []
    for name, loss, res in rows:
        d = {"model": name, "loss": loss}
        for k in ("top1", "top5", "micro_map", "macro_map", "pooled_ap"):
            d[k] = _nan_to_none(float(res[k]))
        d["num_videos"] = int(res.get("num_videos", 0))
        out.append(d)
    return out

