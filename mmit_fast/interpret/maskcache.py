"""Concept masks decoded once: bit-packed, cached on disk, reused across layers, models and runs.

Dissection's IoU pass needs every image's concept masks. Reading a Broden row (PNG label maps
decoded, split into one mask per concept) costs more than the IoU sums themselves, and it is the
same work for every layer, model and run on a concept set. So each row is decoded once (rows on
``threads`` threads: PNG decoding releases the GIL), each mask packed to bits (``H`` rows of
``ceil(W / 64)`` 64-bit words, bit ``x`` of row ``y`` = pixel ``(y, x)``: the layout
:meth:`~.dissect.IoUTally.update_packed` and the C++ kernel read in place; a whole-image label,
e.g. a scene, stores no bits), and written to one cache file per concept set. Later runs read a
batch's packed masks with one plain read (memory flat in the dataset size).

When a cache is used (:class:`MaskCache`):

* its **name** is a digest of what identifies the concept set: format, kept categories, rows
  covered, the bytes of ``index.csv`` and ``label.csv``;
* its **content digest** (in the header) adds the bytes of every mask file those rows name. It is
  recomputed on every run (reading the files, not decoding them) and the cache is used only when
  it is equal: an edited, added or removed mask file makes the run rebuild the cache (status
  ``rebuilt: ...``);
* a **CRC-32 of the body** (in the header) is checked when the file is opened, and the header's
  sizes against the file's length before anything is allocated: a damaged cache file is named in
  a ``RuntimeWarning`` and rebuilt, never read.

A row whose masks cannot be read is recorded with its message and reported (skipped) on every
run, cached or not. ``cache_dir=None``: the same packing, into a temporary file removed on close.

File layout: ``MAGIC``, padding to byte 64, ``bits`` uint64 [n_words], then 64-byte aligned
arrays ``rows`` int64 [n, 6] (status 0 ok / 1 unreadable, first mask, masks, sh, sw, first word),
``concept`` int32 [P] (Broden label numbers), ``word`` int64 [P] (first word of each mask in
``bits``, -1 for a whole-image label), ``area`` int64 [P] (pixels), ``annotated`` uint8
[n, categories]; the JSON header; its offset (uint64) and ``MAGIC`` again.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .broden import Broden, BrodenError

__all__ = ["MaskCache", "PackedMasks", "default_cache_dir", "pack_bits"]

FORMAT = 1
MAGIC = b"MMITMSK1"
_BITS_AT = 64
_ARRAYS = (("rows", np.int64, 6), ("concept", np.int32, 0), ("word", np.int64, 0), ("area", np.int64, 0),
           ("annotated", np.uint8, -1))
_BLOCK = 64          # rows decoded per block of the build (bounded memory)
_CHUNK = 8 << 20     # bytes per read when checking the CRC


def default_cache_dir() -> str:
    """``$MMIT_CACHE_DIR/masks``, else ``$XDG_CACHE_HOME/mmit-fast/masks``, else ``~/.cache/mmit-fast/masks``."""
    if os.environ.get("MMIT_CACHE_DIR"):
        return os.path.join(os.environ["MMIT_CACHE_DIR"], "masks")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mmit-fast", "masks")


@dataclass
class PackedMasks:
    """The packed masks of one batch of rows, in :meth:`~.dissect.IoUTally.update_packed`'s layout."""
    rows: List[int]              # the batch's rows whose masks could be read, in order
    bad: List[Tuple[int, str]]   # (row, message) of the others
    bits: torch.Tensor           # int64 [n_words]
    word: torch.Tensor           # int64 [P], -1 = whole image
    offsets: torch.Tensor        # int64 [len(rows) + 1]
    concept: torch.Tensor        # int64 [P]: columns (``index``)
    area: torch.Tensor           # float64 [P]
    annotated: torch.Tensor      # bool [len(rows), n_categories]


@dataclass
class _Row:
    error: Optional[str] = None
    nums: Tuple[int, ...] = ()
    words: Optional[np.ndarray] = None       # uint64 [n_packed, H, WW]
    whole: Tuple[bool, ...] = ()
    areas: Tuple[int, ...] = ()
    annotated: Tuple[bool, ...] = ()
    sh: int = 0
    sw: int = 0


def pack_bits(masks: np.ndarray) -> np.ndarray:
    """bool [P, H, W] -> uint64 [P, H, ceil(W / 64)]: bit ``x % 64`` of word ``x // 64`` of row ``y`` is
    pixel ``(y, x)`` (little-endian words of ``packbits(..., bitorder="little")``)."""
    P, H, W = masks.shape
    WW = (W + 63) // 64
    padded = np.zeros((P, H, WW * 64), bool)
    padded[:, :, :W] = masks
    return np.packbits(padded, axis=2, bitorder="little").view("<u8")


def pack_row(broden: Broden, i: int) -> _Row:
    """Row ``i``'s masks, bit-packed (or its read error)."""
    r = broden.rows[i]
    try:
        masks, ann = broden.masks(i)
    except BrodenError as e:
        return _Row(error=str(e), sh=r.sh, sw=r.sw)
    H, W = r.sh, r.sw
    nums = sorted(masks)
    areas = [int(np.count_nonzero(masks[n])) for n in nums]
    whole = [a == H * W for a in areas]
    packed = [masks[n] for n, wh in zip(nums, whole) if not wh]
    words = pack_bits(np.stack(packed) if packed else np.zeros((0, H, W), bool))
    return _Row(None, tuple(nums), words, tuple(whole), tuple(areas),
                tuple(c in ann for c in broden.categories), H, W)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return f"unreadable: {type(e).__name__}".encode()


def concept_set_digests(broden: Broden, rows: int) -> Tuple[str, str]:
    """``(name, content digest)`` of the first ``rows`` rows (module docstring)."""
    h = hashlib.sha256(f"mmit-masks/{FORMAT}/{rows}/{','.join(broden.categories)}\n".encode())
    for name in ("index.csv", "label.csv"):
        h.update(_read(os.path.join(broden.root, name)))
        h.update(b"\0")
    key = h.hexdigest()[:40]
    files = list(dict.fromkeys(t for r in broden.rows[:rows] for cat in broden.categories for t in r.cells.get(cat, [])
                               if t.lower().endswith(".png")))
    for t in files:   # one thread: small files, and a thread pool's hand-offs cost more than the hashing
        h.update(t.encode() + b"\0" + hashlib.sha256(_read(os.path.join(broden.root, "images", t))).digest())
    return key, h.hexdigest()


class MaskCache:
    """Packed concept masks of the first ``rows`` rows of ``broden`` (module docstring).

    ``index``: {Broden label number: tally column}; masks of other numbers are left out.
    :attr:`status` says what :meth:`open` found: ``hit``, ``built`` (no cache yet), ``rebuilt: <why>``
    or ``off`` (no cache folder: packed into a temporary file)."""

    def __init__(self, broden: Broden, index: Dict[int, int], rows: Optional[int] = None,
                 cache_dir: Optional[str] = None, threads: Optional[int] = None):
        self.broden = broden
        self.n = len(broden) if rows is None else min(int(rows), len(broden))
        self.cache_dir = cache_dir
        self.threads = max(1, int(threads or torch.get_num_threads()))
        top = max(max(index, default=0), max(broden.all_concepts, default=0)) + 1
        self.lookup = np.full(top, -1, np.int64)
        self.lookup[list(index)] = list(index.values())
        self.status = "off"
        self._f = None
        self._tmp: Optional[tempfile.TemporaryDirectory] = None

    # ------------------------------------------------------------------ open: verify or build
    def open(self) -> "MaskCache":
        key, digest = concept_set_digests(self.broden, self.n)
        if self.cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mmit-masks-")
            self.path = os.path.join(self._tmp.name, key + ".masks")
        else:
            os.makedirs(self.cache_dir, exist_ok=True)
            self.path = os.path.join(self.cache_dir, key + ".masks")
            if os.path.exists(self.path):
                why = self._load(digest)
                if why is None:
                    self.status = "hit"
                    return self
                warnings.warn(f"{self.path}: mask cache {why}; rebuilding it", RuntimeWarning, stacklevel=2)
                self.status = f"rebuilt: {why}"
            else:
                self.status = "built"
        self._build(digest)
        why = self._load(digest)
        if why is not None:   # pragma: no cover - a file we just wrote
            raise RuntimeError(f"{self.path}: the mask cache just written does not read back ({why})")
        return self

    def _build(self, digest: str) -> None:
        """Decode rows on threads, block by block, and write the file atomically (temp + rename)."""
        fd, tmp = tempfile.mkstemp(prefix=".masks-", dir=os.path.dirname(self.path))
        meta = {name: [] for name, _, _ in _ARRAYS}
        meta["errors"] = []
        n_words = 0
        try:
            with os.fdopen(fd, "w+b") as f, ThreadPoolExecutor(self.threads) as ex:
                f.write(MAGIC.ljust(_BITS_AT, b"\0"))
                for b0 in range(0, self.n, _BLOCK):
                    for row in ex.map(lambda i: pack_row(self.broden, i), range(b0, min(self.n, b0 + _BLOCK))):
                        n_words = self._append(f, row, meta, n_words)
                header = {"format": FORMAT, "digest": digest, "rows": self.n, "n_words": n_words,
                          "categories": list(self.broden.categories),
                          "errors": {str(i): e for i, e in enumerate(meta.pop("errors")) if e is not None}}
                header["arrays"] = _write_arrays(f, meta, len(self.broden.categories))
                body = f.tell()
                header["crc32"] = _crc(f, body)
                f.seek(body)
                f.write(json.dumps(header).encode())
                f.write(struct.pack("<Q", body) + MAGIC)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _append(self, f, row: _Row, meta, n_words: int) -> int:
        """One row's metadata into ``meta``, its words into ``f``; returns the words written so far."""
        first = len(meta["concept"])
        meta["errors"].append(row.error)
        meta["rows"].append((1 if row.error else 0, first, len(row.nums), row.sh, row.sw, n_words))
        meta["annotated"].append(row.annotated if not row.error else (False,) * len(self.broden.categories))
        if row.error:
            return n_words
        per = row.words.shape[1] * row.words.shape[2] if row.words.size else 0
        k = 0
        for num, wh, a in zip(row.nums, row.whole, row.areas):
            meta["concept"].append(num)
            meta["area"].append(a)
            meta["word"].append(-1 if wh else n_words + k * per)
            k += 0 if wh else 1
        f.write(np.ascontiguousarray(row.words).tobytes())
        return n_words + row.words.size

    def _load(self, digest: str) -> Optional[str]:
        """Open the cache file and check it; None when usable, else why not."""
        try:
            f = open(self.path, "rb")
        except OSError as e:
            return f"cannot be opened ({type(e).__name__})"
        try:
            header, arrays = _read_file(f, len(self.broden.categories))
        except (ValueError, OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            f.close()
            return f"is damaged ({e})"
        if header["digest"] != digest or header["rows"] != self.n or header["categories"] != list(self.broden.categories):
            f.close()
            return "is out of date (the concept set's files changed)"
        self._f, self.header = f, header
        self.rows, self.concept, self.word, self.area, self.annotated = (arrays[n] for n, _, _ in _ARRAYS)
        self.errors = {int(k): v for k, v in header["errors"].items()}
        return None

    # ------------------------------------------------------------------ reading batches
    def batch(self, ids: Sequence[int]) -> PackedMasks:
        """The packed masks of rows ``ids`` (one plain read of the words from the first to the last)."""
        if self._f is None:
            raise RuntimeError("call open() first")
        ids = [int(i) for i in ids]
        if any(i < 0 or i >= self.n for i in ids):
            raise IndexError(f"rows {min(ids)}..{max(ids)} outside the {self.n} cached rows")
        good = [i for i in ids if self.rows[i, 0] == 0]
        bad = [(i, self.errors.get(i, "masks cannot be read")) for i in ids if self.rows[i, 0] != 0]
        n_cat = len(self.broden.categories)
        if not good:
            z = torch.zeros(0, dtype=torch.int64)
            return PackedMasks([], bad, z, z, torch.zeros(1, dtype=torch.int64), z, z.double(),
                               torch.zeros(0, n_cat, dtype=torch.bool))
        w0 = int(self.rows[good[0], 5])
        last = good[-1]
        w1 = int(self.rows[last + 1, 5]) if last + 1 < self.n else int(self.header["n_words"])
        bits = np.empty(max(0, w1 - w0), np.int64)
        self._f.seek(_BITS_AT + 8 * w0)
        if self._f.readinto(memoryview(bits).cast("B")) != bits.nbytes:
            raise RuntimeError(f"{self.path}: the mask cache is shorter than its header says")
        sel, counts = [], []
        for i in good:
            m = np.arange(self.rows[i, 1], self.rows[i, 1] + self.rows[i, 2])
            m = m[self.lookup[self.concept[m]] >= 0]
            sel.append(m)
            counts.append(len(m))
        sel = np.concatenate(sel)
        word = np.where(self.word[sel] >= 0, self.word[sel] - w0, -1)
        return PackedMasks(good, bad, torch.from_numpy(bits), torch.from_numpy(word.astype(np.int64)),
                           torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)),
                           torch.from_numpy(self.lookup[self.concept[sel]]),
                           torch.from_numpy(self.area[sel].astype(np.float64)),
                           torch.from_numpy(self.annotated[good].astype(bool)))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------- file format
def _write_arrays(f, meta, n_cat: int) -> Dict[str, List]:
    out = {}
    for name, dtype, width in _ARRAYS:
        a = np.asarray(meta[name], dtype=dtype)
        a = a.reshape(-1, width if width > 0 else n_cat) if width else a.reshape(-1)
        pos = -(-f.tell() // 64) * 64
        f.seek(pos)
        f.write(a.tobytes())
        out[name] = [pos, list(a.shape)]
    return out


def _crc(f, end: int) -> int:
    f.seek(0)
    crc, left = 0, end
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise ValueError("file shorter than its body")
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    return crc


def _read_file(f, n_cat: int):
    """Header and metadata arrays of a cache file, every size checked against the file first."""
    size = os.fstat(f.fileno()).st_size
    if size < _BITS_AT + 16:
        raise ValueError(f"{size} bytes: too short")
    f.seek(0)
    if f.read(8) != MAGIC:
        raise ValueError("not a mask cache (magic)")
    f.seek(size - 16)
    body, magic = struct.unpack("<Q", f.read(8))[0], f.read(8)
    if magic != MAGIC or not _BITS_AT <= body <= size - 16 or size - 16 - body > (64 << 20):
        raise ValueError("bad trailer")
    f.seek(body)
    header = json.loads(f.read(size - 16 - body))
    if header.get("format") != FORMAT:
        raise ValueError(f"format {header.get('format')!r}, expected {FORMAT}")
    n, n_words = int(header["rows"]), int(header["n_words"])
    if n < 0 or n_words < 0 or _BITS_AT + 8 * n_words > body:
        raise ValueError("bits region larger than the file")
    arrays = {}
    for name, dtype, width in _ARRAYS:
        pos, shape = header["arrays"][name]
        want_w = width if width > 0 else n_cat
        if (len(shape) != (2 if width else 1) or (width and (shape[0] != n or shape[1] != want_w))
                or any(int(x) < 0 for x in shape)):
            raise ValueError(f"array {name} has shape {shape}")
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not _BITS_AT + 8 * n_words <= int(pos) or int(pos) + nbytes > body:
            raise ValueError(f"array {name} lies outside the file")
        f.seek(int(pos))
        arrays[name] = np.frombuffer(f.read(nbytes), dtype=dtype).reshape(shape)
    if _crc(f, body) != header["crc32"]:
        raise ValueError("CRC-32 mismatch")
    P = arrays["concept"].shape[0]
    rows = arrays["rows"]
    if (arrays["word"].shape[0] != P or arrays["area"].shape[0] != P or (n and (rows[:, 1].min() < 0
            or (rows[:, 1] + rows[:, 2]).max() > P or rows[:, 5].min() < 0 or rows[:, 5].max() > n_words))
            or (P and arrays["word"].max() >= n_words)):
        raise ValueError("inconsistent row table")
    return header, arrays
