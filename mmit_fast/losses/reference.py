"""Float64 pairwise reference of the four losses (tests and benchmarks only).

This is the *naive* evaluation of paper.md section 2: it materialises the B x C x C tensor of
all (positive i, negative j) pair terms of every row, in float64, and lets autograd produce
the gradients. It shares no code with the fast paths (torch_impl, C++, Triton), which makes
it the oracle they are tested against.

Per row b (x = logits[b], Y = positives of the row, w = class weights, default ones):

* BCE   ``L = sum_i w_i [softplus(x_i) - y_i x_i]``  (= -sum w [y log s + (1-y) log(1-s)])
* WARP  ``L = 1/|Y| sum_{i in Y} w_i H(R_i) sum_{j notin Y} max(0, 1 + x_j - x_i)``,
  ``R_i = #{j notin Y: 1 + x_j - x_i > 0}``, ``H(r) = sum_{k<=r} 1/k`` (H(0) = 0), H(R_i)
  held constant for the gradient.
* LSEP  ``L = log(1 + sum_{i in Y} w_i sum_{j notin Y} exp(x_j - x_i))`` (w = 1: eq. 3)
* wLSEP ``L = 1/|Y| sum_{i in Y} w_i log(1 + sum_{j notin Y} exp(x_j - x_i))``

A row with no positive or no negative has loss 0 (and gradient 0) for the ranking losses.

Reductions: ``'none'`` returns the B row losses, ``'sum'`` their sum, ``'mean'`` their mean
over all B rows. wLSEP with ``normalize='pair'`` (the authors' code): the row value is
``sum_{i in Y} w_i log(1 + ...)`` (no 1/|Y|) and ``'mean'`` divides the batch sum by the
number of (sample, positive) pairs of the batch, ``P = targets.sum()`` (at least 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_FILL = -1e300  # stands for -inf in masked pairs (finite: keeps logsumexp's gradient NaN-free)

__all__ = ["reference_loss", "bce_reference", "warp_reference", "lsep_reference", "wlsep_reference"]


def _prep(logits, targets, weights):
    x = logits.to(torch.float64)
    y = targets.to(torch.float64)
    C = x.shape[-1]
    w = torch.ones(C, dtype=torch.float64, device=x.device) if weights is None else torch.as_tensor(weights).to(x.device, torch.float64)
    return x, y, w


def _pairs(x, y):
    """diff[b, i, j] = x_j - x_i ; pair mask[b, i, j] = y_i (1 - y_j)."""
    diff = x[:, None, :] - x[:, :, None]
    mask = y[:, :, None] * (1.0 - y[:, None, :])
    return diff, mask


def _reduce(rows, reduction, denom=None):
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if reduction == "mean":
        return rows.sum() / (rows.shape[0] if denom is None else denom)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def bce_reference(logits, targets, weights=None, reduction="mean"):
    x, y, w = _prep(logits, targets, weights)
    rows = (w * (F.softplus(x) - y * x)).sum(-1)
    return _reduce(rows, reduction)


def lsep_reference(logits, targets, weights=None, reduction="mean"):
    x, y, w = _prep(logits, targets, weights)
    diff, mask = _pairs(x, y)
    pw = mask * w[None, :, None]
    # log(1 + sum_pairs w_i exp(d_ij)) = softplus(logsumexp_pairs(d_ij + log w_i)): the same
    # pairwise sum, written so that |x| ~ 1e4 does not overflow float64
    terms = torch.where(pw > 0, diff + torch.log(torch.where(pw > 0, pw, torch.ones_like(pw))),
                        torch.full_like(diff, _FILL))
    rows = F.softplus(torch.logsumexp(terms.flatten(1), 1))
    return _reduce(rows, reduction)


def wlsep_reference(logits, targets, weights=None, reduction="mean", normalize="row"):
    x, y, w = _prep(logits, targets, weights)
    diff, mask = _pairs(x, y)
    # per positive: log(1 + sum_j exp(x_j - x_i)) = softplus(logsumexp_j (x_j - x_i))
    per_pos = F.softplus(torch.logsumexp(torch.where(mask > 0, diff, torch.full_like(diff, _FILL)), 2))
    npos = y.sum(1)
    nneg = (1.0 - y).sum(1)
    valid = (npos > 0) & (nneg > 0)
    summed = (w * y * per_pos).sum(1)
    if normalize == "pair":
        rows = torch.where(valid, summed, torch.zeros_like(summed))
        return _reduce(rows, reduction, denom=max(float(y.sum()), 1.0))
    if normalize != "row":
        raise ValueError(f"normalize must be 'row' or 'pair', got {normalize!r}")
    rows = torch.where(valid, summed / npos.clamp_min(1.0), torch.zeros_like(summed))
    return _reduce(rows, reduction)


def warp_reference(logits, targets, weights=None, reduction="mean"):
    x, y, w = _prep(logits, targets, weights)
    diff, mask = _pairs(x, y)
    margin = 1.0 + diff
    hinge = torch.relu(margin) * mask  # [B, i, j]
    with torch.no_grad():
        R = ((margin > 0).to(torch.float64) * mask).sum(2)  # [B, C]
        Hr = torch.zeros_like(R)
        Rl = R.long()
        maxr = int(Rl.max()) if Rl.numel() else 0
        table = torch.zeros(maxr + 1, dtype=torch.float64, device=x.device)
        if maxr > 0:
            table[1:] = torch.cumsum(1.0 / torch.arange(1, maxr + 1, dtype=torch.float64, device=x.device), 0)
        Hr = table[Rl]
    npos = y.sum(1)
    per_pos = hinge.sum(2) * Hr * w * y
    rows = per_pos.sum(1) / npos.clamp_min(1.0)
    return _reduce(rows, reduction)


_REFS = {"bce": bce_reference, "warp": warp_reference, "lsep": lsep_reference, "wlsep": wlsep_reference}


def reference_loss(name, logits, targets, weights=None, reduction="mean", **kw):
    """Dispatch by loss name (``bce``, ``warp``, ``lsep``, ``wlsep``)."""
    return _REFS[name](logits, targets, weights, reduction, **kw)
