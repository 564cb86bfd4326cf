"""Writing shards: tars (GNU format), their DALI index files, and the manifest statistics.

A shard is written under a hidden temporary name in the dataset folder and renamed to its
final name only once it is complete and fsynced; its ``.idx`` is written (atomically) just
before that rename. So a final ``*.tar`` is always whole, and ``--resume`` trusts exactly the
final tars. For a dataset at a URL (``s3://``, ``gs://``) the shard is staged in a local
temporary file (``TMPDIR``), and publishing is the upload of its ``.idx`` and then of the tar
to their final names (an object PUT is atomic: :func:`mmit_fast.storage.publish`). Member order within a sample is fixed (``mp4, json, ids, flac|wav, gt.npz``) and
every header is deterministic (mtime 0, uid/gid 0, mode 0444), so the same input packs to
byte-identical shards.

DALI index format (as ``wds2idx`` writes it, version ``v1.2``)::

    v1.2 <number of samples>
    <ext> <data offset> <size> <member name> [<ext> <offset> <size> <name> ...]   # one line per sample

where ``ext`` is the member name after the first dot of its base name (``gt.npz`` for
``k.gt.npz``) and ``offset`` is the byte offset of the member's data (its 512-byte header
precedes it).
"""
from __future__ import annotations

import errno
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .. import shards as S
from .. import storage

IDX_VERSION = "v1.2"
BLOCK = 512
MEMBER_ORDER = (S.VIDEO_EXT, S.META_EXT, S.LABEL_EXT, "flac", "wav", S.GT_EXT)


def split_member_name(name: str) -> Tuple[str, str]:
    """``dir/key.gt.npz`` -> (``dir/key``, ``gt.npz``): split at the first dot of the base name."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o444
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def _readable(path: str) -> None:
    """Atomic writes create 0600 files; datasets are shared: make them 0644 (as umask allows)."""
    if storage.is_url(path):
        return   # an object store has no modes
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.chmod(path, 0o644 & ~mask)
    except OSError:
        pass


# --------------------------------------------------------------------------- index files
def format_index(entries: Sequence[Sequence[Tuple[str, int, int, str]]]) -> str:
    """The text of a DALI index from per-sample lists of ``(ext, offset, size, name)``."""
    lines = [f"{IDX_VERSION} {len(entries)}"]
    for sample in entries:
        lines.append(" ".join(f"{ext} {off} {size} {name}" for ext, off, size, name in sample))
    return "\n".join(lines) + "\n"


def index_entries_of_tar(tar_path: str) -> List[List[Tuple[str, int, int, str]]]:
    """Scan a tar with :mod:`tarfile` and group its regular members into samples (consecutive
    members with the same key), exactly as ``wds2idx`` does."""
    out: List[List[Tuple[str, int, int, str]]] = []
    last = None
    with tarfile.open(tar_path, "r:") as tf:
        for m in tf:
            if not m.isreg():
                continue
            base, ext = split_member_name(m.name)
            if not base or base.endswith("/"):
                continue
            entry = (ext, m.offset_data, m.size, m.name)
            if base != last:
                out.append([entry])
                last = base
            else:
                out[-1].append(entry)
    return out


def write_index(tar_path: str, idx_path: Optional[str] = None, entries=None) -> str:
    """(Re)build the DALI ``.idx`` of a finished tar (atomically); returns its path. A shard
    at a URL is read whole (into a temporary file) unless ``entries`` are given."""
    idx_path = idx_path or S.index_name(tar_path)
    if entries is None:
        with local_copy(tar_path) as local:
            entries = index_entries_of_tar(local)
    if not entries:
        raise S.ShardFormatError(f"{storage.redact(tar_path)}: no samples, cannot index an empty shard")
    storage.write_text(idx_path, format_index(entries))
    _readable(idx_path)
    return idx_path


class local_copy:
    """``with local_copy(path) as p``: ``path`` itself when local, else a temporary copy of
    the URL's bytes (removed on exit)."""

    def __init__(self, path: str):
        self.path, self.tmp = path, None

    def __enter__(self) -> str:
        if not storage.is_url(self.path):
            return self.path
        fd, self.tmp = tempfile.mkstemp(prefix=".mmit-", suffix="-" + storage.basename(self.path))
        os.close(fd)
        storage.download(self.path, self.tmp)
        return self.tmp

    def __exit__(self, *exc):
        if self.tmp and os.path.exists(self.tmp):
            os.unlink(self.tmp)


def read_index(idx_path: str) -> List[List[Tuple[str, int, int, str]]]:
    where = storage.redact(idx_path)
    lines = storage.read_text(idx_path).splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != IDX_VERSION:
        raise S.ShardFormatError(f"{where}: not a {IDX_VERSION} DALI index (first line {' '.join(head)!r})")
    out = []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) % 4:
            raise S.ShardFormatError(f"{where}: malformed line {line.strip()!r}")
        out.append([(parts[i], int(parts[i + 1]), int(parts[i + 2]), parts[i + 3]) for i in range(0, len(parts), 4)])
    if len(out) != int(head[1]):
        raise S.ShardFormatError(f"{where}: header says {head[1]} samples, has {len(out)} lines")
    return out


# --------------------------------------------------------------------------- samples
@dataclass
class Sample:
    """One packed sample: its key, members (ext -> bytes) and metadata (the ``.json``)."""

    key: str
    members: Dict[str, bytes]
    meta: Dict

    def ordered(self) -> List[Tuple[str, bytes]]:
        S.validate_key(self.key)
        for m in (S.VIDEO_EXT, S.META_EXT, S.LABEL_EXT):
            if m not in self.members:
                raise S.ShardFormatError(f"sample {self.key}: missing member .{m}")
        known = [e for e in MEMBER_ORDER if e in self.members]
        extra = sorted(e for e in self.members if e not in MEMBER_ORDER)
        return [(e, self.members[e]) for e in known + extra]

    @property
    def nbytes(self) -> int:
        return sum(len(v) for v in self.members.values())


def make_sample(key: str, meta: Dict, video: bytes, label_ids: Sequence[int], audio: Optional[bytes] = None,
                audio_ext: str = "flac", extra: Optional[Dict[str, bytes]] = None) -> Sample:
    """A sample whose ``.json`` records the digest of every member (see :mod:`mmit_fast.shards`)."""
    meta = {k: v for k, v in meta.items() if k != S.DIGEST_FIELD}
    meta["key"] = key
    members = {S.VIDEO_EXT: video, S.LABEL_EXT: S.encode_label_ids(label_ids)}
    if audio is not None:
        members[audio_ext] = audio
    for k, v in (extra or {}).items():
        members[k] = v
    if S.META_EXT in members:
        raise S.ShardFormatError(f"sample {key}: .{S.META_EXT} is written from its metadata, not given as a member")
    members[S.META_EXT] = S.seal_meta(meta, members)
    return Sample(key=key, members=members, meta=meta)


# --------------------------------------------------------------------------- shard writer
_WRITE_CAUSES = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EFBIG: "file too large (a file-size limit such as `ulimit -f`, or the filesystem's largest file)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error on the device",
}


class ShardWriteError(RuntimeError):
    """Writing a shard failed (disk full, file-size limit, ...): the message is one line that
    names the shard and the cause. Finished shards are intact; ``--resume`` continues."""

    def __init__(self, path: str, err: OSError, what: str = "shard"):
        cause = _WRITE_CAUSES.get(err.errno) or (err.strerror or str(err))
        code = errno.errorcode.get(err.errno, "") if err.errno else ""
        super().__init__(f"cannot write {what} {storage.redact(path)}: {cause}{f' [{code}]' if code else ''}; "
                         "the shards finished before it are kept: fix this, then run again with --resume")
        self.path = path
        self.errno = err.errno


class ShardWriter:
    """Append samples to ``{split}[-pPPPP]-NNNNNN.tar`` shards, rolling over at
    ``shard_samples`` samples or ``shard_bytes`` bytes (a sample never straddles shards);
    each finished shard is fsynced, indexed and atomically renamed into place."""

    def __init__(self, out_dir: str, split: str, part: Optional[int] = None, start_index: int = 0,
                 shard_samples: int = 1000, shard_bytes: int = 1 << 30,
                 on_shard: Optional[Callable[[S.ShardInfo, List[Dict]], None]] = None):
        if shard_samples < 1:
            raise ValueError("shard_samples must be >= 1")
        self.out_dir = out_dir
        self.split = split
        self.part = part
        self.next_index = start_index
        self.shard_samples = shard_samples
        self.shard_bytes = shard_bytes
        self.on_shard = on_shard
        self.shards: List[S.ShardInfo] = []
        self._tf: Optional[tarfile.TarFile] = None
        self._fh = None
        self._tmp = None
        self._name = None
        self._entries: List[List[Tuple[str, int, int, str]]] = []
        self._metas: List[Dict] = []
        self._keys = set()
        storage.makedirs(out_dir)

    # -- internals -------------------------------------------------------------
    def _open(self):
        self._name = S.shard_name(self.split, self.next_index, self.part)
        self.next_index += 1
        if storage.is_url(self.out_dir):   # staged locally, uploaded when finished
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self._name}.", suffix=".partial")
            os.close(fd)
        else:
            self._tmp = os.path.join(self.out_dir, f".{self._name}.partial")
        self._fh = open(self._tmp, "wb")
        self._tf = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.GNU_FORMAT)
        self._entries, self._metas = [], []

    def _finish(self):
        if self._tf is None:
            return
        self._tf.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        final = storage.join(self.out_dir, self._name)
        idx = S.index_name(final)
        nbytes = os.path.getsize(self._tmp)
        storage.write_text(idx, format_index(self._entries))
        _readable(idx)
        storage.publish(self._tmp, final)   # local: rename; object store: upload (after its .idx)
        info = S.ShardInfo(path=self._name, split=self.split, samples=len(self._entries),
                           bytes=nbytes, index=storage.basename(idx))
        self.shards.append(info)
        if self.on_shard:
            self.on_shard(info, self._metas)
        self._tf = self._fh = self._tmp = self._name = None

    # -- API -------------------------------------------------------------------
    def _where(self) -> str:
        return storage.join(self.out_dir, self._name or S.shard_name(self.split, self.next_index, self.part))

    def write(self, sample: Sample) -> None:
        """Append ``sample`` (a :class:`ShardWriteError` when the disk refuses)."""
        members = sample.ordered()
        if sample.key in self._keys:
            raise S.ShardFormatError(f"duplicate sample key {sample.key!r}")
        try:
            self._write(sample, members)
        except OSError as e:
            raise ShardWriteError(self._where(), e) from e

    def _write(self, sample: Sample, members) -> None:
        if self._tf is not None and (
            len(self._entries) >= self.shard_samples or
            (self._entries and self._tf.offset + sample.nbytes + BLOCK * (len(members) + 2) > self.shard_bytes)
        ):
            self._finish()
        if self._tf is None:
            self._open()
        entry = []
        for ext, data in members:
            name = f"{sample.key}.{ext}"
            self._tf.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
            padded = -(-len(data) // BLOCK) * BLOCK
            entry.append((ext, self._tf.offset - padded, len(data), name))
        self._entries.append(entry)
        self._metas.append(sample.meta)
        self._keys.add(sample.key)

    def close(self) -> List[S.ShardInfo]:
        try:
            self._finish()
        except OSError as e:
            raise ShardWriteError(self._where(), e) from e
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress (its samples are lost; used on errors)."""
        if self._tf is not None:
            try:
                self._fh.close()
            except OSError:
                pass  # the write that failed already said why; the partial file goes anyway
            finally:
                if self._tmp and os.path.exists(self._tmp):
                    os.unlink(self._tmp)
        self._tf = self._fh = self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- reading back
def iter_tar_samples(tar_path: str, members: Optional[Sequence[str]] = None) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` for each sample of a tar (consecutive members with one key).
    A shard at a URL is read through its ``.idx``: one range request per sample (32 at a time),
    holding only the members asked for (the whole shard when it has no index)."""
    if storage.is_url(tar_path):
        yield from _iter_remote_samples(tar_path, members)
        return
    cur, buf = None, {}
    with tarfile.open(tar_path, "r:") as tf:
        for m in tf:
            if not m.isreg():
                continue
            key, ext = split_member_name(m.name)
            if cur is not None and key != cur:
                yield cur, buf
                buf = {}
            cur = key
            if members is None or ext in members:
                buf[ext] = tf.extractfile(m).read()
    if cur is not None:
        yield cur, buf


def _iter_remote_samples(url: str, members: Optional[Sequence[str]]) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    try:
        entries = read_index(S.index_name(url))
    except FileNotFoundError:   # no index: the whole shard, once
        with local_copy(url) as local:
            yield from iter_tar_samples(local, members)
        return
    for lo in range(0, len(entries), 32):
        chunk = entries[lo: lo + 32]
        want = [[e for e in sample if members is None or e[0] in members] or sample[:1] for sample in chunk]
        spans = [(min(e[1] for e in w), max(e[1] + e[2] for e in w)) for w in want]
        for sample, w, (a, _), data in zip(chunk, want, spans, storage.read_ranges(url, spans)):
            key = split_member_name(sample[0][3])[0]
            yield key, {ext: data[off - a: off - a + size] for ext, off, size, _ in w
                        if members is None or ext in members}


def split_stats(metas: Sequence[Dict], num_classes: int) -> Dict:
    """``{"samples", "without_audio", "class_counts"}`` of a list of sample metadata."""
    counts = np.zeros(num_classes, dtype=np.int64)
    no_audio = 0
    for m in metas:
        for i in set(m["label_ids"]):
            counts[int(i)] += 1
        if not m.get("has_audio"):
            no_audio += 1
    return {"samples": len(metas), "without_audio": no_audio, "class_counts": counts.tolist()}
