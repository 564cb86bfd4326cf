"""M-MiT's per-class count shape, from the paper's statistics, given to the small tasks.

What the paper says (section 3.2): 292 classes; the training classes have "an average of
6,432 example videos and a median of 5,478". Those two numbers are all it gives about the
training counts (Fig. 3 plots them without values), so the shape is pinned by one figure,

    median / mean = 5478 / 6432 = 0.852,

which says: a skewed distribution, but only mildly (a Zipf tail of exponent 1 over 20 classes
has 0.47). How we give a task that shape:

1. keep the family the tasks already draw their classes from -- class probability
   ``p_c ∝ (rank_c + 1) ** -tail`` (a power law in the class rank) -- so that the two shapes of
   a task differ in one number, the exponent, and nothing else;
2. choose the exponent by bisection so that the task's *realised training label counts* (after
   label dropout: what the class weights see) have median/mean = 0.852 (:func:`fit_tail`).

Over 292 classes the same family with median/mean 0.852 has exponent 0.33, max/min 6.6 and
the top-5 classes hold 5.6% of the labels (:func:`mmit_power_law`): "a long but shallow tail".
With 10-20 classes the fitted tasks have max/min ~3-4. The two statistics do not pin the
depth of the tail: a log-normal with the same median/mean would reach max/min ~28 over 292
classes; the results say which figures the tasks have.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict

import numpy as np

MMIT_CLASSES, MMIT_MEAN, MMIT_MEDIAN = 292, 6432, 5478
TARGET = MMIT_MEDIAN / MMIT_MEAN   # 0.852


def _ratio(counts) -> float:
    c = np.asarray(counts, dtype=np.float64)
    return float(np.median(c) / c.mean())


def fit_tail(spec, target: float = TARGET, lo: float = 0.0, hi: float = 1.5, iters: int = 14) -> float:
    """The Zipf exponent (rounded to 0.01) whose realised training counts of ``spec``'s task
    have median/mean closest to ``target`` (bisection; the ratio falls as the exponent grows).
    Counts come from ``_repro.train_label_counts`` (labels only, nothing rendered)."""
    import _repro as R

    def ratio(t: float) -> float:
        return _ratio(R.train_label_counts(replace(spec, tail=t)))

    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if ratio(mid) > target:
            lo = mid
        else:
            hi = mid
    cands = sorted({round(lo, 2), round(hi, 2), round(0.5 * (lo + hi), 2)})
    return min(cands, key=lambda t: (abs(ratio(t) - target), t))


def mmit_power_law(classes: int = MMIT_CLASSES, target: float = TARGET) -> Dict[str, Any]:
    """The power law ``n_r ∝ r ** -a`` over ``classes`` ranks with median/mean = ``target``,
    scaled to M-MiT's mean: exponent, max/min, top-5 share, median and mean."""
    r = np.arange(1, classes + 1, dtype=np.float64)
    lo, hi = 0.0, 3.0
    for _ in range(60):
        a = 0.5 * (lo + hi)
        lo, hi = (a, hi) if _ratio(r ** -a) > target else (lo, a)
    n = r ** -a
    n *= MMIT_MEAN / n.mean()
    return {"exponent": a, "max_over_min": float(n.max() / n.min()), "top5_share": float(n[:5].sum() / n.sum()),
            "median": float(np.median(n)), "mean": float(n.mean()), "classes": classes}
