"""Shared Triton helpers for the loss kernels (imported lazily, see ``kernels/__init__.py``).

Numerics: every ``exp`` takes a non-positive argument or one whose overflow is selected
away with ``tl.where`` (never multiplied by a 0/1 mask: inf * 0 = NaN); ``log1p`` is
Goldberg's ``log(u) * t / (u - 1)``, ``u = 1 + t`` (exact to a few ulp, and it runs under
``TRITON_INTERPRET``, where ``libdevice.log1p`` does not).
"""
import torch
import triton
import triton.language as tl

NEG_BIG = tl.constexpr(-1.0e30)  # (constexpr: usable inside @jit) finite "minus infinity" for running maxima (exp(NEG_BIG - m) = 0, no NaN)

# the largest row handled in registers in one block; longer rows loop over column blocks
MAX_SINGLE_BLOCK = 8192
LOOP_BLOCK = 4096


@triton.jit
def log1p_exp_neg_abs(z):
    """log(1 + exp(-|z|)) without overflow, accurate for large |z|."""
    t = tl.exp(-tl.abs(z))
    u = 1.0 + t
    return tl.where(u == 1.0, t, tl.log(u) * t / (u - 1.0))


@triton.jit
def softplus(z):
    """log(1 + e^z) = max(z, 0) + log1p(exp(-|z|))."""
    return tl.maximum(z, 0.0) + log1p_exp_neg_abs(z)


@triton.jit
def sigmoid(z):
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def load_cols(xrow, yrow, cc, C):
    """One block ``cc`` of a row: (in-bounds mask, logits as float32, positive mask)."""
    inb = cc < C
    x = tl.load(xrow + cc, mask=inb, other=0.0).to(tl.float32)
    yv = tl.load(yrow + cc, mask=inb, other=0) != 0
    return inb, x, yv


@triton.jit
def load_weights(W, cc, inb, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    """Class weights of block ``cc`` as float32 (ones without weights)."""
    if HAS_W:
        w = tl.load(W + cc, mask=inb, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK], 1.0, tl.float32)
    return w


def pick_block(C, block=None):
    """(BLOCK, SINGLE): one register block for the whole row when C <= MAX_SINGLE_BLOCK."""
    if block is not None:
        block = int(block)
        if block & (block - 1):
            raise ValueError(f"block must be a power of two, got {block}")
        return block, C <= block
    if C <= MAX_SINGLE_BLOCK:
        return max(16, triton.next_power_of_2(C)), True
    return LOOP_BLOCK, False


def num_warps_for(block):
    if block <= 1024:
        return 4
    if block <= 4096:
        return 8
    return 16


def targets_arg(targets):
    """Targets as the kernel reads them (any dtype; the kernel tests ``!= 0``); bool -> uint8 view."""
    t = targets.contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def check_device(logits):
    if logits.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"the Triton loss backend needs CUDA tensors (or TRITON_INTERPRET=1 set before import), got {logits.device}"
        )


def _interpreting():
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def row_buffers(logits, targets, weights, need_grad):
    """The tensors every row kernel takes: ``(x, y, w, rows, g)``.

    ``x`` contiguous logits, ``y`` targets as the kernel reads them, ``rows`` the [B] float32 row
    losses, ``g`` the gradient in the logits' dtype; a pointer the kernel never reads (``w``
    without weights, ``g`` without gradient) aliases ``rows``.
    """
    check_device(logits)
    x = logits.contiguous()
    rows = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    g = torch.empty_like(x) if need_grad else rows
    w = weights.contiguous() if weights is not None else rows
    return x, targets_arg(targets), w, rows, g

