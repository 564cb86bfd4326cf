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

from ._common import check_device, num_warps_for, pick_block, targets_arg

__all__ = ["warp"]


@triton.jit
def _warp_kernel(X, Y, W, H, LOSS, G, IDX, CBUF, C, scale,
                 HAS_W: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr, SINGLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xrow = X + row * C
    yrow = Y + row * C
    grow = G + row * C
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        inb = cols < C
        x = tl.load(xrow + cols, mask=inb, other=0.0).to(tl.float32)
        yv = tl.load(yrow + cols, mask=inb, other=0) != 0
        pos = yv & inb
        neg = (yv == 0) & inb
        npos = tl.sum(pos.to(tl.int32), 0)
        if HAS_W:
            w = tl.load(W + cols, mask=inb, other=0.0).to(tl.float32)
        else:
            w = tl.full([BLOCK], 1.0, tl.float32)
        rank = tl.cumsum(pos.to(tl.int32), 0) - 1
        inv = 1.0 / tl.maximum(npos, 1).to(tl.float32)
        loss = tl.full((), 0.0, tl.float32)
        g = tl.zeros([BLOCK], tl.float32)
        for k in range(npos):
            sel = pos & (rank == k)
            xi = tl.sum(tl.where(sel, x, 0.0), 0)
            wi = tl.sum(tl.where(sel, w, 0.0), 0)
            mg = 1.0 + x - xi
            viol = neg & (mg > 0)
            R = tl.sum(viol.to(tl.int32), 0)
            S = tl.sum(tl.where(viol, mg, 0.0), 0)
            c = wi * tl.load(H + R) * inv
            loss += c * S
            if NEED_GRAD:
                g += tl.where(viol, c, tl.where(sel, -c * R.to(tl.float32), 0.0))
        tl.store(LOSS + row, loss)
        if NEED_GRAD:
            tl.store(grow + cols, (g * scale).to(G.dtype.element_ty), mask=inb)
    else:
        irow = IDX + row * C
        crow = CBUF + row * C
        # pass 0: compact the positives' column indices, count the negatives
        npos = tl.full((), 0, tl.int32)
        nneg = tl.full((), 0, tl.int32)
        for b0 in range(0, C, BLOCK):
            cc = b0 + cols
            inb = cc < C
            yv = tl.load(yrow + cc, mask=inb, other=0) != 0
            pos = yv & inb
            r = tl.cumsum(pos.to(tl.int32), 0) - 1 + npos
            tl.store(irow + r, cc.to(tl.int32), mask=pos)
            npos += tl.sum(pos.to(tl.int32), 0)
            nneg += tl.sum(((yv == 0) & inb).to(tl.int32), 0)
        tl.debug_barrier()
        inv = 1.0 / tl.maximum(npos, 1).to(tl.float32)
        loss = tl.full((), 0.0, tl.float32)
        # one exact pass over the columns per positive
        for k in range(npos):
            i = tl.load(irow + k)
            xi = tl.load(xrow + i).to(tl.float32)
            Rv = tl.zeros([BLOCK], tl.int32)
            Sv = tl.zeros([BLOCK], tl.float32)
            for b0 in range(0, C, BLOCK):
                cc = b0 + cols
                inb = cc < C
                x = tl.load(xrow + cc, mask=inb, other=0.0).to(tl.float32)
                yv = tl.load(yrow + cc, mask=inb, other=0) != 0
                mg = 1.0 + x - xi
                viol = (yv == 0) & inb & (mg > 0)
                Rv += viol.to(tl.int32)
                Sv += tl.where(viol, mg, 0.0)
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
        tl.store(LOSS + row, loss)
        if NEED_GRAD:
            tl.debug_barrier()
            # negatives: sum of c_i over the positives they violate
            for b0 in range(0, C, BLOCK):
                cc = b0 + cols
                inb = cc < C
                x = tl.load(xrow + cc, mask=inb, other=0.0).to(tl.float32)
                yv = tl.load(yrow + cc, mask=inb, other=0) != 0
                neg = (yv == 0) & inb
                gacc = tl.zeros([BLOCK], tl.float32)
                for k in range(npos):
                    i = tl.load(irow + k)
                    xi = tl.load(xrow + i).to(tl.float32)
                    c = tl.load(crow + k)
                    gacc += tl.where(1.0 + x - xi > 0, c, 0.0)
                tl.store(grow + cc, (gacc * scale).to(G.dtype.element_ty), mask=neg)


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
    check_device(logits)
    x = logits.contiguous()
    B, C = x.shape
    y = targets_arg(targets)
    rows = torch.empty(B, dtype=torch.float32, device=x.device)
    g = torch.empty_like(x) if need_grad else rows
    w = weights.contiguous() if weights is not None else rows
    BLOCK, SINGLE = pick_block(C, block)
    if SINGLE:
        idx = cbuf = rows  # unused
    else:
        idx = torch.empty(B, C, dtype=torch.int32, device=x.device)
        cbuf = torch.empty(B, C, dtype=torch.float32, device=x.device)
    if B > 0:
        _warp_kernel[(B,)](x, y, w, _harmonic(C, x.device), rows, g, idx, cbuf, C, float(scale),
                           HAS_W=weights is not None, NEED_GRAD=bool(need_grad), BLOCK=BLOCK, SINGLE=SINGLE,
                           num_warps=num_warps_for(BLOCK))
    return rows, (g if need_grad else None)
