"""Action Network Dissection (paper section 5.2): streaming thresholds and dataset-level IoU.

Arrays in, arrays out, in memory bounded by units x concepts (never by the dataset size).

**Thresholds**: ``T_k`` = the top-``q`` quantile of unit ``k``'s raw activations over all images and
positions, exactly NetDissect's ``np.percentile(a_k, 100 (1 - q))`` (float64), computed in a few
streaming passes by :class:`~.quantile.ExactQuantile` (radix selection on the values' bits; memory
bounded by the units).

**IoU** (:class:`IoUTally`). The unit's map is upsampled (bilinear, ``align_corners=False``) to
the mask size and binarised, ``M_k = up(a_k) > T_k``. With concept masks ``L_c``:

    IoU_{k,c} = sum_i |M_k(i) & L_c(i)| / sum_{i in I_cat(c)} |M_k(i) | L_c(i)|

where ``I_cat(c)`` are the images annotated in ``c``'s category (NetDissect's rule: Broden
mixes source datasets and a concept can only be scored where its category was labelled;
``union="all"`` sums the union over every image, the formula of paper.md literally). The
tally keeps ``inter [K, C]``, ``label [C]``, ``unit_cat [K, n_categories]``, ``unit_all [K]``.
A unit's concept is ``argmax_c IoU_{k,c}``; it is interpretable when that IoU > 0.04.

The upsampling is evaluated here (:func:`_axis`, :func:`_bilinear_at`), in float64: it equals
``F.interpolate(..., 'bilinear', align_corners=False)`` up to rounding. :meth:`IoUTally.update_sparse`
(the one the runs use) never upsamples a whole map: it skips (image, unit) pairs with no cell
above ``T_k``, evaluates only blocks of output pixels next to a hot cell whose exact maximum (at
a block corner) exceeds ``T_k``, and counts the lit pixels against all concepts of the image.
On CPU tensors this is the C++ kernel ``mmit_fast._C.dissect_tally_ptr`` (``csrc/dissect.cpp``:
bit-packed lit and concept masks, intersections by popcount, units over OpenMP threads); on
other devices torch ops (:func:`_lit_pixels`, :meth:`IoUTally._join`). Both evaluate each pixel
with the float64 expression of :func:`_bilinear_at`, so their sums equal the dense ones
(:meth:`IoUTally.update` of :func:`binarise_upsampled`) bit for bit, except for values within
float64 rounding of a threshold. Thresholds are float64 throughout: a cell is hot when
``float64(a) > T_k``. :meth:`IoUTally.update_packed` takes the concept masks bit-packed (the mask
cache's layout, :mod:`.maskcache`) and calls ``mmit_fast._C.dissect_tally_bits_ptr`` on CPU (a
whole-image label costs no bits: its intersection is the lit area).

**Top images** (:class:`TopImages`): per unit the ``n`` images with the largest maximum
activation (a bounded buffer, merged batch by batch with ``topk``).
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import torch

_BLOCK = 8   # pixels per block side in the sparse binarisation (:func:`_lit_pixels`)

__all__ = ["IoUTally", "TopImages", "binarise_upsampled", "assign_labels"]


def _axis(n_in: int, n_out: int, device) -> Tuple[torch.Tensor, ...]:
    """Bilinear taps along one axis (``align_corners=False``, PyTorch's and PIL's convention for
    enlarging): output ``o`` reads ``s = max(0, (o + 0.5) n_in / n_out - 0.5)``, inputs
    ``i0 = min(floor(s), n_in - 1)`` and ``i1 = min(i0 + 1, n_in - 1)`` with weights ``1 - l``, ``l``
    (``l = s - i0`` clamped to [0, 1]). float64 ``(i0, i1, w0, w1)``, each [n_out]."""
    s = ((torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = s.floor().long().clamp_max(n_in - 1)
    lam = (s - i0).clamp(0, 1)
    return i0, (i0 + 1).clamp_max(n_in - 1), 1 - lam, lam


def _bilinear_at(flat: torch.Tensor, hw: Tuple[int, int], p, y, x, ay, ax) -> torch.Tensor:
    """Upsampled values (float64) at pixels ``(y, x)`` of maps ``p`` of ``flat`` [A * h * w]:
    ``w0y (w0x a[i0y, i0x] + w1x a[i0y, i1x]) + w1y (w0x a[i1y, i0x] + w1x a[i1y, i1x])``."""
    w = hw[1]
    base = p * (hw[0] * w)
    r0, r1, c0, c1 = base + ay[0][y] * w, base + ay[1][y] * w, ax[0][x], ax[1][x]
    wx0, wx1 = ax[2][x], ax[3][x]
    return (ay[2][y] * (wx0 * flat[r0 + c0] + wx1 * flat[r0 + c1])
            + ay[3][y] * (wx0 * flat[r1 + c0] + wx1 * flat[r1 + c1]))


def binarise_upsampled(act: torch.Tensor, size: Tuple[int, int], thresholds: torch.Tensor,
                       max_elems: int = 1 << 22) -> torch.Tensor:
    """``up(act) > T`` as bool [B, K, H, W]: bilinear upsampling (:func:`_axis`) evaluated in float64
    (it equals ``F.interpolate(..., 'bilinear', align_corners=False)`` up to float32 rounding), in
    chunks of maps so that no intermediate exceeds ``max_elems`` pixels."""
    B, K, h, w = act.shape
    H, W = size
    dev = act.device
    ay, ax = _axis(h, H, dev), _axis(w, W, dev)
    flat = act.reshape(B * K, h * w).double()
    T = thresholds.double().to(dev).repeat(B)
    yy = torch.arange(H, device=dev).repeat_interleave(W)
    xx = torch.arange(W, device=dev).repeat(H)
    out = torch.empty(B * K, H * W, dtype=torch.bool, device=dev)
    step = max(1, max_elems // max(1, H * W))
    for m0 in range(0, B * K, step):
        m1 = min(B * K, m0 + step)
        p = torch.arange(m1 - m0, device=dev).repeat_interleave(H * W)
        v = _bilinear_at(flat[m0:m1].reshape(-1), (h, w), p, yy.repeat(m1 - m0), xx.repeat(m1 - m0), ay, ax)
        out[m0:m1] = (v.view(m1 - m0, H * W) > T[m0:m1, None])
    return out.view(B, K, H, W)


def _axis_blocks(ax: Tuple[torch.Tensor, ...], size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Along one axis, the outputs with the same first tap ``i`` form one run (``i0`` never
    decreases); each run is cut into blocks of at most ``size`` outputs: (start, count, tap)."""
    i0 = ax[0]
    n = i0.numel()
    new = torch.ones(n, dtype=torch.bool, device=i0.device)
    new[1:] = i0[1:] != i0[:-1]
    run_start = torch.cummax(torch.where(new, torch.arange(n, device=i0.device), 0), 0).values
    first = new | ((torch.arange(n, device=i0.device) - run_start) % size == 0)
    start = torch.nonzero(first).flatten()
    count = torch.diff(start, append=torch.tensor([n], device=i0.device))    # a block ends where the next starts
    return start, count, i0[start]


def _block_values(flat: torch.Tensor, hw: Tuple[int, int], p, ti, tj, rows, cols, ay, ax) -> torch.Tensor:
    """Upsampled values [Q, R, C] of map ``p[q]`` at ``rows[q] x cols[q]``, all pixels of block ``q``
    sharing the first taps ``(ti[q], tj[q])``: ``w0y top + w1y bottom`` with ``top``/``bottom`` the two
    tap rows interpolated along x (the same expression, hence the same bits, as :func:`_bilinear_at`)."""
    h, w = hw
    i1, j1 = (ti + 1).clamp_max(h - 1), (tj + 1).clamp_max(w - 1)
    base = p * (h * w)
    a00, a01 = flat[base + ti * w + tj][:, None], flat[base + ti * w + j1][:, None]
    a10, a11 = flat[base + i1 * w + tj][:, None], flat[base + i1 * w + j1][:, None]
    wx0, wx1 = ax[2][cols], ax[3][cols]
    top, bot = wx0 * a00 + wx1 * a01, wx0 * a10 + wx1 * a11                 # [Q, C]
    return ay[2][rows][:, :, None] * top[:, None, :] + ay[3][rows][:, :, None] * bot[:, None, :]


@functools.lru_cache(maxsize=None)
def _cpp():
    """The C++ extension when it is built and has the dissection kernels, else None (looked up once)."""
    try:
        from mmit_fast import _C
    except ImportError:  # pragma: no cover - depends on the build
        return None
    return _C if hasattr(_C, "dissect_tally_bits_ptr") else None


def _use_cpp(backend: str, device) -> bool:
    """``backend`` "cpp" / "torch" / "auto" (C++ for CPU tensors when the extension is built) -> use C++?"""
    if backend not in ("auto", "cpp", "torch"):
        raise ValueError(f"backend must be 'auto', 'cpp' or 'torch', got {backend!r}")
    if backend == "cpp":
        if _cpp() is None:
            raise ValueError("backend='cpp': mmit_fast._C is not built (python setup.py build_ext --inplace)")
        if torch.device(device).type != "cpu":
            raise ValueError(f"backend='cpp' needs CPU tensors, got {device}")
    return backend == "cpp" or (backend == "auto" and torch.device(device).type == "cpu" and _cpp() is not None)


_PAD = -1   # index of the NaN weight appended by :func:`_nan_padded`


def _nan_padded(ax: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
    """The axis taps with a last output whose weights are NaN (padding pixels then compare False)."""
    nan = torch.full((1,), float("nan"), dtype=ax[2].dtype, device=ax[2].device)
    return ax[0], ax[1], torch.cat([ax[2], nan]), torch.cat([ax[3], nan])


def _lit_pixels(maps: torch.Tensor, hot: torch.Tensor, T: torch.Tensor, ay, ax, by, bx
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pixels of ``up(maps[a]) > T[a]`` as (map, y, x), from ``hot`` [A, h, w] = cells above ``T``.

    Bounds, each exact (bilinear interpolation between 4 cells is bilinear in the pixel's
    weights, which are monotone in the pixel's position): a block of pixels with first taps
    ``(i, j)`` reads cells ``{i, i+1} x {j, j+1}`` only, so it can be lit only when one of them is
    hot; and its maximum is at one of its 4 corner pixels. So only blocks (``by``, ``bx``:
    :func:`_axis_blocks`) next to a hot cell are considered, their 4 corners evaluated, and the
    pixels of the blocks whose corner maximum exceeds ``T`` evaluated and binarised. Equal to
    thresholding every pixel, except for values within float64 rounding of ``T``."""
    h, w = hw = maps.shape[1:]
    dev = maps.device
    q = hot.clone()
    q[:, :-1] |= hot[:, 1:]
    quad = q.clone()
    quad[:, :, :-1] |= q[:, :, 1:]                                      # [A, h, w]: a cell of 4 is hot
    live = quad[:, by[2]][:, :, bx[2]]                                   # [A, n_row_blocks, n_col_blocks]
    p, r, c = torch.nonzero(live, as_tuple=True)
    flat = maps.reshape(-1)
    ends = lambda b, k: torch.stack([b[0][k], b[0][k] + b[1][k] - 1], dim=1)  # noqa: E731
    v = _block_values(flat, hw, p, by[2][r], bx[2][c], ends(by, r), ends(bx, c), ay, ax)
    keep = v.flatten(1).amax(dim=1) > T[p]
    p, r, c = p[keep], r[keep], c[keep]
    R, C = int(by[1].max()), int(bx[1].max())
    rr, cc = torch.arange(R, device=dev), torch.arange(C, device=dev)
    ok_r, ok_c = rr < by[1][r][:, None], cc < bx[1][c][:, None]
    rows = torch.where(ok_r, by[0][r][:, None] + rr, _PAD)          # padding reads the NaN weights
    cols = torch.where(ok_c, bx[0][c][:, None] + cc, _PAD)
    v = _block_values(flat, hw, p, by[2][r], bx[2][c], rows, cols, _nan_padded(ay), _nan_padded(ax))
    k, y, x = torch.nonzero(v > T[p][:, None, None], as_tuple=True)  # NaN > T is False
    return p[k], rows[k, y], cols[k, x]


def _concept_table(concepts, cols: torch.Tensor, hw: int, n_concepts: int, device) -> torch.Tensor:
    """uint8 [B * hw, len(cols)]: 1 where batch pixel ``b * hw + pixel`` is in concept ``cols[j]``."""
    pos = torch.full((n_concepts,), -1, dtype=torch.long, device=device)
    pos[cols] = torch.arange(cols.numel(), device=device)
    table = torch.zeros(len(concepts) * hw, cols.numel(), dtype=torch.uint8, device=device)
    for b, (idx, Lb) in enumerate(concepts):
        j = pos[idx]
        sel = j >= 0
        if bool(sel.any()):
            table[b * hw:(b + 1) * hw, j[sel]] = _as_u8(Lb.reshape(idx.numel(), -1)[sel]).t()
    return table


def unpack_concepts(bits: torch.Tensor, word: torch.Tensor, offsets: torch.Tensor, concept: torch.Tensor,
                    size: Tuple[int, int], device=None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Bit-packed masks (:meth:`IoUTally.update_packed`'s layout) as ``[(concept indices [P_b], bool
    masks [P_b, H, W])]`` per image, the form :meth:`IoUTally.update_sparse` takes."""
    import numpy as np

    H, W = size
    WW = (W + 63) // 64
    raw = bits.cpu().numpy().view(np.uint8)
    out = []
    for b in range(offsets.numel() - 1):
        p0, p1 = int(offsets[b]), int(offsets[b + 1])
        masks = np.ones((p1 - p0, H, W), bool)
        for j, p in enumerate(range(p0, p1)):
            w0 = int(word[p])
            if w0 >= 0:
                rows = raw[w0 * 8:(w0 + H * WW) * 8].reshape(H, WW * 8)
                masks[j] = np.unpackbits(rows, axis=1, bitorder="little")[:, :W].astype(bool)
        out.append((concept[p0:p1].to(device), torch.from_numpy(masks).to(device)))
    return out


def _as_u8(m: torch.Tensor) -> torch.Tensor:
    """0/1 uint8 view (no copy for bool masks)."""
    return (m if m.dtype == torch.bool else m != 0).view(torch.uint8)


class IoUTally:
    """Dataset-level IoU sums (module docstring). ``concept_cat`` [C] = category index of each concept."""

    def __init__(self, units: int, concept_cat: Sequence[int], n_categories: int, device=None):
        self.K, self.C = int(units), len(concept_cat)
        self.cat = torch.as_tensor(list(concept_cat), dtype=torch.long, device=device)
        self.inter = torch.zeros(self.K, self.C, dtype=torch.float64, device=device)
        self.label = torch.zeros(self.C, dtype=torch.float64, device=device)
        self.unit_cat = torch.zeros(self.K, n_categories, dtype=torch.float64, device=device)
        self.unit_all = torch.zeros(self.K, dtype=torch.float64, device=device)

    def update(self, M: torch.Tensor, present: torch.Tensor, L: torch.Tensor, annotated: torch.Tensor) -> None:
        """``M`` bool [B, K, H, W] unit masks; ``present`` long [P] concept indices of this batch;
        ``L`` bool [B, P, H, W] their masks; ``annotated`` bool [B, n_categories]."""
        B = M.shape[0]
        Mf = M.reshape(B, self.K, -1).float()
        area = Mf.sum(dim=2).double()                                          # [B, K]
        self.unit_all += area.sum(dim=0)
        self.unit_cat += area.t() @ annotated.double()
        if present.numel():
            Lf = L.reshape(B, L.shape[1], -1).float()
            inter = torch.einsum("bkx,bpx->kp", Mf, Lf).double()
            self.inter.index_add_(1, present, inter)
            self.label.index_add_(0, present, Lf.sum(dim=(0, 2)).double())

    def update_sparse(self, act: torch.Tensor, size: Tuple[int, int], thresholds: torch.Tensor,
                      concepts: Sequence[Tuple[torch.Tensor, torch.Tensor]], annotated: torch.Tensor,
                      max_elems: int = 1 << 23, backend: str = "auto", threads: Optional[int] = None) -> None:
        """The same sums as :meth:`update`, from raw maps ``act`` [B, K, h, w], touching only the
        output pixels that can exceed the threshold. Bilinear upsampling is a convex combination of
        at most 4 input cells, so a pixel is dark unless one of its cells is above ``T_k`` (an
        (image, unit) pair with no such cell has an empty mask, and is skipped). ``concepts[b]`` =
        (concept indices [P_b], masks [P_b, H, W], bool or 0/1) of image ``b``.

        ``backend``: ``"cpp"`` (``mmit_fast._C.dissect_tally_ptr``, CPU tensors: per (image, unit)
        the pixels next to a hot cell are evaluated into a bit-packed mask and intersected with the
        bit-packed concept masks by popcount, units split over ``threads`` OpenMP threads, default
        ``torch.get_num_threads()``), ``"torch"`` (any device: :func:`_lit_pixels` finds the lit pixels
        from blocks next to hot cells, counted against every concept of the batch at once by
        :meth:`_join`; temporaries bounded by chunks of at most ``max_elems`` pixels; no Python loop
        over units) or ``"auto"`` (``cpp`` for CPU tensors when the extension is built). Both evaluate
        every pixel with the same float64 expression as :func:`binarise_upsampled`, so their sums
        equal the dense ones bit for bit (up to values within float64 rounding of ``T_k``)."""
        dev = act.device
        if _use_cpp(backend, dev):
            return self._update_cpp(act, size, thresholds, concepts, annotated, threads)
        concepts = [(idx.to(dev), Lb) for idx, Lb in concepts]
        for idx, Lb in concepts:
            if idx.numel():
                self.label.index_add_(0, idx, _as_u8(Lb.reshape(idx.numel(), -1)).sum(dim=1, dtype=torch.float64))
        k, g = self._lit(act, size, thresholds.to(dev).double(), annotated, max_elems)
        self._join(k, g, concepts, size, max_elems)

    def _update_cpp(self, act, size, thresholds, concepts, annotated, threads) -> None:
        """:meth:`update_sparse` by the C++ kernel (``csrc/dissect.cpp``): buffers cross as data pointers."""
        B, K, h, w = act.shape
        H, W = int(size[0]), int(size[1])
        if len(concepts) != B or annotated.shape[0] != B:
            raise ValueError(f"{B} maps but {len(concepts)} concept lists and {annotated.shape[0]} annotation rows")
        if K != self.K:
            raise ValueError(f"expected {self.K} units, got {K}")
        a = act.detach().to(torch.float32).contiguous()
        t = thresholds.detach().to(device="cpu", dtype=torch.float64).contiguous()
        taps = [x.contiguous() for x in _axis(h, H, "cpu") + _axis(w, W, "cpu")]
        counts = [int(idx.numel()) for idx, _ in concepts]
        P = sum(counts)
        if P:
            masks = torch.cat([_as_u8(Lb.reshape(n, H, W)) for (_, Lb), n in zip(concepts, counts) if n]).contiguous()
            concept = torch.cat([idx.reshape(-1) for idx, _ in concepts]).to(torch.int64).contiguous()
            lo, hi = int(concept.min()), int(concept.max())
            if lo < 0 or hi >= self.C:
                raise ValueError(f"concept index {lo if lo < 0 else hi} outside [0, {self.C})")
        else:
            masks, concept = torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        offsets = torch.tensor([0] + counts, dtype=torch.int64).cumsum(0)
        area, mask_area = torch.empty(B, K, dtype=torch.float64), torch.empty(P, dtype=torch.float64)
        ptr = lambda x: x.data_ptr()  # noqa: E731
        _cpp().dissect_tally_ptr(ptr(a), ptr(t), B, K, h, w, H, W, *map(ptr, taps), ptr(masks), P, ptr(offsets),
                                 ptr(concept), self.C, ptr(self.inter), ptr(area), ptr(mask_area),
                                 torch.get_num_threads() if threads is None else int(threads))
        if P:
            self.label.index_add_(0, concept, mask_area)
        self.unit_all += area.sum(dim=0)
        self.unit_cat += area.t() @ annotated.to(torch.float64)

    def update_packed(self, act: torch.Tensor, size: Tuple[int, int], thresholds: torch.Tensor, bits: torch.Tensor,
                      word: torch.Tensor, offsets: torch.Tensor, concept: torch.Tensor, mask_area: torch.Tensor,
                      annotated: torch.Tensor, backend: str = "auto", threads: Optional[int] = None) -> None:
        """:meth:`update_sparse` with bit-packed concept masks (:mod:`.maskcache`'s layout): ``bits``
        int64 [n_words] (CPU), mask ``p``'s ``H`` rows of ``ceil(W / 64)`` words from ``word[p]`` (bit
        ``x`` of row ``y`` = pixel ``(y, x)``; ``word[p] = -1``: the whole image), image ``b`` owning
        masks ``offsets[b] .. offsets[b + 1]``, ``concept`` [P] their columns, ``mask_area`` [P] their
        pixel counts. On CPU the C++ kernel reads the bits in place; elsewhere they are unpacked and
        passed to :meth:`update_sparse`."""
        B, K = act.shape[:2]
        H, W = int(size[0]), int(size[1])
        P = int(concept.numel())
        if offsets.numel() != B + 1 or annotated.shape[0] != B or word.numel() != P or mask_area.numel() != P:
            raise ValueError(f"{B} maps, {offsets.numel() - 1} images of masks, {annotated.shape[0]} annotation rows, "
                             f"{P} concepts, {word.numel()} mask offsets, {mask_area.numel()} areas")
        if not _use_cpp(backend, act.device):
            return self.update_sparse(act, size, thresholds, unpack_concepts(bits, word, offsets, concept, (H, W),
                                                                            act.device),
                                      annotated.to(act.device), backend="torch", threads=threads)
        if K != self.K:
            raise ValueError(f"expected {self.K} units, got {K}")
        if P and (int(concept.min()) < 0 or int(concept.max()) >= self.C):
            raise ValueError(f"concept index outside [0, {self.C})")
        a = act.detach().to(torch.float32).contiguous()
        t = thresholds.detach().to(device="cpu", dtype=torch.float64).contiguous()
        taps = [x.contiguous() for x in _axis(act.shape[2], H, "cpu") + _axis(act.shape[3], W, "cpu")]
        bits, word = bits.contiguous(), word.to(torch.int64).contiguous()
        offsets, concept = offsets.to(torch.int64).contiguous(), concept.to(torch.int64).contiguous()
        area = torch.empty(B, K, dtype=torch.float64)
        _cpp().dissect_tally_bits_ptr(a.data_ptr(), t.data_ptr(), B, K, a.shape[2], a.shape[3], H, W,
                                      *(x.data_ptr() for x in taps), bits.data_ptr(), bits.numel(), word.data_ptr(), P,
                                      offsets.data_ptr(), concept.data_ptr(), self.C, self.inter.data_ptr(),
                                      area.data_ptr(), torch.get_num_threads() if threads is None else int(threads))
        if P:
            self.label.index_add_(0, concept, mask_area.to(torch.float64))
        self.unit_all += area.sum(dim=0)
        self.unit_cat += area.t() @ annotated.to(torch.float64)

    def _lit(self, act, size, T, annotated, max_elems) -> Tuple[torch.Tensor, torch.Tensor]:
        """Lit pixels of the batch as (unit [n], batch pixel ``b * H * W + y * W + x`` [n]); adds their
        areas to ``unit_all`` and ``unit_cat``."""
        B, K, h, w = act.shape
        H, W = size
        dev = act.device
        hot = act.double() > T.view(1, -1, 1, 1)
        bs, ks = torch.nonzero(hot.flatten(2).any(dim=2), as_tuple=True)
        lit_k, lit_g = [torch.zeros(0, dtype=torch.long, device=dev)], [torch.zeros(0, dtype=torch.long, device=dev)]
        if bs.numel() == 0:
            return lit_k[0], lit_g[0]
        ay, ax = _axis(h, H, dev), _axis(w, W, dev)
        axes = (ay, ax, _axis_blocks(ay, _BLOCK), _axis_blocks(ax, _BLOCK))
        # chunks of pairs; a hot cell makes at most 4 live quads of (run y) x (run x) candidate pixels
        per_cell = 4 * int(torch.bincount(ay[0]).max()) * int(torch.bincount(ax[0]).max())
        ends = torch.cumsum(hot[bs, ks].flatten(1).sum(dim=1), 0) * per_cell
        a0 = 0
        while a0 < bs.numel():
            base = int(ends[a0 - 1]) if a0 else 0
            a1 = max(a0 + 1, int(torch.searchsorted(ends, base + max_elems, right=True)))
            b_, k_ = bs[a0:a1], ks[a0:a1]
            a0 = a1
            p, y, x = _lit_pixels(act[b_, k_].double(), hot[b_, k_], T[k_], *axes)
            area = torch.bincount(p, minlength=b_.numel()).double()
            self.unit_all.index_add_(0, k_, area)
            self.unit_cat.index_add_(0, k_, area[:, None] * annotated[b_].double())
            lit_k.append(k_[p])
            lit_g.append(b_[p] * (H * W) + y * W + x)
        return torch.cat(lit_k), torch.cat(lit_g)

    def _join(self, k, g, concepts, size, max_elems) -> None:
        """``inter[k, c] +=`` the lit pixels of unit ``k`` inside concept ``c``: the rows of a (batch pixel
        x concept) 0/1 table (:func:`_concept_table`) at the lit pixels, summed per unit (``index_add``),
        over the batch's concepts in column chunks of at most ``max_elems`` table cells."""
        hw = size[0] * size[1]
        dev = k.device
        present = [idx for idx, _ in concepts if idx.numel()]
        if not present or k.numel() == 0:
            return
        present = torch.unique(torch.cat(present))
        step = max(1, max_elems // (len(concepts) * hw))
        for c0 in range(0, present.numel(), step):
            cols = present[c0:c0 + step]
            table = _concept_table(concepts, cols, hw, self.C, dev)
            exact = torch.float32 if len(concepts) * hw < 2 ** 24 else torch.float64   # integer sums stay exact
            part = torch.zeros(self.K, cols.numel(), dtype=exact, device=dev)
            self.inter[:, cols] += part.index_add_(0, k, table[g].to(exact)).double()

    def iou(self, union: str = "category") -> torch.Tensor:
        """IoU [K, C]."""
        if union == "category":
            units = self.unit_cat[:, self.cat]
        elif union == "all":
            units = self.unit_all[:, None].expand(self.K, self.C)
        else:
            raise ValueError(f"union must be 'category' or 'all', got {union!r}")
        den = units + self.label[None, :] - self.inter
        return torch.where(den > 0, self.inter / den.clamp_min(1e-12), torch.zeros_like(den))


def assign_labels(iou: torch.Tensor, keep: Optional[torch.Tensor] = None, threshold: float = 0.04
                  ) -> Dict[str, torch.Tensor]:
    """Unit label = argmax over the kept concepts (``keep`` bool [C]); ``interpretable`` = IoU > threshold."""
    x = iou if keep is None else torch.where(keep[None, :], iou, torch.full_like(iou, -1.0))
    best, idx = x.max(dim=1)
    return {"concept": idx, "iou": best.clamp_min(0), "interpretable": best > threshold}


class TopImages:
    """The ``n`` images with the largest maximum activation, per unit."""

    def __init__(self, units: int, n: int = 4, device=None):
        self.n = int(n)
        self.score = torch.full((units, 0), float("-inf"), device=device)
        self.index = torch.zeros((units, 0), dtype=torch.long, device=device)

    def update(self, peak: torch.Tensor, image_ids: torch.Tensor) -> None:
        """``peak`` [B, K] maximum activation per image and unit; ``image_ids`` [B]."""
        s = torch.cat([self.score, peak.t().float()], dim=1)
        i = torch.cat([self.index, image_ids.view(1, -1).expand(peak.shape[1], -1).to(self.index.device)], dim=1)
        top = s.topk(min(self.n, s.shape[1]), dim=1)
        self.score, self.index = top.values, i.gather(1, top.indices)

    def result(self) -> List[List[int]]:
        return self.index.tolist()
