"""The exact per-unit quantile of Network Dissection's thresholds, in memory bounded by the units.

``T_k`` = the top-``q`` quantile of unit ``k``'s activations over all images and positions,
exactly what NetDissect's ``np.percentile(a_k, 100 (1 - q))`` gives (its "linear" method, to the
last bit of the float64 result): with ``n`` values, ``p = 100 (1 - q)``, the virtual index
``v = (n - 1) (p / 100)``, ``i = floor(v)``, ``g = v - i`` and the order statistics
``a_(i) <= a_(i+1)`` (ascending, 0-based; ``i + 1`` clipped to ``n - 1``),

    T_k = a_(i) + g (a_(i+1) - a_(i))            when g < 1/2
        = a_(i+1) - (1 - g) (a_(i+1) - a_(i))    otherwise            (numpy's ``_lerp``)

in float64. The two order statistics are found by **radix selection** on an order-preserving
32-bit key of each float32 value (``key = ~u`` for a negative value with bits ``u``, else
``u | 2^31``: keys order as the values do), most significant bits first:

* pass 1 (:meth:`ExactQuantile.update_maps`, streaming, one look at each value): per unit, 4096
  bins of the key's top 12 bits (sign, exponent and 3 mantissa bits: a log-scale histogram, so
  one extreme value does not squeeze the others into one bin, and a unit that is mostly zero
  after a ReLU keeps its positive values apart from the zeros);
* :meth:`~ExactQuantile.select` finds, for each wanted rank, the bin that holds it and its rank
  inside the bin;
* each refinement pass (:meth:`~ExactQuantile.refine_maps` over all the data again, then
  :meth:`~ExactQuantile.end_pass`) either counts the next 12 (then 8) bits of the values inside
  that bin, or, when the bin holds at most ``cap`` values, collects them and reads the rank after
  sorting. At most two refinement passes (12 + 12 + 8 = 32 bits): a constant unit, or a rank that
  falls among ten thousand equal zeros, is exact after counting every bit.

Memory: ``K x 4096`` int64 counts (32 KiB per unit) for pass 1, and per refinement pass at most
two 4096-bin rows or ``2 cap`` float32 values per unit. The counting is the C++ kernel
``mmit_fast._C.radix_pass_ptr`` (``csrc/quantile.cpp``) for CPU tensors, torch ops elsewhere; both
give the same counts and the same thresholds.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Iterable, Optional

import numpy as np
import torch

__all__ = ["ExactQuantile", "percentile_from_order_stats"]

_BINS = 4096
_LEVELS = (12, 12, 8)   # key bits resolved by pass 1 and by each counting refinement
_IDLE, _COUNT, _COLLECT, _DONE = 0, 1, 2, 3
_ZERO_BIN = 0x800   # level-1 bin of +0.0 (and of positive values below 2^-126 / ...); -0.0 is in 0x7FF


@functools.lru_cache(maxsize=None)
def _cpp():
    try:
        from mmit_fast import _C
    except ImportError:  # pragma: no cover - depends on the build
        return None
    return _C if hasattr(_C, "radix_select_ptr") else None


def _use_cpp(backend: str, device) -> bool:
    if backend not in ("auto", "cpp", "torch"):
        raise ValueError(f"backend must be 'auto', 'cpp' or 'torch', got {backend!r}")
    cpu = torch.device(device).type == "cpu"
    if backend == "cpp" and (_cpp() is None or not cpu):
        raise ValueError("backend='cpp' needs CPU tensors and mmit_fast._C built (python setup.py build_ext --inplace)")
    return backend == "cpp" or (backend == "auto" and cpu and _cpp() is not None)


def order_keys(x: torch.Tensor) -> torch.Tensor:
    """int64 order-preserving keys in [0, 2^32) of float32 values (module docstring)."""
    u = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(u >= 2 ** 31, u ^ 0xFFFFFFFF, u | 2 ** 31)


def key_to_value(key: int) -> float:
    """The float32 value (as a Python float) of an order key."""
    u = (key ^ 2 ** 31) if key >= 2 ** 31 else (~key & 0xFFFFFFFF)
    return float(np.array([u], dtype=np.uint32).view(np.float32)[0])


def percentile_from_order_stats(lo: np.ndarray, hi: np.ndarray, n: int, q: float):
    """``(virtual index's integer part, weight, T)``: numpy's ``percentile(.., 100 (1 - q))`` from the
    order statistics ``lo = a_(i)`` and ``hi = a_(i+1)`` (float64 arrays), the same operations."""
    qq = np.true_divide(np.float64(100.0 * (1.0 - q)), 100)
    v = np.float64(n - 1) * qq
    i = min(max(int(math.floor(v)), 0), n - 1)
    g = np.float64(v - i)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    d = hi - lo
    t = lo + d * g
    if g >= 0.5:
        t = hi - d * (1 - g)
    return i, g, t


class ExactQuantile:
    """Exact per-unit top-``q`` thresholds from a few streaming passes (module docstring).

    ``update_maps`` (pass 1) over all the data; ``select(q)``; then while :attr:`passes_left`:
    ``refine_maps`` over all the data again and ``end_pass``; :meth:`thresholds` is float64 [K].
    :meth:`run` does the refinement loop given a function that re-reads the data."""

    def __init__(self, units: int, device=None, cap: int = 4096):
        self.K, self.cap = int(units), int(cap)
        self.device = torch.device(device or "cpu")
        self.counts = torch.zeros(self.K, _BINS, dtype=torch.int64, device=self.device)
        self.zeros = torch.zeros(self.K, dtype=torch.int64, device=self.device)   # values equal to 0, per unit
        self.n = 0
        self._q: Optional[float] = None

    # ------------------------------------------------------------------ pass 1
    def update(self, x: torch.Tensor, backend: str = "auto", threads: Optional[int] = None) -> None:
        """Add values ``x`` [K, N] (one row per unit)."""
        if x.shape[0] != self.K:
            raise ValueError(f"expected {self.K} units, got {x.shape[0]}")
        self._count(x.detach().float().reshape(1, self.K, -1), backend, threads)

    def update_maps(self, a: torch.Tensor, backend: str = "auto", threads: Optional[int] = None) -> None:
        """Add a batch of maps ``a`` [B, K, ...] (unit ``k``'s values: ``a[:, k]``; no transposed copy)."""
        if a.dim() < 2 or a.shape[1] != self.K:
            raise ValueError(f"expected maps [B, {self.K}, ...], got {tuple(a.shape)}")
        self._count(a.detach().float().reshape(a.shape[0], self.K, -1), backend, threads)

    def _count(self, x3: torch.Tensor, backend: str, threads: Optional[int]) -> None:
        if self._q is not None:
            raise RuntimeError("pass 1 is over (select() was called): start a new ExactQuantile")
        if x3.numel() == 0:
            return
        slots = _Slots(self.K)
        slots.mode[0::2] = _COUNT
        slots.shift[0::2], slots.bits[0::2] = 32, _LEVELS[0]
        slots.row[0::2] = np.arange(self.K)
        bad = self._pass(x3, slots, self.counts, None, backend, threads, zeros=self.zeros)
        if bad:
            raise ValueError(f"{bad} non-finite activation value(s) (NaN or inf): no threshold can be estimated")
        self.n += x3.shape[0] * x3.shape[2]

    # ------------------------------------------------------------------ selection
    def select(self, q: float) -> None:
        """Plan the refinement passes for the top-``q`` quantile (ends pass 1)."""
        if self.n == 0:
            raise ValueError("no values seen")
        if not 0 <= q <= 1:
            raise ValueError(f"q must be in [0, 1], got {q}")
        self._q = float(q)
        i, self._g, _ = percentile_from_order_stats(np.zeros(1), np.zeros(1), self.n, q)
        ranks = (i, min(i + 1, self.n - 1))
        self.value = np.zeros(2 * self.K)                       # the two order statistics per unit, when known
        self.state = np.full(2 * self.K, _COUNT, np.int64)      # how each slot is resolved next
        self.prefix = np.zeros(2 * self.K, np.int64)            # the key bits resolved so far ...
        self.resolved = np.zeros(2 * self.K, np.int64)          # ... and how many
        self.rank = np.tile(np.array(ranks, np.int64), self.K)  # rank inside the current prefix
        self.size = np.full(2 * self.K, self.n, np.int64)       # values inside the current prefix
        counts = self.counts.cpu().contiguous()
        self.counts = torch.zeros(0, _BINS, dtype=torch.int64, device=self.device)   # pass 1's counts: done
        for t in (0, 1):
            self._descend(np.arange(t, 2 * self.K, 2), counts, _LEVELS[0], np.arange(self.K))
        # a rank among the zeros (a ReLU unit that is mostly 0): exact now when the two bins around 0
        # (keys 0x7FF..., 0x800...) hold zeros only
        both = (counts[:, _ZERO_BIN - 1] + counts[:, _ZERO_BIN]).numpy()
        zero = (self.state != _DONE) & np.isin(self.prefix, (_ZERO_BIN - 1, _ZERO_BIN))
        zero &= np.repeat(both == self.zeros.cpu().numpy(), 2)
        self.value[zero], self.state[zero] = 0.0, _DONE
        self._plan()

    def _descend(self, slots: np.ndarray, hist: torch.Tensor, bits: int, rows: np.ndarray) -> None:
        """Slots whose next ``bits`` key bits were counted (``hist`` [R, 4096] CPU int64, slot ``slots[i]``
        in row ``rows[i]``): narrow each to the bin that holds its rank."""
        rank = np.ascontiguousarray(self.rank[slots])
        b, size = np.zeros(len(slots), np.int64), np.zeros(len(slots), np.int64)
        rows = np.ascontiguousarray(rows, np.int64)
        if _cpp() is not None:
            _cpp().radix_select_ptr(hist.data_ptr(), hist.shape[0], 1 << bits, rows.ctypes.data, rank.ctypes.data,
                                    b.ctypes.data, size.ctypes.data, len(slots))
        else:  # pragma: no cover - without the extension
            c = torch.cumsum(hist[torch.from_numpy(rows)][:, : 1 << bits], dim=1)
            bt = torch.searchsorted(c, torch.from_numpy(rank)[:, None], right=True).clamp_max((1 << bits) - 1)
            before = torch.where(bt > 0, c.gather(1, (bt - 1).clamp_min(0)), 0)[:, 0]
            b = bt[:, 0].numpy()
            size = (c.gather(1, bt)[:, 0] - before).numpy()
            rank = rank - before.numpy()
        self.rank[slots] = rank
        self.size[slots] = size
        self.prefix[slots] = (self.prefix[slots] << bits) | b
        self.resolved[slots] += bits
        done = slots[self.resolved[slots] == 32]
        self.value[done] = [key_to_value(int(k)) for k in self.prefix[done]]
        self.state[done] = _DONE

    def _plan(self) -> None:
        """Next pass's slots: collect a small bin, else count its next bits; a slot whose bin equals
        its unit's other slot's bin reads that slot's result (one count, one copy)."""
        live = self.state != _DONE
        self.state[live] = np.where(self.size[live] <= self.cap, _COLLECT, _COUNT)
        self.twin = np.zeros(2 * self.K, bool)
        odd = np.arange(1, 2 * self.K, 2)
        self.twin[odd] = (live[odd] & live[odd - 1] & (self.prefix[odd] == self.prefix[odd - 1])
                          & (self.resolved[odd] == self.resolved[odd - 1]))
        self._slots = _Slots(self.K)
        act = live & ~self.twin
        s = self._slots
        s.mode[act] = np.where(self.state[act] == _COLLECT, 2, 1)
        s.shift[act] = 32 - self.resolved[act]
        s.bits[act] = np.minimum(12, s.shift[act])
        s.prefix[act] = self.prefix[act]
        counting = np.nonzero(s.mode == 1)[0]
        s.row[counting] = np.arange(len(counting))
        collecting = np.nonzero(s.mode == 2)[0]
        s.cap[collecting] = self.size[collecting]
        s.offset[collecting] = np.concatenate([[0], np.cumsum(self.size[collecting])[:-1]]).astype(np.int64)
        self._hist = torch.zeros(len(counting), _BINS, dtype=torch.int64, device=self.device)
        self._buf = torch.zeros(int(self.size[collecting].sum()), dtype=torch.float32, device=self.device)

    @property
    def passes_left(self) -> bool:
        """True while a refinement pass is needed (after :meth:`select`)."""
        if self._q is None:
            raise RuntimeError("call select(q) first")
        return bool((self.state != _DONE).any())

    # ------------------------------------------------------------------ refinement passes
    def refine(self, x: torch.Tensor, backend: str = "auto", threads: Optional[int] = None) -> None:
        """One chunk ``x`` [K, N] of a refinement pass."""
        self._pass(x.detach().float().reshape(1, self.K, -1), self._slots, self._hist, self._buf, backend, threads)

    def refine_maps(self, a: torch.Tensor, backend: str = "auto", threads: Optional[int] = None) -> None:
        """One batch ``a`` [B, K, ...] of a refinement pass (every value of pass 1 exactly once per pass)."""
        if a.dim() < 2 or a.shape[1] != self.K:
            raise ValueError(f"expected maps [B, {self.K}, ...], got {tuple(a.shape)}")
        self._pass(a.detach().float().reshape(a.shape[0], self.K, -1), self._slots, self._hist, self._buf, backend,
                   threads)

    def end_pass(self) -> None:
        """Resolve what the pass counted or collected; plan the next pass if one is needed."""
        s = self._slots
        counting = s.mode == 1
        if (not (s.fill[s.mode == 2] == s.cap[s.mode == 2]).all()
                or not np.array_equal(self._hist.sum(dim=1).cpu().numpy(), self.size[counting])):
            raise RuntimeError("a refinement pass saw other values than pass 1 (the counts differ)")
        src = np.where(self.twin, np.arange(2 * self.K) - 1, np.arange(2 * self.K))   # whose pass a slot reads
        counted = np.nonzero(self.state == _COUNT)[0]
        if len(counted):
            hist = self._hist.cpu().contiguous()
            for nb in np.unique(s.bits[src[counted]]):
                grp = counted[s.bits[src[counted]] == nb]
                self._descend(grp, hist, int(nb), s.row[src[grp]])
        collected = np.nonzero(self.state == _COLLECT)[0]
        if len(collected):
            # every collecting slot's values sorted at once: by (segment, value)
            buf = self._buf.cpu().numpy()
            seg = np.repeat(np.arange(len(s.cap)), np.where(s.mode == 2, s.cap, 0))
            srt = buf[np.lexsort((buf, seg))]
            self.value[collected] = srt[s.offset[src[collected]] + self.rank[collected]]
            self.state[collected] = _DONE
        if self.passes_left:
            self._plan()

    def thresholds(self) -> torch.Tensor:
        """float64 [K]: ``np.percentile(values_k, 100 (1 - q))`` for every unit."""
        if self._q is None or self.passes_left:
            raise RuntimeError("thresholds need select(q) and every refinement pass")
        _, _, t = percentile_from_order_stats(self.value[0::2], self.value[1::2], self.n, self._q)
        return torch.from_numpy(np.asarray(t, np.float64)).to(self.device)

    def run(self, q: float, read: Callable[[], Iterable[torch.Tensor]], backend: str = "auto",
            threads: Optional[int] = None) -> torch.Tensor:
        """``select(q)``, the refinement passes over ``read()`` (a fresh iterator of [B, K, ...] batches
        each time, the same values as pass 1), and the thresholds."""
        self.select(q)
        while self.passes_left:
            for a in read():
                self.refine_maps(a, backend, threads)
            self.end_pass()
        return self.thresholds()

    # ------------------------------------------------------------------ one pass, C++ or torch
    def _pass(self, x3, slots, hist, buf, backend, threads, zeros: Optional[torch.Tensor] = None) -> int:
        """One pass over a batch; pass 1 (``zeros`` given) also checks finiteness and counts zeros."""
        if _use_cpp(backend, x3.device):
            x3 = x3.contiguous()
            buf_ptr = buf.data_ptr() if buf is not None and buf.numel() else 0
            ret = _cpp().radix_pass_ptr(x3.data_ptr(), x3.shape[0], self.K, x3.shape[2], *slots.pointers(),
                                        hist.data_ptr() if hist.numel() else 0, slots.offset.ctypes.data,
                                        slots.fill.ctypes.data, slots.cap.ctypes.data, buf_ptr, zeros is not None,
                                        0 if zeros is None else zeros.data_ptr(),
                                        torch.get_num_threads() if threads is None else int(threads))
            if ret < 0:
                raise RuntimeError("a refinement pass saw other values than pass 1 (a collected bin overflowed)")
            return int(ret)
        return _torch_pass(x3, slots, hist, buf, zeros)


class _Slots:
    """Per-slot arrays of one pass (2 slots per unit), in the C++ kernel's layout."""

    def __init__(self, K: int):
        n = 2 * K
        self.mode, self.shift, self.bits = (np.zeros(n, np.int32) for _ in range(3))
        self.prefix, self.row, self.offset, self.fill, self.cap = (np.zeros(n, np.int64) for _ in range(5))

    def pointers(self):
        return (self.mode.ctypes.data, self.shift.ctypes.data, self.bits.ctypes.data, self.prefix.ctypes.data,
                self.row.ctypes.data)


def _torch_pass(x3: torch.Tensor, slots: _Slots, hist: torch.Tensor, buf: Optional[torch.Tensor],
                zeros: Optional[torch.Tensor]) -> int:
    """:meth:`ExactQuantile._pass` with torch ops (any device); the same counts as the C++ kernel."""
    dev = x3.device
    if zeros is not None:
        bad = int((~torch.isfinite(x3)).sum())
        if bad:
            return bad
        zeros += (x3 == 0).sum(dim=(0, 2))
    keys = order_keys(x3)                                              # [B, K, S]
    for mode in (1, 2):
        j = np.nonzero(slots.mode == mode)[0]
        if not len(j):
            continue
        t = lambda a: torch.from_numpy(a[j]).to(dev)  # noqa: E731
        kk = keys[:, torch.from_numpy(j // 2).to(dev)].transpose(0, 1).reshape(len(j), -1)   # [J, B * S]
        shift = t(slots.shift).long()[:, None]
        match = (kk >> shift) == t(slots.prefix)[:, None]
        if mode == 1:
            bits = t(slots.bits).long()[:, None]
            sub = (kk >> (shift - bits)) & ((1 << bits) - 1)
            idx = (t(slots.row)[:, None] * _BINS + sub)[match]
            hist.view(-1).index_add_(0, idx, torch.ones_like(idx))
        else:
            vals = x3[:, torch.from_numpy(j // 2).to(dev)].transpose(0, 1).reshape(len(j), -1)[match]
            per = match.sum(dim=1).cpu().numpy()
            if (slots.fill[j] + per > slots.cap[j]).any():
                raise RuntimeError("a refinement pass saw other values than pass 1 (a collected bin overflowed)")
            start = np.repeat(slots.offset[j] + slots.fill[j] - np.concatenate([[0], np.cumsum(per)[:-1]]), per)
            pos = torch.from_numpy(start + np.arange(int(per.sum()))).to(dev)
            buf[pos] = vals
            slots.fill[j] += per
    return 0
