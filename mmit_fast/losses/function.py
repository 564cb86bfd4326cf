"""The autograd Function of the losses and THE dispatch point between backends.

Every backend implements one contract per loss::

    fn(logits, targets, weights, need_grad, scale=1.0) -> (loss_rows, dlogits or None)

``loss_rows[b]`` is row b's loss (paper.md section 2) in float32 (float64 for float64
logits); ``dlogits[b] = scale * d loss_rows[b] / d logits[b]`` in the accumulation dtype
(float32; float64 for float64 logits), computed in the same pass as the loss (fused forward +
backward). ``scale`` carries the reduction (1/B for ``'mean'``) so that the usual
``loss.backward()`` (grad_output = 1) returns the stored gradient with no further pass.

Backward, with no host synchronisation on any device:

* float32/float64 logits, ``'mean'``/``'sum'``: the stored gradient is scaled in place by
  grad_output by the backend's ``scale_grad_`` -- C++ reads the factor from CPU memory, the
  Triton kernel reads it on the device; both skip the pass when it is 1. The stored tensor
  is what backward returns, so a second backward (``retain_graph=True``) recomputes it.
* float16/bfloat16 logits: the float32 gradient is multiplied by grad_output in float32 and
  cast to the logits' dtype once (a GradScaler's 65536 neither overflows float16 nor meets
  small entries already flushed to zero).
* ``'none'``: ``dlogits * grad_output[:, None]``, then the same single cast.
* ``wlsep_loss(normalize='pair')``: the pair count stays a tensor (``targets.sum()``); the
  mean divides by it and backward folds ``1 / count`` into grad_output.

Backends: ``"triton"`` (``mmit_fast.kernels``: CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``), ``"cpp"`` (``mmit_fast._C``: CPU tensors), ``"torch"`` (any device).
The choice, made in :func:`select_backend` and nowhere else:

1. the explicit ``backend=`` argument, else
2. the environment variable ``MMIT_LOSS_BACKEND`` (``triton`` / ``cpp`` / ``torch`` / ``auto``; read
   on every call, ``os.environ.get``, about a microsecond: setting it takes effect at once), else
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
_triton_error = [None]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    global _triton_ok
    if _triton_ok is None:
        try:
            importlib.import_module("mmit_fast.kernels.ranking")
            _triton_ok = True
        except Exception as e:  # pragma: no cover - triton missing or broken
            _triton_ok = False
            _triton_error[0] = f"{type(e).__name__}: {e}"
    return _triton_ok


def triton_error() -> str | None:
    """Why the Triton kernels could not be imported (None when they can, or before the first try)."""
    return None if triton_available() else _triton_error[0]


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
            raise ValueError(f"{source}={choice!r}: the Triton kernels cannot be imported ({triton_error()})")
    return choice


def backend_fn(name: str, backend: str):
    """The contract function ``fn(logits, targets, weights, need_grad, scale)`` of a backend."""
    if backend == "torch":
        return getattr(torch_impl, name)
    if backend == "cpp":
        return getattr(_cpp, name)
    mod, fn = _TRITON[name]
    return getattr(importlib.import_module(f"mmit_fast.kernels.{mod}"), fn)


def scale_grad_fn(backend: str):
    """The backend's in-place ``scale_grad_(g, factor)`` (no pass when factor == 1, no sync)."""
    if backend == "cpp":
        return _cpp.scale_grad_
    if backend == "triton":
        return importlib.import_module("mmit_fast.kernels._common").scale_grad_
    return torch_impl.scale_grad_


class LossFunction(torch.autograd.Function):
    """Fused loss: forward computes the row losses and (if needed) the gradient in one call.

    ``spec = (name, reduction, backend)``: one argument, not three (each argument of ``apply``
    costs a little on every call). The C++ backend also reduces ``'mean'`` / ``'sum'`` in the
    kernel call (``reduce=``): the 0-d loss comes back directly, with no torch op after it."""

    @staticmethod
    def forward(ctx, logits, targets, weights, pair_count, spec):
        name, reduction, backend = spec
        chosen = select_backend(logits, backend)
        need_grad = ctx.needs_input_grad[0]
        scale = 1.0 / max(logits.shape[0], 1) if reduction == "mean" and pair_count is None else 1.0
        fn = backend_fn(name, chosen)
        if chosen == "cpp" and reduction != "none" and pair_count is None:
            out, g = fn(logits, targets, weights, need_grad, scale, reduce=scale)
        else:
            rows, g = fn(logits, targets, weights, need_grad, scale)
            if reduction == "none":
                out = rows
            elif reduction == "sum":
                out = rows.sum()
            elif pair_count is not None:
                out = rows.sum() / pair_count.to(rows.dtype)
            else:
                out = rows.sum() * scale
        ctx.reduction, ctx.name, ctx.backend, ctx.scale = reduction, name, chosen, scale
        ctx.out_dtype, ctx.g_returned = logits.dtype, False
        if need_grad:  # g on ctx, not saved: backward scales it in place (no version-counter check);
            ctx.g, ctx.pair_count = g, pair_count  # the inputs are saved for a recompute only
            ctx.save_for_backward(logits, targets, weights)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # create_graph=True: the gradient is not differentiable again -- once_differentiable's
        # error on a double backward; otherwise (grad mode is off) its wrapper would only cost time
        if torch.is_grad_enabled():
            return _backward_once(ctx, grad_out)
        return _backward(ctx, grad_out)


def _backward(ctx, grad_out):
    g, pair_count = ctx.g, ctx.pair_count
    if ctx.g_returned:  # a second backward: the first one handed out (and scaled) g itself
        logits, targets, weights = ctx.saved_tensors
        g = backend_fn(ctx.name, ctx.backend)(logits, targets, weights, True, ctx.scale)[1]
    go = grad_out if grad_out.dtype is g.dtype else grad_out.to(g.dtype)
    if pair_count is not None:
        go = go / pair_count.to(g.dtype)
    if ctx.reduction == "none":
        grad = (g * go[:, None]).to(ctx.out_dtype)
    elif g.dtype is not ctx.out_dtype:
        grad = (g * go).to(ctx.out_dtype)  # float32 multiply, one cast (float16 / bfloat16 logits)
    else:
        grad = scale_grad_fn(ctx.backend)(g, go)  # in place; no pass at all when go == 1
        ctx.g_returned = True
    return grad, None, None, None, None


_backward_once = once_differentiable(_backward)


def apply_loss(name, logits, targets, weights, reduction, backend, pair_count=None):
    return LossFunction.apply(logits, targets, weights, pair_count, (name, reduction, backend))
