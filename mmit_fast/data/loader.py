"""``make_loader``: one loader contract, three backends.

============  =========================================================  ==================
backend       decode                                                     chosen by ``auto``
============  =========================================================  ==================
dali (cuda)   ``fn.decoders.video(device="mixed")`` + GPU resize/crop    CUDA available
dali (cpu)    DALI CPU decoder (VP9/VP8/MJPEG only) + CPU ops            MMIT_CPU_BACKEND=dali, VP9/VP8/MJPEG
pyav          PyAV in DataLoader workers, minimal decode, uint8 resize   CPU device (faster here), or no DALI
============  =========================================================  ==================

Every backend yields :class:`Batch` with the same layout and, for the same (seed, epoch,
sample), the same frames, crops, flips and labels (see :mod:`.sampling`). Sample reading,
sharding and bad-sample handling are shared (:mod:`.index`, :class:`.pyav.BatchSource`).

``Batch``: ``video`` [B*V,3,T,c,c] float32 (ImageNet-normalised; views of a sample are
contiguous), ``audio`` [B*V,1,N] float32 or None (zeros where a sample has no audio),
``has_audio`` [B] bool, ``targets`` [B,C] float32 multi-hot, ``keys`` list of B str.
A batch can be shorter than ``batch_size`` when bad samples were dropped (and, in
evaluation, at the end of an epoch); ``len(loader)`` is the same on every rank.
"""
from __future__ import annotations

import os
import warnings
from typing import List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from .. import shards as S
from .. import storage
from . import dali as _dali
from .index import epoch_batches, num_batches, sample_table
from .pyav import BadSample, BatchSource, decode_clip, normalise
from .sampling import ClipSpec, audio_seconds, coverage_problem, resolution_problem, view_grid

IMAGENET_MEAN = _dali.IMAGENET_MEAN
IMAGENET_STD = _dali.IMAGENET_STD
BACKENDS = ("auto", "dali", "pyav")
MODALITIES = ("video", "audio", "audio-video")
_WARNED = set()   # one-time warnings already given in this process


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def digest_mode(manifest: S.Manifest, verify_digests: bool = True) -> str:
    """How the loader checks member digests (:mod:`.verify`): ``"require"`` when the manifest
    says the shards carry them, ``"optional"`` for shards packed before digests existed (a
    note once per dataset), ``"off"`` when ``verify_digests=False``."""
    if not verify_digests:
        return "off"
    if manifest.integrity.get("digest") == S.DIGEST_ALGO:
        return "require"
    _warn_once(f"note: the shards of {manifest.root or 'this dataset'} carry no member digests (packed by an older "
               "mmit-fast): damaged bytes inside a member cannot be detected; re-pack to add them")
    return "optional"


class Batch(NamedTuple):
    video: torch.Tensor
    audio: Optional[torch.Tensor]
    has_audio: torch.Tensor
    targets: torch.Tensor
    keys: List[str]


def _identity(x):
    return x


def _worker_init(_):
    torch.set_num_threads(1)


class _EpochItems(torch.utils.data.Sampler):
    """``(epoch, batch)`` items of one epoch from ``start``; mutable so that persistent
    DataLoader workers serve every epoch (the workers compute each epoch's plan)."""

    def __init__(self, epoch, start, nb):
        self.epoch, self.start, self.nb = epoch, start, nb

    def __iter__(self):
        return iter([(self.epoch, b) for b in range(self.start, self.nb)])

    def __len__(self):
        return self.nb - self.start


class _EpochPlan:
    """Picklable ``epoch -> batches`` of one rank."""

    def __init__(self, n, batch_size, rank, world_size, seed, shuffle, drop_last):
        self.args = (n, batch_size, rank, world_size)
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last

    def __call__(self, epoch):
        n, b, r, w = self.args
        return epoch_batches(n, b, r, w, epoch=epoch, seed=self.seed, shuffle=self.shuffle, drop_last=self.drop_last)


def resolve_device(device: str) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return d


#: ``auto`` on a CPU device: "pyav" (measured faster and ~1.3x more CPU-efficient than DALI's
#: CPU decoder on 2 cores, benchmarks/results/loader_*.md) -- set to "dali" to prefer DALI CPU
#: for VP9/VP8/MJPEG shards.
CPU_AUTO = os.environ.get("MMIT_CPU_BACKEND", "pyav")


def resolve_backend(backend: str, device: torch.device, codec: str) -> str:
    """``auto``: DALI on CUDA; on CPU PyAV (or DALI CPU for VP9/VP8/MJPEG shards when
    ``MMIT_CPU_BACKEND=dali``); PyAV without DALI."""
    codec = (codec or "").lower()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    has_dali = _dali.available()
    if backend == "auto":
        if has_dali and (device.type == "cuda" or (CPU_AUTO == "dali" and codec in _dali.CPU_CODECS)):
            return "dali"
        return "pyav"
    if backend == "dali":
        if not has_dali:
            raise ImportError("backend='dali' needs NVIDIA DALI: pip install nvidia-dali-cuda120 (or nvidia-dali)")
        if device.type != "cuda" and codec not in _dali.CPU_CODECS:
            raise ValueError(f"DALI's CPU decoder cannot decode {codec!r} shards (only {_dali.CPU_CODECS}); "
                             f"use backend='pyav' or a CUDA device")
    return backend


class VideoLoader:
    """See :func:`make_loader`."""

    def __init__(self, data: Union[str, S.Manifest], split: str, clip: ClipSpec, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, train: bool = True, backend: str = "auto", device: str = "cpu", seed: int = 0,
                 with_audio: bool = False, num_workers: int = 2, views=1, shuffle: Optional[bool] = None,
                 drop_last: Optional[bool] = None, decoder_threads: Optional[int] = None, dali_threads: int = 2,
                 prefetch: int = 2, exact_color: bool = False, container_check: str = "boxes", modality: str = "video",
                 verify_digests: bool = True, readahead: int = 4, cache_dir: Optional[str] = None,
                 cache_bytes: int = 20 << 30):
        self.manifest = data if isinstance(data, S.Manifest) else S.load_manifest(data)
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.modality, self.video = modality, modality != "audio"   # audio-only: no video read or decoded
        with_audio = with_audio or modality != "video"
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split, self.spec, self.batch_size = split, clip, int(batch_size)
        self.rank, self.world_size, self.train, self.seed = int(rank), int(world_size), bool(train), int(seed)
        self.with_audio, self.num_workers, self.views = bool(with_audio), int(num_workers), views
        self.num_views = int(np.prod(view_grid(views)))
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.device = resolve_device(device)
        self.codec = str(self.manifest.video.get("codec", "")).lower()
        self.backend = resolve_backend(backend, self.device, self.codec) if self.video else "pyav"
        self.table = sample_table(self.manifest, split)
        self.table.verify = digest_mode(self.manifest, verify_digests)
        if readahead < 0:
            raise ValueError(f"readahead must be >= 0 (0: no read-ahead), got {readahead}")
        self.table.readahead, self.table.cache_bytes = int(readahead), int(cache_bytes)
        self.table.cache_dir = os.path.abspath(cache_dir) if cache_dir and self.table.remote else None
        self.io = {"requests": 0, "bytes_read": 0, "retries": 0}   # sample reads from a URL (all workers)
        self.num_samples = len(self.table)
        fps = float(self.manifest.video.get("fps") or 25.0)
        secs = float(self.manifest.video.get("seconds") or 3.0)
        whole = modality != "video"   # SoundNet, alone or in a fusion, hears the whole clip
        self.audio_samples = int(round(audio_seconds(clip, fps, secs, whole=whole) * S.AUDIO_SAMPLE_RATE))
        preset = self.manifest.video.get("preset")
        for problem in ((coverage_problem(clip, fps, secs, preset),
                         resolution_problem(clip, self.manifest.video.get("short_side"), preset)) if self.video else ()):
            if problem:
                _warn_once(f"{self.manifest.root or 'dataset'}: {problem}")
        self._nb = num_batches(self.num_samples, self.batch_size, self.world_size, self.drop_last)
        if decoder_threads is None:
            decoder_threads = 1 if self.num_workers >= (os.cpu_count() or 1) else max(1, (os.cpu_count() or 1) // max(1, self.num_workers))
        self.plan = _EpochPlan(self.num_samples, self.batch_size, self.rank, self.world_size, self.seed, self.shuffle, self.drop_last)
        self.source = BatchSource(self.table, self.plan, self.manifest.num_classes, clip, train=self.train, seed=self.seed,
                                  views=views, with_audio=self.with_audio, audio_samples=self.audio_samples,
                                  decode=self.backend == "pyav", threads=decoder_threads, exact_color=exact_color,
                                  check=container_check, normalise_in_worker=self.device.type == "cpu", video=self.video,
                                  audio_whole=whole)
        self.dali_threads, self.prefetch = int(dali_threads), int(prefetch)
        self.epoch, self.start_batch = 0, 0
        self.skipped = 0
        self.decoded_frames = 0   # frames PyAV decoded (used or not); DALI's are not counted
        self.dali_fallbacks = 0   # batches DALI raised on and PyAV decoded instead
        self.skipped_samples: List[Tuple[str, str, str]] = []   # (shard, key, reason)
        self._pipe = None
        self._dl = None
        self._sampler = None

    # -- contract ------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    def __len__(self) -> int:
        return self._nb

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Reshuffle with ``seed + epoch``; ``start_batch`` skips the first batches (resume)."""
        if not 0 <= start_batch <= self._nb:
            raise ValueError(f"start_batch {start_batch} out of range (epoch has {self._nb} batches)")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __repr__(self):
        return (f"VideoLoader({self.manifest.root!r}, split={self.split!r}, backend={self.backend!r}, device={str(self.device)!r}, "
                f"samples={self.num_samples}, batches={self._nb}, rank={self.rank}/{self.world_size})")

    # -- iteration -----------------------------------------------------------
    def _raw_batches(self):
        items = _EpochItems(self.epoch, self.start_batch, self._nb)
        if self.num_workers <= 0:
            for it in items:
                yield self._counted(self.source[it])
            return
        if self._dl is None:   # persistent workers: forked once, reused every epoch
            self._sampler = _EpochItems(0, 0, self._nb)
            self._dl = torch.utils.data.DataLoader(self.source, batch_size=None, sampler=self._sampler,
                                                   num_workers=self.num_workers, collate_fn=_identity,
                                                   worker_init_fn=_worker_init, prefetch_factor=self.prefetch,
                                                   persistent_workers=True, pin_memory=False)
        self._sampler.epoch, self._sampler.start = self.epoch, self.start_batch
        try:
            for d in self._dl:
                yield self._counted(d)
        except storage.StorageError as e:   # from a worker: its one line, not the worker's traceback
            last = str(e).strip().splitlines()[-1]
            raise type(e)(last.split(": ", 1)[1] if last.startswith("mmit_fast.storage.") else last) from None

    def _counted(self, d):
        for k, v in d.get("io", {}).items():
            self.io[k] = self.io.get(k, 0) + v
        return d

    def _record_skips(self, skipped):
        for s in skipped:
            self.skipped += 1
            self.skipped_samples.append(tuple(s))
            warnings.warn(f"skipped bad sample {s[1]} in {s[0]}: {s[2]}", RuntimeWarning, stacklevel=3)

    def _finish(self, video, d, keep=None) -> Batch:
        """Assemble a Batch (``video`` float on the device, views contiguous).

        ``keep``: samples that decoded (bad ones are dropped). In training a batch that lost
        samples is filled back to its planned size by repeating its good samples, so shapes
        stay fixed (an all-bad batch comes out empty)."""
        V = self.num_views
        n = len(d["keys"])
        rows = np.arange(n) if keep is None else np.flatnonzero(keep)
        planned = int(d.get("planned", n))
        if self.train and 0 < len(rows) < planned:
            rows = rows[np.arange(planned) % len(rows)]
        keys = [d["keys"][i] for i in rows]
        targets = torch.from_numpy(d["targets"])
        has_audio = torch.from_numpy(d["has_audio"])
        audio = torch.as_tensor(d["audio"]) if d["audio"] is not None else None
        if len(rows) != n or not np.array_equal(rows, np.arange(n)):
            vk = (rows[:, None] * V + np.arange(V)[None]).reshape(-1)
            video = video[torch.as_tensor(vk, device=video.device)]
            targets, has_audio = targets[torch.as_tensor(rows)], has_audio[torch.as_tensor(rows)]
            if audio is not None:
                audio = audio[torch.as_tensor(vk)]
        if audio is not None:
            audio = self._to_device(audio)
        return Batch(video, audio, self._to_device(has_audio), self._to_device(targets), keys)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor onto the loader's device; to CUDA through pinned memory, so that the
        copy is asynchronous (a pageable copy makes the host wait)."""
        if self.device.type != "cuda" or t.device.type == "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    def _normalise(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 [N,T,H,W,3] -> float32 [N,3,T,H,W] ImageNet-normalised, on the loader's device."""
        return normalise(self._to_device(u8))

    def _constant_views(self, video: torch.Tensor) -> np.ndarray:
        """Per sample: True when one of its views is a constant clip (all pixels one colour)."""
        flat = video.flatten(2)
        const = (flat.amax(2) == flat.amin(2)).all(1)
        return const.view(-1, self.num_views).any(1).cpu().numpy()

    def _pyav_batch(self, d) -> Batch:
        video = torch.as_tensor(d["video"])
        if video.dtype == torch.uint8:   # GPU device: normalised there
            video = self._normalise(video)
        return self._finish(video.to(self.device), d)

    def __iter__(self):
        if self.backend == "pyav":
            for d in self._raw_batches():
                self._record_skips(d["skipped"])
                self.decoded_frames += int(d.get("decoded", 0))
                yield self._pyav_batch(d)
        else:
            yield from self._iter_dali()
        self.epoch, self.start_batch = self.epoch + 1, 0

    # -- DALI ----------------------------------------------------------------
    def _new_pipe(self):
        dev_id = self.device.index if self.device.index is not None else (torch.cuda.current_device() if self.device.type == "cuda" else None)
        return _dali.build_pipeline(max_batch=self.batch_size * self.num_views, num_classes=self.num_classes,
                                    crop=self.spec.crop, device=self.device.type, device_id=dev_id,
                                    num_threads=self.dali_threads, prefetch=1)

    def _fallback(self, d) -> Tuple[Optional[torch.Tensor], np.ndarray]:
        """Decode a batch DALI failed on with PyAV; returns video and the kept mask."""
        keep = np.ones(len(d["keys"]), bool)
        clips = []
        for i, (data, plans, _ids) in enumerate(d["raw"]):
            try:
                clips.append(decode_clip(bytes(memoryview(data.numpy() if hasattr(data, "numpy") else data)), plans,
                                         exact_color=True))
            except BadSample as e:
                keep[i] = False
                self._record_skips([(d["shards"][i], d["keys"][i], f"DALI and PyAV failed to decode it: {e}")])
        c = self.spec.crop
        u8 = torch.from_numpy(np.concatenate(clips)) if clips else torch.zeros((0, self.spec.frames, c, c, 3), dtype=torch.uint8)
        return self._normalise(u8), keep

    def _schedule(self, d) -> None:
        """Feed one raw batch to DALI and start it (asynchronously)."""
        d["_raw"] = [(data, plans, ids) for (data, plans), ids in zip(d["raw"], d["ids"])]
        d["_scheduled"] = False
        if not d["raw"]:
            return
        try:
            if self._pipe is None:
                self._pipe = self._new_pipe()
            _dali.feed(self._pipe, d["_raw"], self.num_classes)
            self._pipe.schedule_run()
            d["_scheduled"] = True
        except Exception as e:
            self._dali_failed(e)

    def _dali_failed(self, e) -> None:
        self.dali_fallbacks += 1
        warnings.warn(f"DALI failed on a batch ({str(e).splitlines()[0][:200]}); decoding it with PyAV", RuntimeWarning)
        self._pipe = None   # DALI has no skip-on-error: a fresh pipeline for the next batches

    def _collect(self, d):
        """(video, keep) of a scheduled raw batch; PyAV decodes it if DALI raised."""
        c = self.spec.crop
        if not d["raw"]:
            return self._normalise(torch.zeros((0, self.spec.frames, c, c, 3), dtype=torch.uint8)), np.ones(0, bool)
        if d["_scheduled"]:
            try:
                out = self._pipe.outputs()
                video = _dali.to_torch(out[0], self.device)
                # multi-hot built by DALI (one_hot + max over the ids member); one row per view
                d["targets"] = _dali.to_torch(out[1], torch.device("cpu"))[:: self.num_views].numpy()
                if self.device.type == "cuda":
                    torch.cuda.current_stream(self.device).synchronize()   # copies done before DALI reuses buffers
                return video, np.ones(len(d["keys"]), bool)
            except Exception as e:
                self._dali_failed(e)
        return self._fallback(dict(d, raw=d["_raw"]))

    def _iter_dali(self):
        """One batch in flight in DALI while the previous one is consumed."""
        queue = []
        for d in self._raw_batches():
            self._record_skips(d["skipped"])
            if queue:
                prev = queue.pop(0)
                video, keep = self._collect(prev)
                self._schedule(d)
                queue.append(d)
                yield self._checked(video, prev, keep)
            else:
                self._schedule(d)
                queue.append(d)
            if self._pipe is None:   # DALI failed: whatever was queued on the old pipeline is lost
                for q in queue:
                    q["_scheduled"] = False
        for prev in queue:
            video, keep = self._collect(prev)
            yield self._checked(video, prev, keep)

    def _checked(self, video, d, keep) -> Batch:
        bad = self._constant_views(video) & keep if video.shape[0] else np.zeros(len(d["keys"]), bool)
        if bad.any():
            self._record_skips([(d["shards"][i], d["keys"][i], "decoded clip is constant (e.g. all black): broken video")
                                for i in np.flatnonzero(bad)])
            keep = keep & ~bad
        return self._finish(video, d, keep)


def make_loader(data, split: str = "train", clip: Optional[ClipSpec] = None, batch_size: int = 8, rank: int = 0,
                world_size: int = 1, train: bool = True, backend: str = "auto", device: str = "cpu", seed: int = 0,
                with_audio: bool = False, num_workers: int = 2, views=1, **kw) -> VideoLoader:
    """A loader over ``split`` of the packed dataset ``data`` (folder or Manifest).

    ``clip``: :class:`ClipSpec` (default I3D: 16 consecutive frames, stride 2, 224 crop).
    ``rank``/``world_size``: this process's disjoint part (``torchrun``); every rank gets
    ``len(loader)`` batches. ``train``: random clips/crops/flips and shuffling with
    ``seed + epoch`` (``set_epoch``), dropping the last ``N mod (world*B)``; evaluation:
    centre clips (or ``views`` = temporal x spatial views), every sample once.
    ``backend``: ``auto`` | ``dali`` | ``pyav``; ``device``: ``cpu`` | ``cuda`` | ``auto``.
    Extra keywords: ``shuffle``, ``drop_last``, ``decoder_threads`` (PyAV codec threads),
    ``dali_threads``, ``prefetch`` (batches per worker), ``exact_color`` (PyAV: True converts YUV->RGB
    bit-exactly as DALI's decoder does, at ~4x the conversion cost; the default False uses
    swscale's fixed-point path, 34-42 dB PSNR from the exact result), ``container_check``
    (DALI inputs: ``"boxes"``, the mp4 box structure, microseconds; ``"demux"``, also a PyAV
    demux, ~5 ms a video), ``verify_digests`` (default True: every member read is checked against
    the CRC-32 recorded at packing, and ``.ids`` against the metadata, before decoding; a
    mismatch skips the sample with a reason naming shard, key and member), ``modality`` (the
    model's: ``"video"``; ``"audio"``, an audio-only model such as SoundNet: the video member
    is neither read nor decoded, ``batch.video`` is ``[B*V,3,0,c,c]`` and ``batch.audio`` holds
    the whole clip's waveform; ``"audio-video"``, a fusion: frames as usual, the whole clip's
    audio; anything but ``"video"`` implies ``with_audio``), ``readahead`` (shards at a URL:
    range requests in flight per worker, default 4, 0 for none; :mod:`.fetch`), ``cache_dir`` /
    ``cache_bytes`` (shards at a URL: keep whole shards on local disk, at most ``cache_bytes``,
    default 20 GiB, evicted least recently used, checked by the member digests).

    ``data`` may be a URL: ``s3://bucket/prefix``, ``gs://...``, ``https://...``
    (:mod:`mmit_fast.storage`; extras ``[s3]``, ``[gcs]``, ``[http]``): the manifest, the
    ``.idx`` files and one byte range per sample are fetched, nothing else; ``loader.io``
    counts the requests, bytes and retries of the sample reads.

    A clip spec that needs more distinct frames per clip than the shards hold (e.g. 16
    consecutive frames at stride 2 on ``paper-i3d`` shards of 16 frames per clip) makes a
    ``RuntimeWarning`` once (the clips would repeat frames).
    """
    return VideoLoader(data, split, clip or ClipSpec(), batch_size, rank=rank, world_size=world_size, train=train,
                       backend=backend, device=device, seed=seed, with_audio=with_audio, num_workers=num_workers,
                       views=views, **kw)
