"""Plain, vectorised PyTorch backend of the four losses (any device; the fallback).

Backend contract (shared with the C++ and Triton backends, see ``function.py``)::

    fn(logits, targets, weights, need_grad, scale=1.0) -> (loss_rows, dlogits or None)

* ``logits``  [B, C] float16/bfloat16/float32/float64, contiguous;
* ``targets`` [B, C] bool/uint8/float with values in {0, 1} (checked here while they are
  turned into a mask: on CPU a bad value raises ``BadTargets`` at once; on CUDA, without a
  host sync, the bad rows' loss and gradient become NaN and the device's error flag is set --
  see ``errors.py``);
* ``weights`` None or a float32 (float64 for float64 logits) tensor [C] on the same device;
* ``loss_rows`` [B] float32 (float64 for float64 logits): each row's loss (paper.md section 2);
* ``dlogits``  [B, C] float32 (float64 for float64 logits): ``scale * d loss_rows[b] / d logits[b]``.

Math per row (x = logits row, Y positives, N negatives, w weights):

* LSEP:  ``A = LSE_{j in N} x_j``, ``B = LSE_{i in Y} (log w_i - x_i)``, ``L = softplus(A + B)``;
  ``dL/dx_j = sigmoid(A+B) exp(x_j - A)`` (j in N), ``dL/dx_i = -sigmoid(A+B) w_i exp(-x_i - B)``.
* wLSEP: ``L = sum_{i in Y} c_i softplus(A - x_i)`` with ``c_i = w_i/|Y|`` (``w_i`` for
  ``normalize='pair'``); ``dL/dx_i = -c_i sigmoid(A - x_i)``,
  ``dL/dx_j = (sum_i c_i sigmoid(A - x_i)) exp(x_j - A)``.
* WARP (exact, O(C log C) per row, no C x C): sort the negatives; for a positive i the
  violators are the negatives with ``x_j > x_i - 1``: ``R_i`` = their count (searchsorted),
  ``S_i = sum (1 + x_j - x_i) = R_i (1 - x_i) + (suffix sum of sorted negatives)``;
  ``c_i = w_i H(R_i) / |Y|``, ``L = sum c_i S_i``, ``dL/dx_i = -c_i R_i``,
  ``dL/dx_j = sum_{i: x_i < x_j + 1} c_i`` (prefix sums of c over the sorted positives).
  Suffix / prefix sums are accumulated in float64 (no cancellation for |x| ~ 1e4).
* BCE: ``L = sum_i w_i (softplus(x_i) - y_i x_i)``, ``dL/dx_i = w_i (sigmoid(x_i) - y_i)``.

Memory is O(B*C) for all four losses.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import errors
from .errors import BadTargets, device_flag, first_bad_target

__all__ = ["bce", "lsep", "wlsep", "wlsep_pair", "warp", "harmonic_table", "scale_grad_"]

_NEG_INF = float("-inf")


def _acc_dtype(logits):
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _prep(logits, targets, weights):
    acc = _acc_dtype(logits)
    x = logits.to(acc)
    y = targets if targets.dtype == torch.bool else targets != 0
    w = None if weights is None else weights.to(acc)
    return x, y, w


def _bad_rows(targets):
    """None when every target is 0 or 1. CPU: raise ``BadTargets`` naming the first bad one.
    CUDA (no host sync): record it in the device's error flag and return the [B] mask of the
    bad rows, which the caller poisons with NaN."""
    if targets.dtype == torch.bool or not targets.numel():
        return None
    if not errors.lazy_errors(targets.device):
        bad = first_bad_target(targets)
        if bad is not None:
            raise BadTargets(*bad)
        return None
    bad = (targets != 0) & (targets != 1)
    B, C = bad.shape
    cols = torch.arange(C, device=bad.device, dtype=torch.int64)
    first = torch.where(bad, cols + (torch.arange(B, device=bad.device, dtype=torch.int64) << 32)[:, None],
                        torch.full_like(cols, torch.iinfo(torch.int64).max))
    flag, _ = device_flag(bad.device)
    torch.minimum(flag, first.min().reshape(1), out=flag)
    return bad.any(1)


def _guarded(fn):
    """Run a contract function, then poison the rows whose targets are not 0 or 1 (CUDA)."""
    @functools.wraps(fn)
    def run(logits, targets, weights, need_grad, scale=1.0):
        bad = _bad_rows(targets)
        rows, g = fn(logits, targets, weights, need_grad, scale)
        if bad is not None:
            rows = torch.where(bad, torch.full_like(rows, float("nan")), rows)
            if g is not None:
                g = torch.where(bad[:, None], torch.full_like(g, float("nan")), g)
        return rows, g
    return run


def scale_grad_(g, factor):
    """``g *= factor`` in place (always a pass: this is the fallback backend)."""
    return g.mul_(factor)


def harmonic_table(n: int, device, dtype=torch.float32) -> torch.Tensor:
    """``H[r] = sum_{k=1..r} 1/k`` for r = 0..n (H[0] = 0), summed in float64."""
    h = torch.zeros(n + 1, dtype=torch.float64, device=device)
    if n > 0:
        h[1:] = torch.cumsum(1.0 / torch.arange(1, n + 1, dtype=torch.float64, device=device), 0)
    return h.to(dtype)


@_guarded
def bce(logits, targets, weights, need_grad, scale=1.0):
    x, y, w = _prep(logits, targets, weights)
    yf = y.to(x.dtype)
    terms = F.softplus(x) - yf * x
    if w is not None:
        terms = terms * w
    rows = terms.sum(1)
    if not need_grad:
        return rows, None
    g = torch.sigmoid(x) - yf
    if w is not None:
        g = g * w
    return rows, g * scale


def _lse(v, mask):
    return torch.logsumexp(torch.where(mask, v, torch.full_like(v, _NEG_INF)), dim=1)


@_guarded
def lsep(logits, targets, weights, need_grad, scale=1.0):
    x, y, w = _prep(logits, targets, weights)
    neg = ~y
    A = _lse(x, neg)  # -inf if the row has no negative
    if w is None:
        bv, pmask = -x, y
    else:
        pmask = y & (w > 0)
        bv = torch.where(pmask, -x + torch.log(torch.where(pmask, w, torch.ones_like(w))), torch.full_like(x, _NEG_INF))
    B = _lse(bv, pmask)  # -inf if no (weighted) positive
    valid = ~(torch.isneginf(A) | torch.isneginf(B))
    z = torch.where(valid, A + B, torch.full_like(A, _NEG_INF))
    rows = F.softplus(z)
    if not need_grad:
        return rows, None
    s = torch.sigmoid(z)[:, None]
    vr = valid[:, None]
    gneg = torch.where(vr & neg, s * torch.exp(x - A[:, None]), torch.zeros_like(x))
    gpos = torch.where(vr & pmask, -s * torch.exp(bv - B[:, None]), torch.zeros_like(x))
    return rows, (gneg + gpos) * scale


def _wlsep(logits, targets, weights, need_grad, scale, pair):
    x, y, w = _prep(logits, targets, weights)
    neg = ~y
    npos = y.sum(1)
    nneg = neg.sum(1)
    valid = ((npos > 0) & (nneg > 0))[:, None]
    A = _lse(x, neg)[:, None]
    t = A - x
    c = torch.ones_like(x) if w is None else w.expand_as(x)
    if not pair:
        c = c / npos.clamp_min(1)[:, None].to(x.dtype)
    c = torch.where(valid & y, c, torch.zeros_like(x))
    t_safe = torch.where(valid & y, t, torch.zeros_like(t))
    rows = (c * F.softplus(t_safe)).sum(1)
    if not need_grad:
        return rows, None
    sg = c * torch.sigmoid(t_safe)
    S = sg.sum(1, keepdim=True)
    gneg = torch.where(valid & neg, S * torch.exp(x - A), torch.zeros_like(x))
    return rows, (gneg - sg) * scale


@_guarded
def wlsep(logits, targets, weights, need_grad, scale=1.0):
    return _wlsep(logits, targets, weights, need_grad, scale, pair=False)


@_guarded
def wlsep_pair(logits, targets, weights, need_grad, scale=1.0):
    """wLSEP row values without the 1/|Y| (the batch is normalised by the pair count)."""
    return _wlsep(logits, targets, weights, need_grad, scale, pair=True)


@_guarded
def warp(logits, targets, weights, need_grad, scale=1.0):
    x, y, w = _prep(logits, targets, weights)
    Bsz, C = x.shape
    neg = ~y
    npos = y.sum(1)
    nneg = neg.sum(1)
    valid = ((npos > 0) & (nneg > 0))[:, None]
    # negatives sorted ascending; positives parked at -inf (they sort first)
    xs, _ = torch.sort(torch.where(neg, x, torch.full_like(x, _NEG_INF)), dim=1)
    thr = (x - 1.0).contiguous()
    le = torch.searchsorted(xs, thr, right=True)  # number of sorted entries <= x_i - 1
    R = (C - le).clamp_min(0)  # negatives with x_j > x_i - 1 (the -inf parking never counts)
    xs64 = torch.where(torch.isneginf(xs), torch.zeros_like(xs), xs).to(torch.float64)
    csum = torch.cat([torch.zeros(Bsz, 1, dtype=torch.float64, device=x.device), torch.cumsum(xs64, 1)], 1)
    suffix = csum[:, -1:] - torch.gather(csum, 1, le)  # sum of the violating negatives
    Rf = R.to(torch.float64)
    S = Rf * (1.0 - x.to(torch.float64)) + suffix
    H = harmonic_table(C, x.device, torch.float64)[R]
    c = H / npos.clamp_min(1)[:, None].to(torch.float64)
    if w is not None:
        c = c * w.to(torch.float64)
    c = torch.where(valid & y, c, torch.zeros_like(c))
    rows = (c * S).sum(1).to(x.dtype)
    if not need_grad:
        return rows, None
    gpos = -c * Rf
    # negatives: sum of c_i over positives with x_i < x_j + 1
    xp, order = torch.sort(torch.where(y, x, torch.full_like(x, float("inf"))), dim=1)
    cp = torch.gather(c, 1, order)
    ccum = torch.cat([torch.zeros(Bsz, 1, dtype=torch.float64, device=x.device), torch.cumsum(cp, 1)], 1)
    lt = torch.searchsorted(xp, (x + 1.0).contiguous(), right=False)
    gneg = torch.gather(ccum, 1, lt)
    g = torch.where(valid & neg, gneg, torch.where(valid & y, gpos, torch.zeros_like(gpos)))
    return rows, (g * scale).to(x.dtype)
