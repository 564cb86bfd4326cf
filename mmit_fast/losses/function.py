"""The autograd Function of the losses and THE dispatch point between backends.

Every backend implements one contract per loss::

    fn(logits, targets, weights, need_grad, scale=1.0) -> (loss_rows, dlogits or None)

``loss_rows[b]`` is row b's loss (paper.md section 2) in float32 (float64 for float64
logits); ``dlogits[b] = scale * d loss_rows[b] / d logits[b]`` in the logits' dtype, computed
in the same pass as the loss (fused forward + backward). ``scale`` carries the reduction
(1/B for ``'mean'``) so that the usual ``loss.backward()`` (grad_output = 1) returns the
stored gradient with no further pass over B x C.

Backends: ``"triton"`` (``mmit_fast.kernels``: CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``), ``"cpp"`` (``mmit_fast._C``: CPU tensors), ``"torch"`` (any device).
The choice, made in :func:`select_backend` and nowhere else:

1. the explicit ``backend=`` argument, else
2. the environment variable ``MMIT_LOSS_BACKEND`` (``triton`` / ``cpp`` / ``torch`` / ``auto``), else
3. the device: CUDA -> triton (torch if Triton cannot be imported, or for float64 logits),
   CPU -> cpp (torch if the extension is not built).

An explicit choice (argument or environment) that cannot run on the tensors' device raises
``ValueError``.
"""
from __future__ import annotations

import importlib
import os

import torch
from torch.autograd.function import once_differentiable

from . import _cpp, torch_impl

__all__ = ["BACKENDS", "select_backend", "backend_fn", "LossFunction", "apply_loss"]

BACKENDS = ("triton", "cpp", "torch")
ENV_VAR = "MMIT_LOSS_BACKEND"

# loss name -> (module under mmit_fast.kernels, function name); the same names in _cpp / torch_impl
_TRITON = {"bce": ("bce", "bce"), "lsep": ("ranking", "lsep"), "wlsep": ("ranking", "wlsep"),
           "wlsep_pair": ("ranking", "wlsep_pair"), "warp": ("warp", "warp")}
_triton_ok = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    global _triton_ok
    if _triton_ok is None:
        try:
            importlib.import_module("mmit_fast.kernels.ranking")
            _triton_ok = True
        except Exception:  # pragma: no cover - triton missing or broken
            _triton_ok = False
    return _triton_ok


def select_backend(logits: torch.Tensor, backend: str | None = None) -> str:
    """The backend that will run for these logits (the single dispatch rule, see module doc)."""
    source = "backend="
    choice = backend
    if choice is None:
        choice = os.environ.get(ENV_VAR) or None
        source = ENV_VAR
    if choice is None or choice == "auto":
        if logits.device.type == "cuda":
            return "triton" if logits.dtype != torch.float64 and triton_available() else "torch"
        if logits.device.type == "cpu":
            return "cpp" if _cpp.available() else "torch"
        return "torch"
    if choice not in BACKENDS:
        raise ValueError(f"{source}: unknown loss backend {choice!r}; choose one of {BACKENDS} or 'auto'")
    dev = logits.device.type
    if choice == "cpp":
        if dev != "cpu":
            raise ValueError(f"{source}={choice!r}: the C++ backend runs on CPU tensors, got {logits.device}")
        if not _cpp.available():
            raise ValueError(f"{source}={choice!r}: mmit_fast._C is not built (python setup.py build_ext --inplace)")
    if choice == "triton":
        if dev != "cuda" and not (dev == "cpu" and _interpreting()):
            raise ValueError(f"{source}={choice!r}: the Triton backend needs CUDA tensors "
                             f"(or CPU tensors with TRITON_INTERPRET=1), got {logits.device}")
        if not triton_available():
            raise ValueError(f"{source}={choice!r}: triton cannot be imported")
    return choice


def backend_fn(name: str, backend: str):
    """The contract function ``fn(logits, targets, weights, need_grad, scale)`` of a backend."""
    if backend == "torch":
        return getattr(torch_impl, name)
    if backend == "cpp":
        return getattr(_cpp, name)
    mod, fn = _TRITON[name]
    return getattr(importlib.import_module(f"mmit_fast.kernels.{mod}"), fn)


class LossFunction(torch.autograd.Function):
    """Fused loss: forward computes the row losses and (if needed) the gradient in one call."""

    @staticmethod
    def forward(ctx, logits, targets, weights, name, reduction, backend, pair_count):
        impl = backend_fn(name, select_backend(logits, backend))
        need_grad = bool(ctx.needs_input_grad[0])
        B = logits.shape[0]
        if reduction == "mean":
            denom = float(pair_count) if pair_count is not None else float(max(B, 1))
            scale = 1.0 / denom
        else:
            scale = 1.0
        rows, g = impl(logits, targets, weights, need_grad, scale)
        if reduction == "none":
            out = rows
        elif reduction == "sum":
            out = rows.sum()
        else:
            out = rows.sum() * scale
        ctx.reduction = reduction
        if need_grad:
            ctx.save_for_backward(g)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (g,) = ctx.saved_tensors
        if ctx.reduction == "none":
            grad = g * grad_out.to(g.dtype)[:, None]
        elif grad_out.numel() == 1 and torch.equal(grad_out, torch.ones_like(grad_out)):
            grad = g  # the common loss.backward(): the fused gradient as is, no extra pass
        else:
            grad = g * grad_out.to(g.dtype)
        return grad, None, None, None, None, None, None


def apply_loss(name, logits, targets, weights, reduction, backend, pair_count=None):
    return LossFunction.apply(logits, targets, weights, name, reduction, backend, pair_count)
