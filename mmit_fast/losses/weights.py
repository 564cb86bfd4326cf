"""Per-class loss weights from per-class training counts: one axis, apart from the loss form.

``n_i`` is the number of training videos carrying label ``i`` (``Manifest.class_counts('train')``);
``S = {k : n_k > 0}`` the classes seen in training, ``m = min_{k in S} n_k``. The paper gives no
formula for its w_i ("a weight balancing term ... for underrepresented classes", section 4); the
schemes in the field:

* ``"none"``: ``w_i = 1`` (eqs. 1-3 as printed; eq. 4 unweighted).
* ``"min_ratio"``: ``w_i = m / n_i``, the rarest seen class gets 1. Source: the authors'
  public loss code ("We used w_i = min(count)/count_i for the weights to train the
  Multi-Moments model").
* ``"tempered"``: ``w_i = (m / n_i) ** p`` (``power=p``, default 0.5): a softened inverse
  frequency; ``p = 1`` is ``min_ratio``, ``p = 0`` is ``none``. ``p = 0.5`` is the inverse
  square root of the frequency, the usual softening in long-tail work (e.g. Mahajan et al.,
  "Exploring the Limits of Weakly Supervised Pretraining", ECCV 2018, square-root sampling).
* ``"effective_number"``: ``w_i = |S| * v_i / sum_{k in S} v_k`` with
  ``v_i = (1 - beta) / (1 - beta ** n_i)`` (``beta``, default 0.999): the inverse of the
  effective number of samples ``E_n = (1 - beta^n) / (1 - beta)``, normalised so that the
  weights of the seen classes sum to their number (mean 1). Source: Cui, Jia, Lin, Song,
  Belongie, "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019, eq. 3 and
  the normalisation after it (there: the weights sum to the number of classes); they search
  ``beta`` in {0.9, 0.99, 0.999, 0.9999}.

``beta = 0`` gives ``none``; ``beta -> 1`` gives inverse frequency (``min_ratio`` up to a
constant factor). ``E_n`` saturates at ``1 / (1 - beta)``: classes with many more samples than
that get nearly equal weights, so ``beta`` sets the count scale (0.999: ~1,000 samples) -- a
fixed ``beta`` means different things on M-MiT (thousands per class) and on a small dataset.

Zero-count classes (a label never seen in training: ``1 - beta ** 0 = 0`` and ``m / 0`` are
undefined) are handled explicitly by ``zero=``: ``"zero"`` (default) gives weight 0 -- the class
has no training positives, so its weight multiplies terms that cannot occur in training, and a
0 keeps it from dominating if it does appear (e.g. a relabelled set) -- ``"max"`` gives it the
largest weight of the seen classes. The minimum and the normalisation run over ``S`` only, so
adding an unseen class never changes the weights of the others. ``"none"`` gives 1 to every
class. If no class is seen, every scheme gives all ones.

A scheme may carry its parameter in its name -- ``"tempered:0.25"``, ``"effective_number:0.99"``
-- the form ``class_weights: ...`` takes in a training config (:func:`parse_scheme`).

:data:`DEFAULT_WLSEP_SCHEME` is what ``class_weights: auto`` gives ``--loss wlsep``; it was
chosen by the study in ``benchmarks/results/repro_losses.md`` (the README's "Class weights").
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

__all__ = ["class_weights", "parse_scheme", "SCHEMES", "DEFAULT_WLSEP_SCHEME"]

SCHEMES = ("none", "min_ratio", "tempered", "effective_number")
_PARAM = {"tempered": "power", "effective_number": "beta"}   # the one parameter a name may carry
DEFAULT_WLSEP_SCHEME = "tempered"


def parse_scheme(spec: str) -> Tuple[str, Dict[str, float]]:
    """``"tempered:0.25"`` -> ``("tempered", {"power": 0.25})``; ``"min_ratio"`` -> ``("min_ratio", {})``.

    Raises ``ValueError`` naming the spec for an unknown scheme, a parameter on a scheme
    that has none, or a parameter that is not a number."""
    name, sep, arg = str(spec).partition(":")
    if name not in SCHEMES:
        raise ValueError(f"class_weights: unknown scheme {spec!r}; choose one of {SCHEMES} "
                         f"(tempered and effective_number may carry their parameter: 'tempered:0.5')")
    if not sep:
        return name, {}
    if name not in _PARAM:
        raise ValueError(f"class_weights: scheme {name!r} takes no parameter, got {spec!r}")
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"class_weights: the {_PARAM[name]} in {spec!r} is not a number") from None
    return name, {_PARAM[name]: value}


def _as_counts(counts) -> np.ndarray:
    if isinstance(counts, dict):
        keys = sorted(counts)
        if keys != list(range(len(keys))):
            raise ValueError("class_weights: a counts mapping must have the keys 0..C-1")
        counts = [counts[k] for k in keys]
    if isinstance(counts, torch.Tensor):
        n = counts.detach().cpu().to(torch.float64).numpy()
    else:
        n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"class_weights: counts must be a non-empty 1-D sequence, got shape {n.shape}")
    if not np.all(np.isfinite(n)):
        raise ValueError("class_weights: counts contain NaN or Inf")
    if np.any(n < 0):
        raise ValueError(f"class_weights: counts must be >= 0; class {int(np.argmax(n < 0))} has {n[n < 0][0]}")
    return n


def _seen_weights(n: np.ndarray, scheme: str, power: float, beta: float) -> np.ndarray:
    """The scheme's weights of the seen classes ``n`` (all > 0), float64."""
    if scheme == "effective_number":
        # (1 - beta) / (1 - beta^n), with 1 - beta^n = -expm1(n log(beta)) (no cancellation near beta = 1)
        v = np.ones_like(n) if beta == 0.0 else (1.0 - beta) / -np.expm1(n * np.log(beta))
        return v * (n.size / v.sum())
    ratio = n.min() / n
    return ratio ** power if scheme == "tempered" else ratio


def class_weights(counts, scheme: str = "min_ratio", *, power: float = 0.5, beta: float = 0.999,
                  zero: str = "zero", dtype=torch.float32) -> torch.Tensor:
    """Class weights (a 1-D float tensor of length C) from per-class counts (module doc).

    ``counts``: sequence / array / tensor of C non-negative numbers, or a mapping
    ``{class_index: count}`` covering ``0..C-1``. ``scheme``: one of :data:`SCHEMES`, optionally
    with its parameter (``"tempered:0.25"`` overrides ``power``, ``"effective_number:0.99"``
    overrides ``beta``). ``power >= 0``; ``0 <= beta < 1``; ``zero``: ``"zero"`` | ``"max"``.
    """
    n = _as_counts(counts)
    scheme, params = parse_scheme(scheme)
    power = params.get("power", power)
    beta = params.get("beta", beta)
    if zero not in ("zero", "max"):
        raise ValueError(f"class_weights: zero must be 'zero' or 'max', got {zero!r}")
    if not power >= 0:
        raise ValueError(f"class_weights: power must be >= 0, got {power}")
    if not 0 <= beta < 1:
        raise ValueError(f"class_weights: beta must be in [0, 1), got {beta}")
    seen = n > 0
    if scheme == "none" or not seen.any():
        return torch.ones(n.size, dtype=dtype)
    w = np.empty_like(n)
    w[seen] = _seen_weights(n[seen], scheme, power, beta)
    w[~seen] = 0.0 if zero == "zero" else w[seen].max()
    return torch.as_tensor(w, dtype=dtype)
