"""Public loss functions and ``nn.Module`` wrappers (drop-in for ``nn.BCEWithLogitsLoss``).

All four losses are exact over all (positive, negative) pairs of a row -- no sampling
(paper.md section 2). x = logits [B, C], Y = the positives of a row, w = class weights:

* ``bce_loss``:   ``L = sum_i w_i [softplus(x_i) - y_i x_i]`` (paper eq. 1; summed over the C
  classes of a row, then reduced over rows -- note ``nn.BCEWithLogitsLoss`` averages over
  B*C elements instead, i.e. its value is ours / C).
* ``warp_loss``:  ``L = 1/|Y| sum_{i in Y} w_i H(R_i) sum_{j notin Y} max(0, 1 + x_j - x_i)``,
  ``R_i = #{j notin Y: 1 + x_j - x_i > 0}``, ``H(r) = sum_{k<=r} 1/k`` (held constant for the
  gradient) -- eq. 2 with the exact rank instead of WARP's sampled estimate.
* ``lsep_loss``:  ``L = log(1 + sum_{i in Y} w_i sum_{j notin Y} exp(x_j - x_i))`` (eq. 3 for
  w = 1; with weights, each positive's pair terms are scaled by w_i inside the log).
* ``wlsep_loss``: ``L = 1/|Y| sum_{i in Y} w_i log(1 + sum_{j notin Y} exp(x_j - x_i))`` (eq. 4).

A row with no positive or no negative gives 0 loss and 0 gradient for the ranking losses.
``reduction``: ``'mean'`` (over the B rows), ``'sum'``, ``'none'`` ([B] row losses).
``wlsep_loss(normalize='pair')`` is the authors' variant: the row value drops the 1/|Y| and
``'mean'`` divides the batch sum by the number of (sample, positive) pairs, ``targets.sum()``
(``'none'`` then returns the un-normalised row sums).

Inputs: ``logits`` [B, C] float16 / bfloat16 / float32 / float64; ``targets`` [B, C] multi-hot
(bool, uint8, integer or float holding only 0 and 1 -- bool, uint8 and float32/64 are read by
the kernels as they are and validated there, see ``errors.py``), same device; ``weights`` None or C
non-negative finite numbers. Accumulation is float32 (float64 for float64 logits); the loss
comes back as float32 (float64) and the gradient in the logits' dtype. Inputs are never
written to. ``check_finite=True`` raises on NaN/Inf logits (by default they propagate, as in
torch's losses). ``backend=`` picks the implementation (see ``function.select_backend``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .errors import BadTargets
from .function import apply_loss

__all__ = ["bce_loss", "warp_loss", "lsep_loss", "wlsep_loss", "BCELoss", "WARPLoss", "LSEPLoss", "WLSEPLoss",
           "get_loss", "LOSSES"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REDUCTIONS = ("mean", "sum", "none")


def _check_weight_values(name, w):
    """Finite and non-negative (one host sync); modules run it once, at construction."""
    finite, nonneg = torch.isfinite(w).all(), (w >= 0).all()
    if not bool(finite):
        raise ValueError(f"{name}: weights contain NaN or Inf")
    if not bool(nonneg):
        k = int((w < 0).nonzero()[0])
        raise ValueError(f"{name}: weights must be >= 0; weights[{k}] = {w[k].item()}")


def _validate(name, logits, targets, weights, reduction, check_finite, weights_checked=False):
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{name}: logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"{name}: targets must be a torch.Tensor, got {type(targets).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{name}: logits must be 2-D [batch, classes], got shape {tuple(logits.shape)}")
    if logits.dtype not in _FLOATS:
        raise ValueError(f"{name}: logits dtype must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    if targets.shape != logits.shape:
        raise ValueError(f"{name}: targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape)}")
    if targets.device != logits.device:
        raise ValueError(f"{name}: targets are on {targets.device} but logits on {logits.device}")
    if targets.is_complex():
        raise ValueError(f"{name}: targets dtype {targets.dtype} is not a multi-hot type (bool, uint8, int or float)")
    # the 0/1 values are checked by the kernels while they read the targets (errors.py)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if check_finite and logits.numel() and not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{name}: logits contain NaN or Inf (check_finite=True)")
    C = logits.shape[1]
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if weights is None:
        return None
    if (weights_checked and type(weights) is torch.Tensor and weights.dtype is acc and weights.dim() == 1
            and weights.shape[0] == C and weights.device == logits.device and weights.is_contiguous()
            and not weights.requires_grad):
        return weights  # a module's buffer, already checked: used as it is (no per-call copy or op)
    w = torch.as_tensor(weights)
    if w.is_complex() or not (w.is_floating_point() or w.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
        raise ValueError(f"{name}: weights must be real numbers, got dtype {w.dtype}")
    if w.dim() != 1 or w.shape[0] != C:
        raise ValueError(f"{name}: weights must have one entry per class ({C}), got shape {tuple(w.shape)}")
    w = w.detach().to(device=logits.device, dtype=acc).contiguous()
    if not weights_checked:
        _check_weight_values(name, w)
    return w


def _run(name, kernel, logits, targets, weights, reduction, backend, check_finite, pair=False, weights_checked=False):
    w = _validate(name, logits, targets, weights, reduction, check_finite, weights_checked)
    pair_count = None
    if pair and reduction == "mean":  # a tensor: no host sync (function.py divides by it)
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        pair_count = (targets != 0).sum(dtype=acc).clamp_min(1.0)
    try:
        return apply_loss(kernel, logits, targets, w, reduction, backend, pair_count)
    except BadTargets as e:
        raise e.with_name(name) from None


def bce_loss(logits, targets, weights=None, reduction="mean", *, backend=None, check_finite=False):
    """Class-weighted binary cross-entropy with logits, summed over classes (paper eq. 1)."""
    return _run("bce_loss", "bce", logits, targets, weights, reduction, backend, check_finite)


def warp_loss(logits, targets, weights=None, reduction="mean", *, backend=None, check_finite=False):
    """Exact WARP (paper eq. 2): all pairs, the exact rank R_i, W(r) = H_r."""
    return _run("warp_loss", "warp", logits, targets, weights, reduction, backend, check_finite)


def lsep_loss(logits, targets, weights=None, reduction="mean", *, backend=None, check_finite=False):
    """LSEP (paper eq. 3), computed as softplus(LSE_neg(x) + LSE_pos(log w - x)) in O(C) per row."""
    return _run("lsep_loss", "lsep", logits, targets, weights, reduction, backend, check_finite)


def wlsep_loss(logits, targets, weights=None, reduction="mean", normalize="row", *, backend=None,
               check_finite=False):
    """Weighted LSEP (paper eq. 4): per positive softplus(LSE_neg(x) - x_i), O(C) per row.

    ``normalize='row'`` (default, the paper): 1/|Y| per row, mean over rows.
    ``normalize='pair'`` (the authors' code): sum over positives, mean over all (sample,
    positive) pairs of the batch.
    """
    if normalize not in ("row", "pair"):
        raise ValueError(f"wlsep_loss: normalize must be 'row' or 'pair', got {normalize!r}")
    kernel = "wlsep_pair" if normalize == "pair" else "wlsep"
    return _run("wlsep_loss", kernel, logits, targets, weights, reduction, backend, check_finite,
                pair=normalize == "pair")


class _Loss(nn.Module):
    """Base of the loss modules. The class weights are checked (finite, >= 0) once, here, so
    that a training step on the GPU does not pay a host sync for them on every call."""

    _name = _kernel = None

    def __init__(self, weights=None, reduction: str = "mean", *, backend: Optional[str] = None,
                 check_finite: bool = False):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float32).detach().clone()
            if weights.dim() != 1:
                raise ValueError(f"{type(self).__name__}: weights must be 1-D (one per class), got shape {tuple(weights.shape)}")
            _check_weight_values(type(self).__name__, weights)
        self.register_buffer("weights", weights)
        self.reduction = reduction
        self.backend = backend
        self.check_finite = check_finite

    def _call(self, kernel, logits, targets, pair=False):
        return _run(self._name, kernel, logits, targets, self.weights, self.reduction, self.backend,
                    self.check_finite, pair=pair, weights_checked=True)

    def forward(self, logits, targets):
        """The loss of ``logits`` against ``targets``.

        Args:
            logits: ``[B, C]`` float32, bfloat16, float16 or float64 scores (any device; the
                backend follows the device, see :func:`mmit_fast.losses.function.select_backend`).
            targets: ``[B, C]`` multi-hot labels, bool / uint8 / float with values 0 or 1 (a
                row with another value gets a NaN loss and raises :class:`BadTargets` lazily).

        Returns:
            the mean over rows (``reduction="mean"``), their sum (``"sum"``) or the ``[B]`` row
            losses (``"none"``); differentiable w.r.t. ``logits``.
        """
        return self._call(self._kernel, logits, targets)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, weighted={self.weights is not None}, backend={self.backend!r}"


class BCELoss(_Loss):
    """``nn.Module`` of :func:`bce_loss`."""
    _name, _kernel = "BCELoss", "bce"


class WARPLoss(_Loss):
    """``nn.Module`` of :func:`warp_loss`."""
    _name, _kernel = "WARPLoss", "warp"


class LSEPLoss(_Loss):
    """``nn.Module`` of :func:`lsep_loss`."""
    _name, _kernel = "LSEPLoss", "lsep"


class WLSEPLoss(_Loss):
    """``nn.Module`` of :func:`wlsep_loss` (``normalize='row'|'pair'``)."""
    _name, _kernel = "WLSEPLoss", "wlsep"

    def __init__(self, weights=None, reduction: str = "mean", normalize: str = "row", **kw):
        super().__init__(weights, reduction, **kw)
        if normalize not in ("row", "pair"):
            raise ValueError(f"WLSEPLoss: normalize must be 'row' or 'pair', got {normalize!r}")
        self.normalize = normalize

    def forward(self, logits, targets):
        """The wLSEP loss (eq. 4) of ``logits`` ``[B, C]`` against multi-hot ``targets`` ``[B, C]``;
        ``normalize`` picks the batch reduction (see :func:`wlsep_loss`). Arguments and result
        as :meth:`BCELoss.forward`."""
        pair = self.normalize == "pair"
        return self._call("wlsep_pair" if pair else "wlsep", logits, targets, pair=pair)

    def extra_repr(self):
        return super().extra_repr() + f", normalize={self.normalize!r}"


LOSSES = {"bce": BCELoss, "warp": WARPLoss, "lsep": LSEPLoss, "wlsep": WLSEPLoss}


def get_loss(name: str, weights: "torch.Tensor | None" = None, **kw: object) -> nn.Module:
    """The loss module called ``name``.

    Args:
        name: ``"bce"`` (:class:`BCELoss`, eq. 1), ``"warp"`` (:class:`WARPLoss`, eq. 2),
            ``"lsep"`` (:class:`LSEPLoss`, eq. 3) or ``"wlsep"`` (:class:`WLSEPLoss`, eq. 4);
            case-insensitive.
        weights: ``[C]`` class weights, finite and >= 0, or None (see
            :func:`mmit_fast.losses.class_weights` for the schemes).
        **kw: ``reduction`` (``"mean"`` | ``"sum"`` | ``"none"``), ``backend`` (``None``/
            ``"auto"``, ``"triton"``, ``"cpp"``, ``"torch"``), ``check_finite``; for ``"wlsep"``
            also ``normalize`` (``"row"`` | ``"pair"``).

    Example: ``get_loss("wlsep", weights=w, reduction="mean", normalize="row")``.
    An unknown name is a ``ValueError`` that lists the valid ones.
    """
    key = str(name).lower()
    if key not in LOSSES:
        raise ValueError(f"get_loss: unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[key](weights=weights, **kw)
