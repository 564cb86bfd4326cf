"""Sample bytes from shards at a URL: one range request per sample, read ahead, optionally cached.

Coalescing. A sample's members are consecutive in its tar (``mp4, json, ids, flac|wav,
gt.npz``, each after its 512-byte header), so the members a batch needs of one sample are one
byte range ``[first needed member's offset, last needed member's end)``: one request per
sample (the tar headers between members, 512 B each, ride along; members outside the range,
e.g. ``gt.npz``, are not fetched).

Read-ahead. :meth:`RemoteSamples.prefetch` is called with a batch's samples before any of them
is decoded; it submits one range request per sample to a pool of ``readahead`` threads (per
worker process; ``make_loader(readahead=4)``; 0: each sample's one request is made when it
is first read), and :meth:`~RemoteSamples.read` takes a
sample's bytes when they arrive, so samples ``i+1 .. i+readahead`` travel while sample ``i``
decodes: with ``L`` seconds of latency, ``d`` seconds of decoding per sample and ``k``
requests in flight, a batch of ``B`` waits about ``L + max(0, B*L/k - B*d)`` instead of
``B*L``. At most one batch of samples is held: a new ``prefetch`` drops the previous batch's
leftovers. Requests go through :mod:`mmit_fast.storage` (retries with backoff, one file system
per process, so connections are reused).

Cache (``cache_dir=``, ``cache_bytes=``). Whole shards on local disk, at most ``cache_bytes``
in all, evicted least recently used (a file's mtime is its last use). A sample of a shard not
yet cached is served by its range request while the whole shard is downloaded in the
background (one download at a time per worker; a lock file keeps the workers of a machine from
downloading the same shard twice; a shard larger than the bound is never cached). A read from
the cache is verified by the sample's member digests (and the metadata's own digest); when it
fails, the sample is fetched again from the store, and when those bytes differ the cached
shard is dropped (``cache_rejects``); when the store holds the same damaged bytes, they go to
the loader, which skips the sample by name exactly as it does for a local shard.
"""
from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, Optional, Sequence, Tuple

from .. import shards as S
from .. import storage

_STALE_LOCK_S = 600.0


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


class ShardCache:
    """Whole shards in ``folder``, at most ``max_bytes`` in all, evicted least recently used."""

    def __init__(self, folder: str, max_bytes: int):
        self.folder, self.max_bytes = folder, int(max_bytes)
        os.makedirs(folder, exist_ok=True)
        self.hits = self.fills = self.rejects = 0

    def path(self, url: str) -> str:
        return os.path.join(self.folder, hashlib.sha1(url.encode("utf-8")).hexdigest()[:16] + "-" + storage.basename(url))

    def get(self, url: str, size: int) -> Optional[str]:
        """The cached copy of ``url`` (marked as just used), or None."""
        p = self.path(url)
        try:
            if os.path.getsize(p) != size:
                return None
            os.utime(p)
        except OSError:
            return None
        return p

    def fill(self, url: str, size: int) -> None:
        """Download ``url`` into the cache (unless another process is at it), then evict."""
        if size > self.max_bytes:
            return
        p = self.path(url)
        lock = p + ".lock"
        try:
            if time.time() - os.path.getmtime(lock) > _STALE_LOCK_S:
                os.unlink(lock)   # left by a killed process
        except OSError:
            pass
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        try:
            os.close(fd)
            storage.download(url, p)
            self.fills += 1
            self.evict(keep=p)
        finally:
            os.unlink(lock)

    def evict(self, keep: str = "") -> None:
        """Delete the least recently used shards until the cache fits its bound."""
        files = []
        for name in os.listdir(self.folder):
            p = os.path.join(self.folder, name)
            if name.endswith(".tar"):
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, p))
        total = sum(f[1] for f in files)
        for _, sz, p in sorted(files):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            try:
                os.unlink(p)   # a reader holding it open still reads it (POSIX)
            except FileNotFoundError:
                pass
            total -= sz

    def drop(self, url: str) -> None:
        self.rejects += 1
        try:
            os.unlink(self.path(url))
        except FileNotFoundError:
            pass


def _damaged(ref, start: int, data: bytes) -> bool:
    """True when the members of ``ref`` inside ``data`` (bytes from offset ``start``) do not
    match the digests recorded in its metadata (False when it carries none)."""
    def member(ext):
        off, size = ref.members[ext]
        return data[off - start: off - start + size] if start <= off and off + size <= start + len(data) else None

    meta_b = member(S.META_EXT) if S.META_EXT in ref.members else None
    if meta_b is None:
        return False
    try:
        digests = S.sample_digests(S.parse_sample_meta(meta_b), "cache")
        for ext in (digests or {}):
            b = member(ext) if ext in ref.members else None
            if b is not None:
                S.check_member(digests, ext, b)
    except S.ShardFormatError:
        return True
    return False


class RemoteSamples:
    """Members of the samples of a :class:`~.index.SampleTable` whose shards are URLs."""

    def __init__(self, table):
        self.table = table
        self.pool = ThreadPoolExecutor(max(1, int(table.readahead or 1)), thread_name_prefix="mmit-readahead")
        self.pending: Dict[Tuple[int, str], Tuple[Future, int, int]] = {}
        self.cache = ShardCache(table.cache_dir, table.cache_bytes) if table.cache_dir else None
        self._filler = ThreadPoolExecutor(1, thread_name_prefix="mmit-cache") if self.cache else None
        self._tried = set()   # shards this process asked to cache
        self.exts: Tuple[str, ...] = ()   # the members the current batch reads

    @staticmethod
    def span(ref, exts: Sequence[str]) -> Tuple[int, int]:
        """The one byte range holding members ``exts`` of ``ref`` (all of them when none is there)."""
        got = [ref.members[e] for e in exts if e in ref.members] or list(ref.members.values())
        return min(o for o, _ in got), max(o + s for o, s in got)

    def prefetch(self, refs, exts: Sequence[str]) -> None:
        """Plan a batch: with ``readahead`` > 0 its requests go in flight now; with 0 each
        sample's (one, coalesced) request is made when the sample is first read."""
        self.pending, self.exts = {}, tuple(exts)
        if self.table.readahead:
            for ref in refs:
                start, end = self.span(ref, exts)
                self.pending[(ref.shard, ref.key)] = (self.pool.submit(self._fetch, ref, start, end), start, end)

    def read(self, ref, ext: str) -> bytes:
        off, size = ref.members[ext]
        got = self.pending.get((ref.shard, ref.key))
        if got is None or not (got[1] <= off and off + size <= got[2]):
            start, end = self.span(ref, self.exts + (ext,)) if self.exts else (off, off + size)
            got = self.pending[(ref.shard, ref.key)] = (_done(self._fetch(ref, start, end)), start, end)
        data = got[0].result()
        lo = off - got[1]
        out = data[lo: lo + size]
        if len(out) != size:
            raise S.ShardFormatError(f"shard {storage.redact(self.table.shards[ref.shard])}: member {ref.key}.{ext} is "
                                     f"cut short ({len(out)} of {size} bytes)")
        return out

    def _fetch(self, ref, start: int, end: int) -> bytes:
        url = self.table.shards[ref.shard]
        if self.cache is not None:
            data = self._from_cache(ref, url, start, end)
            if data is not None:
                return data
        return storage.read_range(url, start, end)

    def _from_cache(self, ref, url: str, start: int, end: int) -> Optional[bytes]:
        size = self.table.sizes[ref.shard]
        p = self.cache.get(url, size)
        if p is None:
            if ref.shard not in self._tried:
                self._tried.add(ref.shard)
                self._filler.submit(self.cache.fill, url, size)
            return None
        with open(p, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        if not _damaged(ref, start, data):
            self.cache.hits += 1
            return data
        fresh = storage.read_range(url, start, end)
        if fresh != data:
            self.cache.drop(url)   # the cached copy is damaged; the store's is not (or differently)
            self._tried.discard(ref.shard)
        return fresh

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._filler is not None:
            self._filler.shutdown(wait=False, cancel_futures=True)
