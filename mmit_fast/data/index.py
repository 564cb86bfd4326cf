"""Where every sample lives, and which samples each rank reads in each epoch.

* :func:`sample_table` lists the samples of a split from the shards' DALI index files
  (``wds2idx`` format: per sample, ``ext offset size name`` per member), so any member can be
  read with one ``seek`` + ``read`` (random access: a global shuffle needs no shuffle buffer).
  A shard without an index is scanned with ``tarfile``. A missing or corrupt shard raises an
  error that names it.

  An index is trusted only after cheap checks against its tar (:func:`index_problem`): it
  parses; the tar's size fits the end of its last member (end-of-archive blocks plus record
  padding); the 512-byte header before a member's data is a valid tar header naming that
  member with that size, for every member of the first and the last sample and the first
  member of 6 samples evenly spaced between them (at most ~16 reads of 512 bytes a shard).
  A stale index (from an older write of the shard) or a foreign one (another shard's) fails
  them: the tar is scanned instead, with one ``RuntimeWarning`` naming the index and the
  problem (``mmit inspect --fix-index`` rewrites it); no intact sample is dropped.

  Shards at a URL (``s3://``, ``gs://``, ``https://``; :mod:`mmit_fast.storage`): the sizes come
  from one listing (or HEADs), the index files and the header probes are fetched concurrently
  (shards in parallel, a probe per request), and a shard shorter than its index says, a
  missing index or one that fails the checks is an error naming the URL (a scan would read the
  whole shard over the network; ``mmit inspect --fix-index URL`` writes a correct one). Members
  are then read by :mod:`.fetch` (one range request per sample, read ahead, optional cache).
* :func:`epoch_batches` splits one epoch into the batches of one rank. The permutation is
  ``default_rng([seed, epoch]).permutation(N)`` (identity without shuffling); rank ``r`` of
  ``R`` takes positions ``r, r+R, r+2R, ...``, so ranks are disjoint.

  - ``drop_last`` (training default): every rank takes ``N // R`` samples and makes
    ``(N // R) // B`` full batches (at least one).
  - otherwise (evaluation): every sample is read exactly once across ranks; every rank makes
    ``ceil(ceil(N/R) / B)`` batches, filled to ``B`` from the front and shrunk from the back,
    so batch counts are equal on all ranks (no DDP hang) and only the last batches are short.
"""
from __future__ import annotations

import os
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .. import shards as S
from .. import storage


@dataclass
class SampleRef:
    shard: int                               # index into the table's shard list
    key: str
    members: Dict[str, Tuple[int, int]]      # ext -> (offset, size) in the tar


@dataclass
class SampleTable:
    shards: List[str]
    samples: List[SampleRef]
    verify: str = "optional"       # member digests: "require" | "optional" | "off" (see .verify)
    bad_indexes: List[Tuple[str, str]] = field(default_factory=list)   # (index path, problem): scanned instead
    sizes: List[int] = field(default_factory=list)   # bytes of each shard
    remote: bool = False           # shards at a URL: members read by .fetch (see there for the next three)
    readahead: int = 4             # range requests in flight per worker (0: each sample fetched when read)
    cache_dir: Optional[str] = None   # local cache of whole shards (None: no cache)
    cache_bytes: int = 0           # its bound

    def __len__(self):
        return len(self.samples)


def _key_ext(name: str) -> Tuple[str, str]:
    base = os.path.basename(name)
    i = base.find(".")
    if i < 0:
        return base, ""
    return base[:i], base[i + 1:]


Rows = List[Tuple[str, Dict[str, Tuple[int, int]]]]
_BLOCK, _RECORD = 512, 20 * 512   # tar block; records pad the archive's end (GNU tar and tarfile)


def _parse_idx(idx_path: str, tar_path: str, tar_size: Optional[int]) -> Tuple[Rows, List[Tuple[int, int, str]]]:
    """``(rows, members)`` of a DALI index: per sample ``(key, {ext: (offset, size)})``, and
    every member as ``(offset, size, name)``; a ShardFormatError when it does not parse (or a
    member lies outside the ``tar_size``-byte tar; None: not checked here)."""
    try:
        lines = storage.read_bytes(idx_path).decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise S.ShardFormatError("it is not text") from None
    if not lines or not lines[0].startswith("v1."):
        raise S.ShardFormatError(f"not a DALI webdataset index (first line {lines[:1]!r})")
    out, flat = [], []
    for ln, line in enumerate(lines[1:], 2):
        parts = line.split()
        if not parts:
            continue
        members: Dict[str, Tuple[int, int]] = {}
        key = None
        if len(parts) % 4:
            raise S.ShardFormatError(f"line {ln} is not 'ext offset size name' groups")
        for g in range(0, len(parts), 4):
            try:
                ext, off, size, name = parts[g], int(parts[g + 1]), int(parts[g + 2]), parts[g + 3]
            except ValueError:
                raise S.ShardFormatError(f"line {ln} has a non-integer offset or size") from None
            if off < _BLOCK or size < 0 or (tar_size is not None and off + size > tar_size):
                raise S.ShardFormatError(f"member {name} at bytes {off}..{off + size} lies outside the "
                                         f"{tar_size}-byte tar")
            k, _ = _key_ext(name)
            if key is not None and k != key:
                raise S.ShardFormatError(f"line {ln} mixes the keys {key!r} and {k!r}")
            key = key or k
            members[ext] = (off, size)
            flat.append((off, size, name))
        out.append((key, members))
    return out, flat


def _header_problem(buf: bytes, off: int, size: int, name: str) -> Optional[str]:
    """Why ``buf``, the tar header before the data at ``off``, is not member ``name`` of ``size`` bytes."""
    try:
        ti = tarfile.TarInfo.frombuf(buf, "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        return f"no tar header before {name} at byte {off - _BLOCK} ({e})"
    got = ti.name
    same = got == name or (len(name) > 99 and len(got) >= 99 and name.startswith(got))  # GNU long names
    if not same or ti.size != size or not ti.isreg():
        return f"the tar header at byte {off - _BLOCK} is {got!r} of {ti.size} bytes, the index says {name!r} of {size}"
    return None


def index_problem(tar_path: str, tar_size: int, rows: Rows, flat: List[Tuple[int, int, str]],
                  probes: int = 8) -> Optional[str]:
    """Why the parsed index ``rows`` does not describe the tar (None when the checks pass)."""
    if not rows:
        return "it lists no samples"
    end = max(off + -(-size // _BLOCK) * _BLOCK for off, size, _ in flat)
    if not (end + 2 * _BLOCK <= tar_size < end + 2 * _BLOCK + _RECORD):
        return (f"its last member ends at byte {end}, which does not fit the {tar_size}-byte tar "
                "(the tar holds other or more members)")
    picks = sorted(set(np.linspace(0, len(rows) - 1, min(probes, len(rows))).round().astype(int).tolist()))
    checks = []
    for i in picks:
        key, members = rows[i]
        items = list(members.items())
        checks += [(off, size, f"{key}.{ext}" if ext else key)
                   for ext, (off, size) in (items if i in (0, len(rows) - 1) else items[:1])]
    headers = storage.read_ranges(tar_path, [(off - _BLOCK, off) for off, _, _ in checks])   # one request each
    for buf, (off, size, name) in zip(headers, checks):
        why = _header_problem(buf, off, size, name)
        if why:
            return why
    return None


def _scan_tar(tar_path: str) -> List[Tuple[str, Dict[str, Tuple[int, int]]]]:
    out: List[Tuple[str, Dict[str, Tuple[int, int]]]] = []
    try:
        with tarfile.open(tar_path, "r:") as tf:
            for ti in tf:
                if not ti.isfile():
                    continue
                k, ext = _key_ext(ti.name)
                if not out or out[-1][0] != k:
                    out.append((k, {}))
                out[-1][1][ext] = (ti.offset_data, ti.size)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise S.ShardFormatError(f"shard {tar_path} is not a readable tar ({type(e).__name__}: {e})") from None
    return out


def sample_table(manifest: S.Manifest, split: str) -> SampleTable:
    """All samples of ``split``, shard by shard, in manifest order."""
    tars = manifest.shard_paths(split)
    idxs = manifest.index_paths(split)
    infos = manifest.shard_infos(split)
    remote = storage.is_url(manifest.root)
    try:
        sizes = storage.sizes(tars)
    except FileNotFoundError as e:
        missing = next((t for t in tars if storage.redact(t) in str(e)), None) if remote else \
            next((t for t in tars if not os.path.exists(t)), tars[0])
        where = storage.redact(missing or "a shard")
        raise FileNotFoundError(f"shard {where} (split {split!r}, listed in {storage.redact(manifest.root)}/manifest.json) "
                                "does not exist") from None
    for tar, size in zip(tars, sizes):
        if size < 512 or size % 512:
            raise S.ShardFormatError(f"shard {storage.redact(tar)} is corrupt or truncated: {size} bytes is not a whole "
                                     "number of 512-byte tar blocks")
    bad: List[Tuple[str, str]] = []
    if remote:   # every shard's index and probes at once (the requests overlap their latency)
        with ThreadPoolExecutor(8) as ex:
            all_rows = list(ex.map(_remote_rows, tars, idxs, sizes, [i.samples for i in infos]))
    else:
        all_rows = [(_trusted_index(tar, idx, size, info.samples, bad) if os.path.exists(idx) else None) or _scan_tar(tar)
                    for tar, idx, info, size in zip(tars, idxs, infos, sizes)]
    samples = []
    for si, (tar, rows, info) in enumerate(zip(tars, all_rows, infos)):
        if info.samples and len(rows) != info.samples:
            raise S.ShardFormatError(f"shard {storage.redact(tar)} holds {len(rows)} samples but the manifest says "
                                     f"{info.samples}")
        for key, members in rows:
            if S.VIDEO_EXT not in members:
                raise S.ShardFormatError(f"shard {storage.redact(tar)}: sample {key!r} has no .{S.VIDEO_EXT} member "
                                         f"(has {sorted(members)})")
            samples.append(SampleRef(si, key, members))
    if not samples:
        raise S.ShardFormatError(f"split {split!r} of {storage.redact(manifest.root)} has no samples")
    return SampleTable(list(tars), samples, bad_indexes=bad, sizes=list(sizes), remote=remote)


def _remote_rows(tar: str, idx: str, size: int, expect: int) -> Rows:
    """The index rows of a shard at a URL, checked as :func:`_trusted_index` checks a local one;
    any problem is an error naming the URL (no whole-shard scan over the network)."""
    fix = f"write a correct one with `mmit inspect --fix-index {storage.redact(tar)}`"
    try:
        rows, flat = _parse_idx(idx, tar, None)
    except FileNotFoundError:
        raise S.ShardFormatError(f"shard {storage.redact(tar)} has no index {storage.redact(idx)}: reading it would "
                                 f"need a scan of the whole shard over the network; {fix}") from None
    except S.ShardFormatError as e:
        raise S.ShardFormatError(f"index {storage.redact(idx)} is unreadable ({e}); {fix}") from None
    end = max((off + sz for off, sz, _ in flat), default=0)
    if end > size:
        raise S.ShardFormatError(f"shard {storage.redact(tar)} is {size} bytes, shorter than its index says (its last "
                                 f"member ends at byte {end}): an incomplete upload? upload the shard again")
    why = index_problem(tar, size, rows, flat)
    if why is None and expect and len(rows) != expect:
        why = f"it lists {len(rows)} samples, the manifest says {expect}"
    if why:
        raise S.ShardFormatError(f"index {storage.redact(idx)} does not match its shard ({why}); {fix}")
    return rows


def _trusted_index(tar: str, idx: str, size: int, expect: int, bad: List[Tuple[str, str]]) -> Optional[Rows]:
    """The index's rows when it passes :func:`index_problem` (and lists the manifest's sample
    count); else None, after one warning (the caller scans the tar)."""
    try:
        rows, flat = _parse_idx(idx, tar, size)
        why = index_problem(tar, size, rows, flat)
        if why is None and expect and len(rows) != expect:
            why = f"it lists {len(rows)} samples, the manifest says {expect}"
    except (S.ShardFormatError, OSError) as e:
        why = str(e)
    if why is None:
        return rows
    bad.append((idx, why))
    warnings.warn(f"index {idx} does not match its shard ({why}): reading the member list from {tar} "
                  f"instead; rewrite the index with `mmit inspect --fix-index {tar}`", RuntimeWarning, stacklevel=3)
    return None


class MemberReader:
    """Reads members by (offset, size); keeps one open file per shard (per process). Shards at
    a URL are read through :class:`.fetch.RemoteSamples` (``prefetch`` a batch's samples first:
    one range request per sample, read ahead)."""

    def __init__(self, table: SampleTable):
        self.table = table
        self._files: Dict[int, object] = {}
        self._pid = os.getpid()
        self._remote = None

    def _fetcher(self):
        if self._remote is None or os.getpid() != self._pid:
            from .fetch import RemoteSamples

            self._files, self._pid, self._remote = {}, os.getpid(), RemoteSamples(self.table)
        return self._remote

    def prefetch(self, refs, exts) -> Dict[str, int]:
        """Start fetching members ``exts`` of ``refs`` (a no-op for local shards); returns the
        storage counters before, for :meth:`io_since`."""
        mark = storage.stats()
        if self.table.remote:
            self._fetcher().prefetch(refs, exts)
        return mark

    @staticmethod
    def io_since(mark: Dict[str, int]) -> Dict[str, int]:
        """Requests, bytes and retries of this process since ``mark``."""
        now = storage.stats()
        return {k: now[k] - mark.get(k, 0) for k in ("requests", "bytes_read", "retries")}

    def read(self, ref: SampleRef, ext: str) -> Optional[bytes]:
        if ext not in ref.members:
            return None
        if self.table.remote:
            return self._fetcher().read(ref, ext)
        if os.getpid() != self._pid:  # forked into a worker: do not share file offsets
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(ref.shard)
        path = self.table.shards[ref.shard]
        if f is None:
            try:
                f = self._files[ref.shard] = open(path, "rb")
            except OSError as e:
                raise FileNotFoundError(f"cannot open shard {path}: {e}") from None
        off, size = ref.members[ext]
        f.seek(off)
        data = f.read(size)
        if len(data) != size:
            raise S.ShardFormatError(f"shard {path}: member {ref.key}.{ext} is cut short ({len(data)} of {size} bytes)")
        return data

    def close(self):
        for f in self._files.values():
            f.close()
        self._files = {}
        if self._remote is not None and self._pid == os.getpid():
            self._remote.close()
        self._remote = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self):
        return {"table": self.table}

    def __setstate__(self, d):
        self.__init__(d["table"])


# --------------------------------------------------------------------------- epoch plan
def _sizes(n: int, nb: int, b: int) -> List[int]:
    sizes = [b] * nb
    excess = nb * b - n
    i = nb - 1
    while excess > 0 and i >= 0:
        cut = min(excess, sizes[i] - 1 if n >= nb else sizes[i])
        sizes[i] -= cut
        excess -= cut
        i -= 1
    i = nb - 1
    while excess > 0 and i >= 0:  # fewer samples than batches: empty batches at the end
        cut = min(excess, sizes[i])
        sizes[i] -= cut
        excess -= cut
        i -= 1
    return sizes


def num_batches(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    if n < world_size:
        raise ValueError(f"{n} samples cannot be split over {world_size} ranks")
    if drop_last:
        return max(1, (n // world_size) // batch_size)
    return -(-(-(-n // world_size)) // batch_size)


def epoch_batches(n: int, batch_size: int, rank: int, world_size: int, *, epoch: int, seed: int,
                  shuffle: bool, drop_last: bool) -> List[np.ndarray]:
    """Global sample indices of each batch of ``rank`` in ``epoch`` (see module docstring)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    order = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)]).permutation(n) if shuffle else np.arange(n)
    nb = num_batches(n, batch_size, world_size, drop_last)
    if drop_last:
        per = n // world_size
        mine = order[: per * world_size][rank::world_size]
        take = min(per, nb * batch_size)
        sizes = [min(batch_size, take)] * nb if take >= batch_size else [take]
        mine = mine[: sum(sizes)]
    else:
        mine = order[rank::world_size]
        sizes = _sizes(len(mine), nb, batch_size)
    bounds = np.cumsum([0] + sizes)
    return [mine[bounds[i]: bounds[i + 1]] for i in range(nb)]
