"""Fused Triton kernel for WARP, exact over all (positive, negative) pairs.

Per row (paper eq. 2): ``R_i = #{j in N: 1 + x_j - x_i > 0}``, ``S_i = sum_N max(0, 1 + x_j - x_i)``,
``c_i = w_i H(R_i) / |Y|`` (``H`` the harmonic numbers, read from a table, H(R_i) constant
for the gradient), ``L = sum_Y c_i S_i``, ``dL/dx_i = -c_i R_i``,
``dL/dx_j = sum_{i in Y: 1 + x_j - x_i > 0} c_i``.

The kernel loops over the row's positives (|Y| ~ 2 on M-MiT) with an exact vector pass over
the columns for each: O(|Y| C) work per row, O(C) memory, no C x C.

* C <= one block: the row stays in registers; the k-th positive is picked out with a
  prefix count (``tl.cumsum``) -- no scratch memory.
* longer rows: a first pass compacts the positive column indices into a scratch row
  (``tl.cumsum`` ranks + a masked store), then one pass over the column blocks per positive
  gives ``R_i, S_i`` (and writes the positive's gradient), then a last pass writes the
  negatives' gradients. ``tl.debug_barrier()`` orders the scratch writes and reads.
"""
import torch
import triton
import triton.language as tl

from ._common import (nan_f32, finish, first_bad_col, load_cols, load_cols_checked, load_weights, num_warps_for, pick_block,
                      report_bad, row_buffers)

__all__ = ["warp"]


@triton.jit
def _warp_kernel(X, Y, W, H, LOSS, G, FLAG, IDX, CBUF, C, scale,
                 HAS_W: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr, SINGLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xrow = X + row * C
    yrow = Y + row * C
    grow = G + row * C
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        inb, x, yv, badc = load_cols_checked(xrow, yrow, cols, C)
        pos = yv & inb
        neg = (yv == 0) & inb
        npos = tl.sum(pos.to(tl.int32), 0)
        nneg = tl.sum(neg.to(tl.int32), 0)
        nloop = tl.where(nneg > 0, npos, 0)  # no negative: nothing to rank, loss 0
        w = load_weights(W, cols, inb, HAS_W, BLOCK)
        inv = 1.0 / tl.maximum(npos, 1).to(tl.float32)
        loss = tl.full((), 0.0, tl.float32)
        g = tl.zeros([BLOCK], tl.float32)
        if npos <= nneg:
            # loop over the positives (the usual case: |Y| ~ 2)
            rank = tl.cumsum(pos.to(tl.int32), 0) - 1
            for k in range(nloop):
                sel = pos & (rank == k)
                xi = tl.sum(tl.where(sel, x, 0.0), 0)
                wi = tl.sum(tl.where(sel, w, 0.0), 0)
                mg = 1.0 + x - xi
                viol = neg & (mg > 0)
                R = tl.sum(viol.to(tl.int32), 0)
                S = tl.sum(tl.where(neg & ((mg > 0) | (mg != mg)), mg, 0.0), 0)  # NaN propagates
                c = wi * tl.load(H + R) * inv
                loss += c * S
                if NEED_GRAD:
                    g += tl.where(viol, c, tl.where(sel, -c * R.to(tl.float32), 0.0))
        else:
            # dense rows: loop over the (fewer) negatives, R and S as vectors over the positives
            rank = tl.cumsum(neg.to(tl.int32), 0) - 1
            Rv = tl.zeros([BLOCK], tl.int32)
            Sv = tl.zeros([BLOCK], tl.float32)
            for k in range(tl.where(npos > 0, nneg, 0)):
                xj = tl.sum(tl.where(neg & (rank == k), x, 0.0), 0)
                mg = 1.0 + xj - x
                viol = pos & (mg > 0)
                Rv += viol.to(tl.int32)
                Sv += tl.where(pos & ((mg > 0) | (mg != mg)), mg, 0.0)
            cv = tl.where(pos, w * tl.load(H + Rv, mask=pos, other=0.0) * inv, 0.0)
            loss += tl.sum(cv * Sv, 0)
            if NEED_GRAD:
                g = -cv * Rv.to(tl.float32)
                for k in range(tl.where(npos > 0, nneg, 0)):
                    sel = neg & (rank == k)
                    xj = tl.sum(tl.where(sel, x, 0.0), 0)
                    gj = tl.sum(tl.where(pos & (1.0 + xj - x > 0), cv, 0.0), 0)
                    g += tl.where(sel, gj, 0.0)
        rowbad = badc < C
        tl.store(LOSS + row, tl.where(rowbad, nan_f32(), loss))
        if NEED_GRAD:
            g = tl.where(rowbad, nan_f32(), g * scale)
            tl.store(grow + cols, g.to(G.dtype.element_ty), mask=inb)
        report_bad(FLAG, row, badc, C)
    else:
        irow = IDX + row * C
        crow = CBUF + row * C
        # pass 0: compact the column indices: positives from the front of the scratch row,
        # negatives from its back (npos + nneg = C, so they never meet)
        npos = tl.full((), 0, tl.int32)
        nneg = tl.full((), 0, tl.int32)
        badc = C
        for b0 in range(0, C, BLOCK):
            cc = b0 + cols
            inb = cc < C
            yr = tl.load(yrow + cc, mask=inb, other=0)
            badc = tl.minimum(badc, first_bad_col(yr, cc, inb, C))
            yv = yr != 0
            pos = yv & inb
            neg = (yv == 0) & inb
            rp = tl.cumsum(pos.to(tl.int32), 0) - 1 + npos
            rn = tl.cumsum(neg.to(tl.int32), 0) - 1 + nneg
            tl.store(irow + rp, cc.to(tl.int32), mask=pos)
            tl.store(irow + (C - 1 - rn), cc.to(tl.int32), mask=neg)
            npos += tl.sum(pos.to(tl.int32), 0)
            nneg += tl.sum(neg.to(tl.int32), 0)
        tl.debug_barrier()
        inv = 1.0 / tl.maximum(npos, 1).to(tl.float32)
        loss = tl.full((), 0.0, tl.float32)
        if npos <= nneg:
            # one exact pass over the columns per positive (|Y| ~ 2)
            for k in range(tl.where(nneg > 0, npos, 0)):
                i = tl.load(irow + k)
                xi = tl.load(xrow + i).to(tl.float32)
                Rv = tl.zeros([BLOCK], tl.int32)
                Sv = tl.zeros([BLOCK], tl.float32)
                for b0 in range(0, C, BLOCK):
                    cc = b0 + cols
                    inb, x, yv = load_cols(xrow, yrow, cc, C)
                    mg = 1.0 + x - xi
                    viol = (yv == 0) & inb & (mg > 0)
                    Rv += viol.to(tl.int32)
                    Sv += tl.where((yv == 0) & inb & ((mg > 0) | (mg != mg)), mg, 0.0)
                R = tl.sum(Rv, 0)
                S = tl.sum(Sv, 0)
                if HAS_W:
                    wi = tl.load(W + i).to(tl.float32)
                else:
                    wi = 1.0
                c = wi * tl.load(H + R) * inv
                loss += c * S
                if NEED_GRAD:
                    tl.store(crow + k, c)
                    tl.store(grow + i, (-c * R.to(tl.float32) * scale).to(G.dtype.element_ty))
            if NEED_GRAD:
                tl.debug_barrier()
                # negatives: sum of c_i over the positives they violate
                for b0 in range(0, C, BLOCK):
                    cc = b0 + cols
                    inb, x, yv = load_cols(xrow, yrow, cc, C)
                    neg = (yv == 0) & inb
                    gacc = tl.zeros([BLOCK], tl.float32)
                    for k in range(npos):
                        i = tl.load(irow + k)
                        xi = tl.load(xrow + i).to(tl.float32)
                        c = tl.load(crow + k)
                        gacc += tl.where(1.0 + x - xi > 0, c, 0.0)
                    tl.store(grow + cc, (gacc * scale).to(G.dtype.element_ty), mask=neg)
        else:
            # dense rows (more positives than negatives): per block of columns, R and S of its
            # positives over a loop on the negatives; then one pass over the columns per negative
            for b0 in range(0, C, BLOCK):
                cc = b0 + cols
                inb, x, yv = load_cols(xrow, yrow, cc, C)
                pos = yv & inb
                Rv = tl.zeros([BLOCK], tl.int32)
                Sv = tl.zeros([BLOCK], tl.float32)
                for k in range(nneg):
                    j = tl.load(irow + (C - 1 - k))
                    xj = tl.load(xrow + j).to(tl.float32)
                    mg = 1.0 + xj - x
                    viol = pos & (mg > 0)
                    Rv += viol.to(tl.int32)
                    Sv += tl.where(pos & ((mg > 0) | (mg != mg)), mg, 0.0)
                w = load_weights(W, cc, inb, HAS_W, BLOCK)
                cv = tl.where(pos, w * tl.load(H + Rv, mask=pos, other=0.0) * inv, 0.0)
                loss += tl.sum(cv * Sv, 0)
                if NEED_GRAD:
                    tl.store(crow + cc, cv, mask=inb)
                    tl.store(grow + cc, (-cv * Rv.to(tl.float32) * scale).to(G.dtype.element_ty), mask=pos)
            if NEED_GRAD:
                tl.debug_barrier()
                for k in range(nneg):
                    j = tl.load(irow + (C - 1 - k))
                    xj = tl.load(xrow + j).to(tl.float32)
                    gv = tl.zeros([BLOCK], tl.float32)
                    for b0 in range(0, C, BLOCK):
                        cc = b0 + cols
                        inb, x, yv = load_cols(xrow, yrow, cc, C)
                        cv = tl.load(crow + cc, mask=inb, other=0.0)
                        gv += tl.where(yv & inb & (1.0 + xj - x > 0), cv, 0.0)
                    tl.store(grow + j, (tl.sum(gv, 0) * scale).to(G.dtype.element_ty))
        rowbad = badc < C
        tl.store(LOSS + row, tl.where(rowbad, nan_f32(), loss))
        if NEED_GRAD:
            if rowbad:  # poison the row's gradient (bad targets: its values mean nothing)
                tl.debug_barrier()
                for b0 in range(0, C, BLOCK):
                    cc = b0 + cols
                    tl.store(grow + cc, (tl.zeros([BLOCK], tl.float32) + nan_f32()).to(G.dtype.element_ty), mask=cc < C)
        report_bad(FLAG, row, badc, C)


_H_CACHE = {}


def _harmonic(C, device):
    key = (C, str(device))
    h = _H_CACHE.get(key)
    if h is None:
        h = torch.zeros(C + 1, dtype=torch.float64)
        if C > 0:
            h[1:] = torch.cumsum(1.0 / torch.arange(1, C + 1, dtype=torch.float64), 0)
        h = h.to(device=device, dtype=torch.float32)
        if len(_H_CACHE) > 64:
            _H_CACHE.clear()
        _H_CACHE[key] = h
    return h


def warp(logits, targets, weights, need_grad, scale=1.0, block=None):
    x, y, w, rows, g, flag = row_buffers(logits, targets, weights, need_grad)
    B, C = x.shape
    BLOCK, SINGLE = pick_block(C, block)
    if SINGLE:
        idx = cbuf = rows  # unused
    else:
        idx = torch.empty(B, C, dtype=torch.int32, device=x.device)
        cbuf = torch.empty(B, C, dtype=torch.float32, device=x.device)
    if B > 0:
        _warp_kernel[(B,)](x, y, w, _harmonic(C, x.device), rows, g, flag, idx, cbuf, C, float(scale),
                           HAS_W=weights is not None, NEED_GRAD=bool(need_grad), BLOCK=BLOCK, SINGLE=SINGLE,
                           num_warps=num_warps_for(BLOCK))
        finish(flag, targets)
    return rows, (g if need_grad else None)
