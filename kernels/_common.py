"""Shared Triton helpers for the loss kernels (imported lazily, see ``kernels/__init__.py``).

Numerics: every ``exp`` takes a non-positive argument or one whose overflow is selected
away with ``tl.where`` (never multiplied by a 0/1 mask: inf * 0 = NaN); ``log1p`` is
Goldberg's ``log(u) * t / (u - 1)``, ``u = 1 + t`` (exact to a few ulp, and it runs under
``TRITON_INTERPRET``, where ``libdevice.log1p`` does not). The gradient buffer is float32 for
float16/bfloat16 logits (``function.py`` multiplies by grad_output, then casts once).

Targets (bool viewed as uint8, uint8, or float) are checked in the first pass that reads them:
a row with a value other than 0 or 1 gets a NaN loss and gradient, and the first bad element
(``row * 2**32 + col``) goes into an int64 error flag with ``tl.atomic_min`` -- on CUDA the
device's persistent flag (``mmit_fast.losses.errors``; read lazily, no host sync per call), under
the interpreter a fresh one that :func:`finish` reads at once to raise ``BadTargets``.
"""
import torch
import triton
import triton.language as tl

# NaN as its float32 bit pattern: Triton checks at every launch that the module globals a kernel
# read are unchanged, and a float NaN global never equals itself ("Global variable NAN has changed").
NAN_BITS = tl.constexpr(0x7FC00000)
NEG_BIG = tl.constexpr(-1.0e30)  # (constexpr: usable inside @jit) finite "minus infinity" for running maxima (exp(NEG_BIG - m) = 0, no NaN)

# the largest row handled in registers in one block; longer rows loop over column blocks
MAX_SINGLE_BLOCK = 8192
LOOP_BLOCK = 4096


@triton.jit
def nan_f32():
    """A float32 quiet NaN (built from its bit pattern, see ``NAN_BITS``)."""
    return tl.full([], NAN_BITS, tl.int32).to(tl.float32, bitcast=True)


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
def load_cols_checked(xrow, yrow, cc, C):
    """:func:`load_cols` plus the first column of the block whose target is not 0 or 1 (``C`` if none)."""
    inb = cc < C
    x = tl.load(xrow + cc, mask=inb, other=0.0).to(tl.float32)
    yr = tl.load(yrow + cc, mask=inb, other=0)
    badc = first_bad_col(yr, cc, inb, C)
    return inb, x, yr != 0, badc


@triton.jit
def first_bad_col(yr, cc, inb, C):
    """Smallest column of ``cc`` whose raw target ``yr`` is neither 0 nor 1 (NaN included), else C."""
    bad = (yr != 0) & (yr != 1) & inb
    return tl.min(tl.where(bad, cc, C), 0)


@triton.jit
def report_bad(FLAG, row, badc, C):
    """Record a bad target of this row (``badc < C``) in the error flag: atomic min of row * 2**32 + col."""
    if badc < C:
        tl.atomic_min(FLAG, row * 4294967296 + badc.to(tl.int64))


@triton.jit
def _scale_kernel(G, F, n, BLOCK: tl.constexpr):
    f = tl.load(F)
    if f != 1.0:  # decided on the device: loss.backward() with grad_output 1 costs no pass
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        g = tl.load(G + offs, mask=m, other=0.0)
        tl.store(G + offs, g * f, mask=m)


def scale_grad_(g, factor):
    """``g *= factor`` in place, ``factor`` a one-element tensor of g's dtype on g's device;
    each program reads it and returns at once when it is 1 (no host sync, no pass)."""
    n = g.numel()
    if n:
        f = factor.reshape(1).to(g.dtype)
        BLOCK = 4096
        _scale_kernel[(triton.cdiv(n, BLOCK),)](g, f, n, BLOCK=BLOCK, num_warps=8)
    return g


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
    """The tensors every row kernel takes: ``(x, y, w, rows, g, flag)``.

    ``x`` contiguous logits, ``y`` targets as the kernel reads them, ``rows`` the [B] float32 row
    losses, ``g`` the gradient (float32 for float16/bfloat16 logits, else the logits' dtype),
    ``flag`` the int64 error flag of bad targets; a pointer the kernel never reads (``w``
    without weights, ``g`` without gradient) aliases ``rows``.
    """
    check_device(logits)
    x = logits.contiguous()
    rows = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    gdt = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    g = torch.empty(x.shape, dtype=gdt, device=x.device) if need_grad else rows
    w = weights.contiguous() if weights is not None else rows
    return x, targets_arg(targets), w, rows, g, _flag(x.device)


def _flag(device):
    from mmit_fast.losses.errors import NO_ERROR, device_flag, lazy_errors

    if not lazy_errors(device):  # CPU (the interpreter): a flag of this call, read by finish()
        return torch.full((1,), NO_ERROR, dtype=torch.int64)
    return device_flag(device)[0]


def finish(flag, targets):
    """After a launch: on CPU (interpreter) raise ``BadTargets`` for a flagged target at once;
    on CUDA nothing (no sync; ``mmit_fast.losses.errors.raise_pending`` reads the flag later)."""
    from mmit_fast.losses.errors import NO_ERROR, BadTargets, lazy_errors

    if lazy_errors(flag.device):
        return

    k = int(flag[0])
    if k != NO_ERROR:
        r, c = k >> 32, k & 0xFFFFFFFF
        raise BadTargets(r, c, targets[r, c].item())

