"""Fused Triton kernel for the (class-weighted) binary cross-entropy.

Per row: ``L = sum_i w_i (softplus(x_i) - y_i x_i)`` (= -sum w [y log s + (1-y) log(1-s)],
paper eq. 1), ``dL/dx_i = w_i (sigmoid(x_i) - y_i)``; one exp per element shared by the
softplus and the sigmoid. Loops over column blocks (any C); float32 accumulation. One pass:
a row with a target other than 0 or 1 gets a NaN loss and the error flag (``_common``); its
gradient entries up to the bad column are already written (the row is flagged either way).
"""
import triton
import triton.language as tl

from ._common import nan_f32, finish, first_bad_col, num_warps_for, pick_block, report_bad, row_buffers

__all__ = ["bce"]


@triton.jit
def _bce_kernel(X, Y, W, LOSS, G, FLAG, C, scale, HAS_W: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    badc = C
    for b0 in range(0, C, BLOCK):
        cc = b0 + cols
        inb = cc < C
        x = tl.load(X + row * C + cc, mask=inb, other=0.0).to(tl.float32)
        yr = tl.load(Y + row * C + cc, mask=inb, other=0)
        bc = first_bad_col(yr, cc, inb, C)
        badc = tl.minimum(badc, bc)
        y = (yr != 0).to(tl.float32)
        e = tl.exp(-tl.abs(x))
        u = 1.0 + e
        l1p = tl.where(u == 1.0, e, tl.log(u) * e / (u - 1.0))
        term = tl.maximum(x, 0.0) - y * x + l1p
        if HAS_W:
            w = tl.load(W + cc, mask=inb, other=0.0).to(tl.float32)
            term = term * w
        acc += tl.where(inb, term, 0.0)
        if NEED_GRAD:
            sg = tl.where(x >= 0, 1.0 / u, e / u)
            g = sg - y
            if HAS_W:
                g = g * w
            g = tl.where(bc < C, nan_f32(), g * scale)
            tl.store(G + row * C + cc, g.to(G.dtype.element_ty), mask=inb)
    tl.store(LOSS + row, tl.where(badc < C, nan_f32(), tl.sum(acc, 0)))
    report_bad(FLAG, row, badc, C)


def bce(logits, targets, weights, need_grad, scale=1.0, block=None):
    x, y, w, rows, g, flag = row_buffers(logits, targets, weights, need_grad)
    B, C = x.shape
    BLOCK, _ = pick_block(C, block)
    BLOCK = min(BLOCK, 4096)
    if B > 0:
        _bce_kernel[(B,)](x, y, w, rows, g, flag, C, float(scale), HAS_W=weights is not None,
                          NEED_GRAD=bool(need_grad), BLOCK=BLOCK, num_warps=num_warps_for(BLOCK))
        finish(flag, targets)
    return rows, (g if need_grad else None)
