"""Per-class loss weights from per-class training counts.

``n_i`` is the number of training videos carrying label ``i`` (``Manifest.class_counts('train')``).

* ``"min_ratio"`` (the authors' code): ``w_i = min_k n_k / n_i`` -- the rarest class gets 1,
  frequent classes get less.
* ``"none"``: ``w_i = 1``.
* ``"tempered"``: ``w_i = (min_k n_k / n_i) ** power`` (``power=0.5`` by default): a softer
  inverse frequency; ``power=1`` is ``min_ratio``, ``power=0`` is ``none``.

Zero-count classes (a label never seen in training): the minimum is taken over the classes
with ``n_k > 0`` and a zero-count class gets weight ``0`` (by default, ``zero="zero"``): it
has no training positives, so the weight only ever multiplies terms that cannot occur in
training, and a 0 keeps it from dominating if it does appear (e.g. a relabelled set).
``zero="max"`` gives it the largest weight of the scheme (1) instead. If every class has
count 0, all weights are 1.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["class_weights", "SCHEMES"]

SCHEMES = ("none", "min_ratio", "tempered")


def class_weights(counts, scheme: str = "min_ratio", *, power: float = 0.5, zero: str = "zero",
                  dtype=torch.float32) -> torch.Tensor:
    """Class weights (a 1-D float tensor of length C) from per-class counts.

    ``counts``: sequence / array / tensor of C non-negative numbers, or a mapping
    ``{class_index: count}`` covering ``0..C-1``.
    """
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
    if scheme not in SCHEMES:
        raise ValueError(f"class_weights: unknown scheme {scheme!r}; choose one of {SCHEMES}")
    if zero not in ("zero", "max"):
        raise ValueError(f"class_weights: zero must be 'zero' or 'max', got {zero!r}")
    if power < 0:
        raise ValueError(f"class_weights: power must be >= 0, got {power}")
    if scheme == "none":
        return torch.ones(n.size, dtype=dtype)
    seen = n > 0
    if not seen.any():
        return torch.ones(n.size, dtype=dtype)
    ratio = np.ones_like(n)
    ratio[seen] = n[seen].min() / n[seen]
    if scheme == "tempered":
        ratio[seen] = ratio[seen] ** power
    ratio[~seen] = 0.0 if zero == "zero" else 1.0
    return torch.as_tensor(ratio, dtype=dtype)
