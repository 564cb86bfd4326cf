"""C++/OpenMP backend (``mmit_fast._C``, built from ``csrc/losses.cpp``).

Same contract as ``torch_impl``: ``fn(logits, targets, weights, need_grad, scale=1.0) ->
(loss_rows, dlogits or None)``. CPU tensors only. The kernel computes in float32 (float16
and bfloat16 logits are widened first; their gradient stays float32 and is cast once, after
the grad_output multiply, in ``function.py``) or in float64 for float64 logits -- the float64
instantiation is what ``gradcheck`` exercises. Buffers cross into C++ as data pointers
(``_C.loss_ptr``): the tensors themselves when they already have the kernel's dtype and are
C-contiguous (no copy, no per-call ``numpy()`` view), else one converted copy; the outputs are
allocated here, as torch tensors, and filled in place by the kernel. ``reduce=`` (extra
keyword of this backend): the kernel also sums the rows and returns the 0-d loss
``reduce * sum(rows)`` instead of the rows (``function.py`` uses it for ``'mean'``/``'sum'``:
no torch op after the call).

Targets: bool, uint8, float32 and float64 go to the kernel as they are and are validated
there, in the pass that reads them anyway (no extra pass over B x C); a value other than 0
or 1 raises :class:`~mmit_fast.losses.errors.BadTargets` at once. Other dtypes (int64,
float16, ...) are checked and converted here first (a slower, rarer path).
Threads: OpenMP's default (``OMP_NUM_THREADS``), or ``MMIT_CPP_THREADS`` if set (read on every
call with ``os.environ.get``: well under a microsecond).
"""
from __future__ import annotations

import os

import torch

from .errors import BadTargets, first_bad_target

__all__ = ["available", "bce", "lsep", "wlsep", "wlsep_pair", "warp", "scale_grad_"]

_DIRECT = (torch.bool, torch.uint8, torch.float32, torch.float64)  # read by the kernel as they are

try:  # the extension is optional at import time: the torch path is the fallback
    from mmit_fast import _C as _ext

    _HAS = hasattr(_ext, "loss_ptr")
except ImportError:  # pragma: no cover - depends on the build
    _ext = None
    _HAS = False


def available() -> bool:
    return _HAS


_KIND = {"bce": 0, "lsep": 1, "wlsep": 2, "wlsep_pair": 3, "warp": 4}
_YCODE = {torch.bool: 0, torch.uint8: 0, torch.float32: 1, torch.float64: 2}
_F32, _F64 = torch.float32, torch.float64
_environ = os.environ


def _buffer(t, dtype):
    """``t`` itself when the kernel can read it as it is (dtype, C-contiguous, no lazy negation),
    else one converted copy."""
    if t.dtype is dtype and t.is_contiguous() and not t.is_neg():
        return t
    return t.detach().to(dtype).resolve_neg().contiguous()


def _run(name, logits, targets, weights, need_grad, scale, reduce=None):
    if logits.device.type != "cpu":
        raise ValueError(f"the C++ loss backend needs CPU tensors, got {logits.device}")
    f64 = logits.dtype is _F64
    acc = _F64 if f64 else _F32
    x = _buffer(logits, acc)
    ycode = _YCODE.get(targets.dtype)
    if ycode is not None:
        y = targets if targets.is_contiguous() and not targets.is_neg() else targets.resolve_neg().contiguous()
    else:  # rare dtypes: checked here (CPU: no device sync), then as bytes
        bad = first_bad_target(targets)
        if bad is not None:
            raise BadTargets(*bad)
        y, ycode = (targets != 0).contiguous(), 0
    w = None if weights is None else _buffer(weights, acc)
    B, C = x.shape
    rows = torch.empty(B, dtype=acc) if reduce is None else None
    out = torch.empty((), dtype=acc) if reduce is not None else None
    g = torch.empty((B, C), dtype=acc) if need_grad else None
    threads = _environ.get("MMIT_CPP_THREADS")  # read per call (cheap): 0 / unset = OpenMP's default
    k = _ext.loss_ptr(_KIND[name], x.data_ptr(), y.data_ptr(), ycode, 0 if w is None else w.data_ptr(),
                      0 if rows is None else rows.data_ptr(), 0 if g is None else g.data_ptr(),
                      0 if out is None else out.data_ptr(), B, C, f64, float(scale),
                      1.0 if reduce is None else float(reduce), int(threads) if threads else 0)
    if k >= 0:
        raise BadTargets(k // max(C, 1), k % max(C, 1), y.reshape(-1)[k].item())
    return (rows if reduce is None else out), g


def scale_grad_(g, factor):
    """``g *= factor`` in place (``factor``: a one-element CPU tensor), skipped -- no pass over
    ``g`` -- when it is 1, the usual ``loss.backward()``. Read in C++: CPU memory, no sync."""
    if factor.dtype is not _F32 and factor.dtype is not _F64:
        factor = factor.to(_F64)
    _ext.scale_ptr(g.data_ptr(), g.numel(), g.dtype is _F64, factor.data_ptr(), factor.dtype is _F64)
    return g


def bce(logits, targets, weights, need_grad, scale=1.0, reduce=None):
    return _run("bce", logits, targets, weights, need_grad, scale, reduce)


def lsep(logits, targets, weights, need_grad, scale=1.0, reduce=None):
    return _run("lsep", logits, targets, weights, need_grad, scale, reduce)


def wlsep(logits, targets, weights, need_grad, scale=1.0, reduce=None):
    return _run("wlsep", logits, targets, weights, need_grad, scale, reduce)


def wlsep_pair(logits, targets, weights, need_grad, scale=1.0, reduce=None):
    return _run("wlsep_pair", logits, targets, weights, need_grad, scale, reduce)


def warp(logits, targets, weights, need_grad, scale=1.0, reduce=None):
    return _run("warp", logits, targets, weights, need_grad, scale, reduce)
