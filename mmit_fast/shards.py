"""THE shard format: the contract between the packer (``mmit_fast.pack``, which writes
it) and the loaders (``mmit_fast.data``, which read it). Neither side imports the other;
both import this module.

A packed dataset is one folder::

    out/
      manifest.json                 # see Manifest below
      train-000000.tar              # WebDataset shards, USTAR/GNU tar
      train-000000.idx              # DALI index of the tar (wds2idx format)
      val-000000.tar ...
      (with --part i/N:  train-p0003-000000.tar, manifest-p0003.json, merged by `mmit pack --merge`)

Each sample is a run of consecutive tar members sharing one key (``[A-Za-z0-9_-]+``, no
dots: WebDataset splits the key at the first dot)::

    <key>.mp4      video: yuv420p, fixed short side, fixed fps, short GOP; codec in the manifest
    <key>.json     metadata, see SAMPLE_META_FIELDS
    <key>.ids      label ids as little-endian int32 (DALI reads it with dtype INT32)
    <key>.flac     mono 22,050 Hz audio (absent when the source had no audio; .wav allowed)
    <key>.gt.npz   optional ground truth (synthetic data): regions and concept masks

Labels: ids index ``manifest.classes``; multi-hot targets are built from ``.ids``.

Integrity. ``<key>.json`` carries ``"digest": {"algo": "crc32", "members": {ext: hex}, "meta":
hex}``: the CRC-32 (``zlib.crc32``, 8 lowercase hex digits) of every other member's bytes, and
of the metadata itself in canonical form (``json.dumps(meta without "digest",
sort_keys=True)``), so a changed byte anywhere in a sample is detected (a flipped byte that
keeps the JSON valid changes its canonical form too). ``manifest.integrity`` says whether the
shards carry digests (``{"digest": "crc32"}``); shards packed before digests existed have none
and still load. CRC-32 (zlib) runs at ~2.5 GB/s on one core: ~0.3 ms for a 3 s clip, ~0.3% of
decoding one clip from it (``benchmarks/bench_digest.py``).
"""
from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from . import storage

FORMAT = "mmit-shards"
VERSION = 1

VIDEO_EXT = "mp4"
META_EXT = "json"
LABEL_EXT = "ids"
AUDIO_EXTS = ("flac", "wav")
GT_EXT = "gt.npz"
LABEL_DTYPE = np.dtype("<i4")

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")
AUDIO_SAMPLE_RATE = 22050

#: fields of ``<key>.json`` (extra fields are allowed)
SAMPLE_META_FIELDS = (
    "key",          # str, the sample key
    "source",       # str, path of the source video relative to the video root (or "synth:...")
    "labels",       # list[str], class names
    "label_ids",    # list[int], indices into manifest.classes (same order as labels)
    "fps",          # float, frame rate of the packed clip
    "frames",       # int, number of frames in the packed clip
    "width",        # int
    "height",       # int
    "duration",     # float seconds
    "has_audio",    # bool
    "audio_samples",  # int, samples in the audio member (0 when has_audio is False)
    "digest",       # {"algo": "crc32", "members": {ext: hex}, "meta": hex}, see Integrity above
)

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")

DIGEST_ALGO = "crc32"
DIGEST_FIELD = "digest"


class ShardFormatError(ValueError):
    """A manifest, shard or sample that does not follow this format."""


class IntegrityError(ShardFormatError):
    """A member whose bytes differ from the digest recorded when it was packed."""


# --------------------------------------------------------------------------- keys
def is_valid_key(key: Any) -> bool:
    """A sample key (``[A-Za-z0-9_-]+``): safe to name a file with."""
    return isinstance(key, str) and bool(_KEY_RE.fullmatch(key))


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ShardFormatError(f"invalid sample key {key!r}: keys are [A-Za-z0-9_-]+ (no dots, no slashes)")
    return key


def key_for(index: int, source: str, prefix: str = "") -> str:
    """A unique, dot-free key from a running index and a source path.

    ``key_for(12, 'juggling/abc.mp4')`` -> ``'000000012_juggling_abc'``.
    """
    stem = os.path.splitext(source)[0]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[-60:]
    return validate_key(f"{prefix}{index:09d}_{slug}" if slug else f"{prefix}{index:09d}")


# --------------------------------------------------------------------------- labels
def encode_label_ids(ids: Iterable[int]) -> bytes:
    arr = np.asarray(list(ids), dtype=np.int64)
    if arr.ndim != 1:
        raise ShardFormatError("label ids must be a flat list of integers")
    if arr.size and arr.min() < 0:
        raise ShardFormatError(f"negative label id in {arr.tolist()}")
    return arr.astype(LABEL_DTYPE).tobytes()


def decode_label_ids(data: bytes) -> np.ndarray:
    if len(data) % LABEL_DTYPE.itemsize:
        raise ShardFormatError(f"label member has {len(data)} bytes, not a multiple of 4 (int32)")
    return np.frombuffer(data, dtype=LABEL_DTYPE).astype(np.int64)


def multi_hot(ids: Sequence[int], num_classes: int, dtype=np.float32) -> np.ndarray:
    out = np.zeros(num_classes, dtype=dtype)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.max() >= num_classes or ids.min() < 0):
        raise ShardFormatError(f"label ids {ids.tolist()} out of range for {num_classes} classes")
    out[ids] = 1
    return out


# --------------------------------------------------------------------------- digests
def member_digest(data: bytes) -> str:
    """CRC-32 of ``data`` as 8 lowercase hex digits."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def canonical_meta(meta: Dict[str, Any]) -> bytes:
    """The bytes the metadata digest covers: ``meta`` without its digest, keys sorted."""
    return json.dumps({k: v for k, v in meta.items() if k != DIGEST_FIELD}, sort_keys=True).encode("utf-8")


def seal_meta(meta: Dict[str, Any], members: Dict[str, bytes]) -> bytes:
    """The bytes of ``<key>.json``: ``meta`` plus the digest of every member in ``members``
    (all but the ``.json``) and of the metadata itself."""
    meta = {k: v for k, v in meta.items() if k != DIGEST_FIELD}
    digest = {"algo": DIGEST_ALGO, "members": {ext: member_digest(b) for ext, b in sorted(members.items())},
              "meta": member_digest(canonical_meta(meta))}
    return json.dumps(dict(meta, **{DIGEST_FIELD: digest}), sort_keys=True).encode("utf-8")


def sample_digests(meta: Dict[str, Any], where: str = "sample") -> Optional[Dict[str, str]]:
    """``{ext: hex}`` recorded in a sample's metadata (None when it has no digest); raises
    :class:`IntegrityError` when the metadata itself was changed since packing."""
    d = meta.get(DIGEST_FIELD)
    if d is None:
        return None
    if not isinstance(d, dict) or d.get("algo") != DIGEST_ALGO or not isinstance(d.get("members"), dict):
        raise IntegrityError(f"{where}: member .{META_EXT} has an unreadable digest record {d!r}")
    got = member_digest(canonical_meta(meta))
    if got != d.get("meta"):
        raise IntegrityError(f"{where}: member .{META_EXT} is damaged: {DIGEST_ALGO} {got} != {d.get('meta')} "
                             "recorded at packing")
    return d["members"]


def check_member(digests: Dict[str, str], ext: str, data: bytes, where: str = "sample") -> None:
    """:class:`IntegrityError` unless ``data`` (member ``.ext``) has its recorded digest."""
    want = digests.get(ext)
    if want is None:
        raise IntegrityError(f"{where}: member .{ext} is not one the sample was packed with "
                             f"(packed: {', '.join('.' + e for e in sorted(digests))})")
    got = member_digest(data)
    if got != want:
        raise IntegrityError(f"{where}: member .{ext} is damaged: {DIGEST_ALGO} {got} != {want} recorded at packing")


# --------------------------------------------------------------------------- names
def shard_name(split: str, index: int, part: Optional[int] = None) -> str:
    """``train-000003.tar`` or, for one part of a multi-machine pack, ``train-p0002-000003.tar``."""
    if split not in SPLITS:
        raise ShardFormatError(f"unknown split {split!r}; expected one of {SPLITS}")
    mid = f"-p{part:04d}" if part is not None else ""
    return f"{split}{mid}-{index:06d}.tar"


def index_name(tar_name: str) -> str:
    """DALI index file next to a tar: ``x.tar`` -> ``x.idx``."""
    if not tar_name.endswith(".tar"):
        raise ShardFormatError(f"not a .tar shard name: {tar_name!r}")
    return tar_name[: -len(".tar")] + ".idx"


def manifest_name(part: Optional[int] = None) -> str:
    return MANIFEST_NAME if part is None else f"manifest-p{part:04d}.json"


# --------------------------------------------------------------------------- manifest
def _inside(rel: Any, what: str, where: str) -> str:
    """``rel`` when it is a relative path that stays inside the dataset folder (no absolute path,
    no drive, no ``..`` component); a :class:`ShardFormatError` naming the manifest otherwise."""
    if not isinstance(rel, str) or not rel.strip():
        raise ShardFormatError(f"{where}: {what} path {rel!r} is not a file name")
    parts = re.split(r"[\\/]+", rel)
    if os.path.isabs(rel) or rel[:1] in "/\\" or re.match(r"^[A-Za-z]:", rel) or ".." in parts or storage.is_url(rel):
        raise ShardFormatError(f"{where}: {what} path {rel!r} is not inside the dataset folder (absolute, or through "
                               "'..'); a manifest names its shards relative to its folder")
    return rel


@dataclass
class ShardInfo:
    path: str                 # relative to the dataset folder
    split: str
    samples: int
    bytes: int = 0
    index: str = ""           # DALI .idx, relative to the dataset folder

    def __post_init__(self):
        if not self.index:
            self.index = index_name(self.path)


@dataclass
class Manifest:
    """``manifest.json``: everything a loader, a loss and a report need to know.

    * ``classes``: vocabulary, index = label id.
    * ``splits[split]``: ``{"samples": n, "without_audio": n, "class_counts": [n_0..n_{C-1}]}``.
      ``class_counts`` of ``train`` feed the loss weights (``class_weights``).
    * ``shards``: every tar with its split and sample count.
    * ``video``: ``{"codec", "container", "short_side", "fps", "seconds", "pix_fmt", "gop"}``.
    * ``audio``: ``{"format", "sample_rate", "channels"}``.
    * ``rejected``: ``[{"source", "reason"}]`` inputs that were not written.
    * ``source``: free-form description of where the data came from (annotations, synth params).
    * ``integrity``: ``{"digest": "crc32"}`` when every sample's ``.json`` carries member
      digests (empty for shards packed before digests existed).
    """

    classes: List[str]
    splits: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    shards: List[ShardInfo] = field(default_factory=list)
    video: Dict[str, Any] = field(default_factory=dict)
    audio: Dict[str, Any] = field(default_factory=dict)
    rejected: List[Dict[str, Any]] = field(default_factory=list)
    source: Dict[str, Any] = field(default_factory=dict)
    integrity: Dict[str, Any] = field(default_factory=dict)
    members: Dict[str, str] = field(
        default_factory=lambda: {"video": VIDEO_EXT, "meta": META_EXT, "labels": LABEL_EXT, "audio": "flac", "gt": GT_EXT}
    )
    format: str = FORMAT
    version: int = VERSION
    root: str = field(default="", repr=False, compare=False)  # folder it was loaded from; not saved

    # -- derived -------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self, split: str = "train") -> np.ndarray:
        """Per-class positive counts of a split (training counts give the loss weights)."""
        if split not in self.splits:
            raise ShardFormatError(f"manifest has no split {split!r} (has {sorted(self.splits)})")
        counts = self.splits[split].get("class_counts")
        if counts is None or len(counts) != self.num_classes:
            raise ShardFormatError(f"manifest split {split!r} has no class_counts of length {self.num_classes}")
        return np.asarray(counts, dtype=np.int64)

    def num_samples(self, split: str) -> int:
        return sum(s.samples for s in self.shards if s.split == split)

    def shard_infos(self, split: str) -> List[ShardInfo]:
        infos = [s for s in self.shards if s.split == split]
        if not infos:
            raise ShardFormatError(
                f"dataset {self.root or '?'} has no shards for split {split!r} "
                f"(splits present: {sorted({s.split for s in self.shards})})"
            )
        return infos

    def shard_paths(self, split: str) -> List[str]:
        """Paths (or URLs, for a dataset read from a URL) of the split's shards."""
        return [storage.join(self.root, s.path) for s in self.shard_infos(split)]

    def index_paths(self, split: str) -> List[str]:
        return [storage.join(self.root, s.index) for s in self.shard_infos(split)]

    # -- (de)serialisation ---------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("root", None)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], root: str = "", where: str = "manifest") -> "Manifest":
        if not isinstance(d, dict):
            raise ShardFormatError(f"{where}: not a JSON object")
        if d.get("format") != FORMAT:
            raise ShardFormatError(f"{where}: format is {d.get('format')!r}, expected {FORMAT!r}")
        if int(d.get("version", -1)) > VERSION:
            raise ShardFormatError(f"{where}: format version {d.get('version')} is newer than this mmit-fast ({VERSION})")
        if not isinstance(d.get("classes"), list) or not d["classes"]:
            raise ShardFormatError(f"{where}: 'classes' must be a non-empty list of class names")
        if not isinstance(d.get("shards", []), list) or not all(isinstance(s, dict) for s in d.get("shards", [])):
            raise ShardFormatError(f"{where}: 'shards' must be a list of objects")
        try:
            shards = [ShardInfo(**s) for s in d.get("shards", [])]
        except TypeError as e:
            raise ShardFormatError(f"{where}: bad shard entry: {e}") from None
        for info in shards:
            _inside(info.path, "shard", where)
            _inside(info.index, "index", where)
        known = {f for f in cls.__dataclass_fields__ if f not in ("shards", "root")}
        kw = {k: v for k, v in d.items() if k in known}
        return cls(shards=shards, root=root, **kw)

    def save(self, path: str) -> None:
        """Write atomically (temp file + rename; on an object store one PUT, see :mod:`.storage`)."""
        storage.write_json(path, self.to_dict())


#: the largest manifest read (a 1M-video dataset with 10% rejected rows is ~25 MB)
MAX_MANIFEST_BYTES = 64 << 20


def load_manifest(path: str) -> Manifest:
    """Load ``manifest.json`` from a dataset folder (or its URL: ``s3://bucket/prefix``,
    ``gs://...``, ``https://...``) or a file path, with errors that name it.

    A manifest is data from whoever made the folder: its size is checked before it is read
    (:data:`MAX_MANIFEST_BYTES`), nesting too deep for the JSON reader is an error naming it,
    and every shard and index path must stay inside the folder (:meth:`Manifest.from_dict`)."""
    path = storage.strip_credentials(os.fspath(path))
    if storage.is_url(path):
        if not path.endswith(".json"):
            path = storage.join(path, MANIFEST_NAME)
    elif os.path.isdir(path):
        path = os.path.join(path, MANIFEST_NAME)
    shown = storage.redact(path)
    try:
        size = storage.size(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no manifest at {shown}: is this a folder written by `mmit pack` / `mmit synth`?") \
            from None
    if size > MAX_MANIFEST_BYTES:
        raise ShardFormatError(f"{shown}: {size} bytes, more than a manifest may hold ({MAX_MANIFEST_BYTES} bytes); "
                               "not a dataset manifest?")
    data = storage.read_bytes(path)
    try:
        d = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardFormatError(f"{shown}: not valid JSON ({e})") from None
    except RecursionError:
        raise ShardFormatError(f"{shown}: JSON nested deeper than a manifest can be (not a dataset manifest?)") from None
    return Manifest.from_dict(d, root=storage.parent(path), where=shown)


def find_manifest(tar_path: str) -> Optional[Manifest]:
    """The manifest of the dataset a shard belongs to (a local path or a URL): ``manifest.json``
    in its folder, else a part manifest (``manifest-pIIII.json``) there that lists it; None when
    there is none that reads (a damaged or hostile manifest is not used)."""
    import glob

    folder, name = storage.parent(tar_path), storage.basename(tar_path)
    if storage.is_url(tar_path):
        try:
            parts = sorted(n for n in storage.listdir(folder) if n.startswith("manifest-p") and n.endswith(".json"))
        except storage.StorageError:   # http(s): no listing, only the manifest beside it
            parts = []
        cands = [storage.join(folder, n) for n in [MANIFEST_NAME] + parts]
    else:
        folder = os.path.dirname(os.path.abspath(tar_path))
        cands = [os.path.join(folder, MANIFEST_NAME)] + sorted(glob.glob(os.path.join(folder, "manifest-p*.json")))
    for c in cands:
        if storage.exists(c):
            try:
                m = load_manifest(c)
            except (ShardFormatError, OSError, ValueError, RecursionError, storage.StorageError):
                continue
            if c.endswith(MANIFEST_NAME) or any(s.path == name for s in m.shards):
                return m
    return None


def parse_sample_meta(data: bytes, where: str = "sample") -> Dict[str, Any]:
    """Decode and check a ``<key>.json`` member."""
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardFormatError(f"{where}: metadata member is not valid JSON ({e})") from None
    missing = [f for f in ("key", "label_ids") if f not in meta]
    if missing:
        raise ShardFormatError(f"{where}: metadata lacks {missing}")
    return meta
