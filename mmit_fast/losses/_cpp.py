"""C++/OpenMP backend (``mmit_fast._C``, built from ``csrc/losses.cpp``).

Same contract as ``torch_impl``: ``fn(logits, targets, weights, need_grad, scale=1.0) ->
(loss_rows, dlogits or None)``. CPU tensors only. The kernel computes in float32 (float16
and bfloat16 logits are widened first, the gradient is narrowed back) or in float64 for
float64 logits -- the float64 instantiation is what ``gradcheck`` exercises. Buffers cross
into C++ through the buffer protocol without copies (``Tensor.numpy()`` views); the
outputs are allocated here, as torch tensors, and filled in place by the kernel.
Threads: OpenMP's default (``OMP_NUM_THREADS``), or ``MMIT_CPP_THREADS`` if set.
"""
from __future__ import annotations

import os

import torch

__all__ = ["available", "bce", "lsep", "wlsep", "wlsep_pair", "warp"]

try:  # the extension is optional at import time: the torch path is the fallback
    from mmit_fast import _C as _ext

    _HAS = hasattr(_ext, "loss_rows")
except ImportError:  # pragma: no cover - depends on the build
    _ext = None
    _HAS = False


def available() -> bool:
    return _HAS


def _run(name, logits, targets, weights, need_grad, scale):
    if logits.device.type != "cpu":
        raise ValueError(f"the C++ loss backend needs CPU tensors, got {logits.device}")
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.detach().to(acc).contiguous()
    if targets.dtype == torch.bool:
        y = targets.contiguous().view(torch.uint8)
    elif targets.dtype == torch.uint8:
        y = targets.contiguous()
    else:
        y = (targets != 0).contiguous().view(torch.uint8)
    w = None if weights is None else weights.detach().to(acc).contiguous().numpy()
    rows = torch.empty(x.shape[0], dtype=acc)
    g = torch.empty_like(x) if need_grad else None
    threads = int(os.environ.get("MMIT_CPP_THREADS", "0") or 0)  # 0: OpenMP's default
    _ext.loss_rows(name, x.numpy(), y.numpy(), w, rows.numpy(), None if g is None else g.numpy(), float(scale), threads)
    if g is not None and g.dtype != logits.dtype:
        g = g.to(logits.dtype)
    return rows, g


def bce(logits, targets, weights, need_grad, scale=1.0):
    return _run("bce", logits, targets, weights, need_grad, scale)


def lsep(logits, targets, weights, need_grad, scale=1.0):
    return _run("lsep", logits, targets, weights, need_grad, scale)


def wlsep(logits, targets, weights, need_grad, scale=1.0):
    return _run("wlsep", logits, targets, weights, need_grad, scale)


def wlsep_pair(logits, targets, weights, need_grad, scale=1.0):
    return _run("wlsep_pair", logits, targets, weights, need_grad, scale)


def warp(logits, targets, weights, need_grad, scale=1.0):
    return _run("warp", logits, targets, weights, need_grad, scale)
