"""Fused Triton kernels for LSEP and wLSEP (forward + gradient in one launch, one program per row).

Per row (paper.md section 2; x logits, Y positives, N negatives, w class weights):

* LSEP:  ``A = LSE_N x``, ``B = LSE_Y (log w - x)``, ``L = softplus(A + B)``;
  ``dL/dx_j = sigmoid(A+B) exp(x_j - A)`` (N), ``dL/dx_i = -sigmoid(A+B) w_i exp(-x_i - B)`` (Y).
* wLSEP: ``L = sum_Y c_i softplus(A - x_i)``, ``c_i = w_i / |Y|`` (``w_i`` when ``PAIR``);
  ``dL/dx_i = -c_i sigmoid(A - x_i)``, ``dL/dx_j = (sum_Y c_i sigmoid(A - x_i)) exp(x_j - A)``.

Rows with C <= MAX_SINGLE_BLOCK live in registers: the row is read once and the gradient
written once. Longer rows loop over column blocks: an online (max-rescaled) log-sum-exp
pass, then (wLSEP) a pass for the positives' sum, then the gradient pass. Nothing of size
C x C exists anywhere. Accumulation in float32; the gradient is stored in float32 for float16 /
bfloat16 logits, else in the logits' dtype. The first pass also checks the targets (``_common``).
"""
import triton
import triton.language as tl

from ._common import (nan_f32, NEG_BIG, finish, load_cols, load_cols_checked, load_weights, num_warps_for, pick_block,
                      report_bad, row_buffers, sigmoid, softplus)

__all__ = ["lsep", "wlsep", "wlsep_pair"]


@triton.jit
def _wlsep_kernel(X, Y, W, LOSS, G, FLAG, C, scale,
                  HAS_W: tl.constexpr, PAIR: tl.constexpr, NEED_GRAD: tl.constexpr,
                  BLOCK: tl.constexpr, SINGLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xrow = X + row * C
    yrow = Y + row * C
    grow = G + row * C
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        inb, x, yv, badc = load_cols_checked(xrow, yrow, cols, C)
        rowbad = badc < C
        pos = yv & inb
        neg = (yv == 0) & inb
        npos = tl.sum(pos.to(tl.int32), 0)
        nneg = tl.sum(neg.to(tl.int32), 0)
        m = tl.max(tl.where(neg, x, NEG_BIG), 0)
        e = tl.where(neg, tl.exp(x - m), 0.0)
        ssum = tl.sum(e, 0)
        A = m + tl.log(ssum)
        valid = (npos > 0) & (nneg > 0)
        c = load_weights(W, cols, inb, HAS_W, BLOCK)
        if not PAIR:
            c = c / tl.maximum(npos, 1).to(tl.float32)
        live = pos & valid
        t = A - x
        loss = tl.sum(tl.where(live, c * softplus(t), 0.0), 0)
        tl.store(LOSS + row, tl.where(rowbad, nan_f32(), loss))
        if NEED_GRAD:
            sgc = tl.where(live, c * sigmoid(t), 0.0)
            S = tl.sum(sgc, 0)
            g = tl.where(neg & valid, (S / ssum) * e, -sgc) * scale
            g = tl.where(rowbad, nan_f32(), g)
            tl.store(grow + cols, g.to(G.dtype.element_ty), mask=inb)
        report_bad(FLAG, row, badc, C)
    else:
        # pass 1: online log-sum-exp over the negatives, counts
        m = tl.full((), NEG_BIG, tl.float32)
        ssum = tl.full((), 0.0, tl.float32)
        npos = tl.full((), 0, tl.int32)
        nneg = tl.full((), 0, tl.int32)
        badc = C
        for b0 in range(0, C, BLOCK):
            cc = b0 + cols
            inb, x, yv, bc = load_cols_checked(xrow, yrow, cc, C)
            badc = tl.minimum(badc, bc)
            neg = (yv == 0) & inb
            npos += tl.sum((yv & inb).to(tl.int32), 0)
            nneg += tl.sum(neg.to(tl.int32), 0)
            m_new = tl.maximum(m, tl.max(tl.where(neg, x, NEG_BIG), 0))
            ssum = ssum * tl.exp(m - m_new) + tl.sum(tl.where(neg, tl.exp(x - m_new), 0.0), 0)
            m = m_new
        A = m + tl.log(ssum)
        valid = (npos > 0) & (nneg > 0)
        rowbad = badc < C
        inv = 1.0 / tl.maximum(npos, 1).to(tl.float32)
        # pass 2: the positives' terms
        loss = tl.full((), 0.0, tl.float32)
        S = tl.full((), 0.0, tl.float32)
        for b0 in range(0, C, BLOCK):
            cc = b0 + cols
            inb, x, yv = load_cols(xrow, yrow, cc, C)
            live = yv & inb & valid
            c = load_weights(W, cc, inb, HAS_W, BLOCK)
            if not PAIR:
                c = c * inv
            t = A - x
            loss += tl.sum(tl.where(live, c * softplus(t), 0.0), 0)
            S += tl.sum(tl.where(live, c * sigmoid(t), 0.0), 0)
        tl.store(LOSS + row, tl.where(rowbad, nan_f32(), loss))
        if NEED_GRAD:
            # pass 3: the gradient
            for b0 in range(0, C, BLOCK):
                cc = b0 + cols
                inb, x, yv = load_cols(xrow, yrow, cc, C)
                neg = (yv == 0) & inb
                live = yv & inb & valid
                c = load_weights(W, cc, inb, HAS_W, BLOCK)
                if not PAIR:
                    c = c * inv
                gneg = S * tl.exp(tl.where(neg, x - A, NEG_BIG))
                g = tl.where(neg & valid, gneg, tl.where(live, -c * sigmoid(A - x), 0.0)) * scale
                g = tl.where(rowbad, nan_f32(), g)
                tl.store(grow + cc, g.to(G.dtype.element_ty), mask=inb)
        report_bad(FLAG, row, badc, C)


@triton.jit
def _lsep_kernel(X, Y, W, LOSS, G, FLAG, C, scale,
                 HAS_W: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr, SINGLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xrow = X + row * C
    yrow = Y + row * C
    grow = G + row * C
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        inb, x, yv, badc = load_cols_checked(xrow, yrow, cols, C)
        rowbad = badc < C
        pos = yv & inb
        neg = (yv == 0) & inb
        w = load_weights(W, cols, inb, HAS_W, BLOCK)
        pw = pos & (w > 0)
        mA = tl.max(tl.where(neg, x, NEG_BIG), 0)
        mB = tl.max(tl.where(pw, -x, NEG_BIG), 0)
        # one exp per element: negatives exp(x - mA), positives exp(-x - mB)
        arg = tl.where(neg, x - mA, tl.where(pw, -x - mB, NEG_BIG))
        e = tl.exp(arg)
        eA = tl.where(neg, e, 0.0)
        eB = tl.where(pw, w * e, 0.0)
        sA = tl.sum(eA, 0)
        sB = tl.sum(eB, 0)
        valid = (sA != 0) & (sB != 0)  # (NaN != 0: NaN logits propagate)
        z = (mA + tl.log(sA)) + (mB + tl.log(sB))
        loss = tl.where(valid, softplus(z), 0.0)
        tl.store(LOSS + row, tl.where(rowbad, nan_f32(), loss))
        if NEED_GRAD:
            s = sigmoid(z) * scale
            g = tl.where(neg, (s / sA) * eA, -(s / sB) * eB)
            g = tl.where(valid, g, 0.0)
            g = tl.where(rowbad, nan_f32(), g)
            tl.store(grow + cols, g.to(G.dtype.element_ty), mask=inb)
        report_bad(FLAG, row, badc, C)
    else:
        mA = tl.full((), NEG_BIG, tl.float32)
        mB = tl.full((), NEG_BIG, tl.float32)
        sA = tl.full((), 0.0, tl.float32)
        sB = tl.full((), 0.0, tl.float32)
        badc = C
        for b0 in range(0, C, BLOCK):
            cc = b0 + cols
            inb, x, yv, bc = load_cols_checked(xrow, yrow, cc, C)
            badc = tl.minimum(badc, bc)
            pos = yv & inb
            neg = (yv == 0) & inb
            w = load_weights(W, cc, inb, HAS_W, BLOCK)
            pw = pos & (w > 0)
            mA_new = tl.maximum(mA, tl.max(tl.where(neg, x, NEG_BIG), 0))
            mB_new = tl.maximum(mB, tl.max(tl.where(pw, -x, NEG_BIG), 0))
            e = tl.exp(tl.where(neg, x - mA_new, tl.where(pw, -x - mB_new, NEG_BIG)))
            sA = sA * tl.exp(mA - mA_new) + tl.sum(tl.where(neg, e, 0.0), 0)
            sB = sB * tl.exp(mB - mB_new) + tl.sum(tl.where(pw, w * e, 0.0), 0)
            mA = mA_new
            mB = mB_new
        valid = (sA != 0) & (sB != 0)  # (NaN != 0: NaN logits propagate)
        A = mA + tl.log(sA)
        Bv = mB + tl.log(sB)
        z = A + Bv
        rowbad = badc < C
        loss = tl.where(valid, softplus(z), 0.0)
        tl.store(LOSS + row, tl.where(rowbad, nan_f32(), loss))
        if NEED_GRAD:
            s = tl.where(valid, sigmoid(z) * scale, 0.0)
            for b0 in range(0, C, BLOCK):
                cc = b0 + cols
                inb, x, yv = load_cols(xrow, yrow, cc, C)
                pos = yv & inb
                neg = (yv == 0) & inb
                w = load_weights(W, cc, inb, HAS_W, BLOCK)
                pw = pos & (w > 0)
                e = tl.exp(tl.where(neg, x - A, tl.where(pw, -x - Bv, NEG_BIG)))
                g = tl.where(neg, s * e, tl.where(pw, -s * w * e, 0.0))
                g = tl.where(valid, g, 0.0)
                g = tl.where(rowbad, nan_f32(), g)
                tl.store(grow + cc, g.to(G.dtype.element_ty), mask=inb)
        report_bad(FLAG, row, badc, C)


def _launch(kernel, logits, targets, weights, need_grad, scale, block, **flags):
    x, y, w, rows, g, flag = row_buffers(logits, targets, weights, need_grad)
    B, C = x.shape
    BLOCK, SINGLE = pick_block(C, block)
    if B > 0:
        kernel[(B,)](x, y, w, rows, g, flag, C, float(scale), HAS_W=weights is not None, NEED_GRAD=bool(need_grad),
                     BLOCK=BLOCK, SINGLE=SINGLE, num_warps=num_warps_for(BLOCK), **flags)
        finish(flag, targets)
    return rows, (g if need_grad else None)


def wlsep(logits, targets, weights, need_grad, scale=1.0, block=None):
    return _launch(_wlsep_kernel, logits, targets, weights, need_grad, scale, block, PAIR=False)


def wlsep_pair(logits, targets, weights, need_grad, scale=1.0, block=None):
    return _launch(_wlsep_kernel, logits, targets, weights, need_grad, scale, block, PAIR=True)


def lsep(logits, targets, weights, need_grad, scale=1.0, block=None):
    return _launch(_lsep_kernel, logits, targets, weights, need_grad, scale, block)
