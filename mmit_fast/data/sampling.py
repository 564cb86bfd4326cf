"""Clip sampling, defined once and used by every loader backend.

Everything a backend needs to cut one *view* of a sample is computed here, in Python, from
the sample's frame count, its frame size and a random generator: the frame indices, the
resize target, the crop window, the flip and the audio window. The PyAV backend decodes
exactly these frames; the DALI backend hands the same indices to ``fn.decoders.video``
(``frames=``) and the same crop to ``fn.slice``. So both backends see the same pixels.

Temporal sampling (``F`` = frames in the video, ``T`` = ``spec.frames``):

* ``consecutive`` (I3D): ``T`` frames at stride ``s``, ``idx_t = a + t*s``, t = 0..T-1. The
  span is ``L = (T-1)*s + 1``. Training: ``a ~ U{0..F-L}``; evaluation: ``a = floor((F-L)/2)``;
  evaluation with ``n`` temporal views: ``a_j = round(j*(F-L)/(n-1))`` (evenly spaced,
  first and last clip touch the ends). Short videos (``F < L``): ``a = 0`` and
  ``idx_t = min(t*s, F-1)`` (the last frame repeats).
* ``segments`` (TSN/TSM): the video is cut into ``T`` equal segments of length ``F/T``, one
  frame per segment: ``idx_t = floor((t + u_t) * F / T)``, with ``u_t ~ U[0,1)`` in training
  and ``u_t = 1/2`` in evaluation (``u_t = (j+1/2)/n`` for temporal view ``j`` of ``n``).
  ``F < T`` gives repeated frames, never an index past the end.
* ``uniform`` (the paper's I3D: 16 frames spread over the 3 s clip), defined in *time*: with
  ``D = F / fps`` the video's length in seconds, the instants are ``tau_t = (t + u) * D / T``,
  t = 0..T-1 (a grid of step ``D/T`` with ONE offset ``u``: ``u ~ U[0,1)`` in training,
  ``u = 1/2`` in evaluation -- the middle of each step --, ``u = (j+1/2)/n`` for temporal
  view ``j`` of ``n``), and each instant takes the frame on screen at that time,
  ``idx_t = floor(tau_t * fps) = floor((t+u) * F/T)`` (frame ``n`` is shown during
  ``[n/fps, (n+1)/fps)``). The frame rate cancels: a 25 fps and a 16/3 fps packing of the
  same clip give the same instants. A matched packing (``mmit pack --preset paper-i3d``: ``T``
  frames per clip, ffmpeg's ``fps`` filter) holds in frame ``t`` the source frame on screen
  at the middle of step ``t``, which is what evaluation asks for, and there
  ``idx_t = t`` for every ``u``: every decoded frame is used (and training has no temporal
  jitter left). In evaluation ``uniform`` and ``segments`` pick the same frames; in training
  ``segments`` draws one offset per segment, ``uniform`` one for the clip.
  ``F < T`` repeats frames, never an index past the end.

Spatial sampling (frame ``H x W``): resize so the short side is ``S = spec.resize`` (default
``round(crop*256/224)``: 256 for 224 crops, 128 for 112), the long side to
``round(long*S/short)``; then a ``crop x crop`` window: uniform random offset in training,
centred in evaluation; with 3 spatial views the window slides along the long side (start,
centre, end). Training flips horizontally with probability 1/2 (``spec.flip``).

Audio: a view's waveform window starts at ``idx_0 / fps`` seconds (``consecutive``) or at 0
(``segments`` and ``uniform``, whose frames span the whole video) and lasts
``audio_seconds(spec, ...)``; an audio-only model gets the whole clip (``audio_seconds(...,
whole=True)``).

Coverage: :func:`frames_needed` is how many frames per clip a spec reads distinct frames from
(consecutive: its span; segments/uniform: ``T``); :func:`coverage_problem` says, in one line,
when a packing holds fewer (the clip would repeat frames).

Random generators are seeded per (seed, epoch, sample, view) with :func:`sample_rng`, so the
frames a sample gets do not depend on the backend, the worker count or the batch order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

MODES = ("consecutive", "segments", "uniform")


@dataclass(frozen=True)
class ClipSpec:
    """What a clip looks like.

    ``mode``: ``"consecutive"`` (``frames`` frames ``stride`` apart), ``"segments"``
    (TSN/TSM: one frame from each of ``frames`` equal segments) or ``"uniform"`` (the paper's
    I3D: ``frames`` instants evenly spread over the whole clip, defined in seconds, so any
    frame rate gives the same instants; ``stride`` is unused). ``crop``: output side in
    pixels. ``resize``: short side before cropping (default ``round(crop*256/224)``).
    ``flip``: random horizontal flips in training.
    """

    mode: str = "consecutive"
    frames: int = 16
    stride: int = 2
    crop: int = 224
    resize: Optional[int] = None
    flip: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"ClipSpec.mode must be one of {MODES}, got {self.mode!r}")
        if int(self.frames) < 1:
            raise ValueError(f"ClipSpec.frames must be >= 1, got {self.frames}")
        if int(self.stride) < 1:
            raise ValueError(f"ClipSpec.stride must be >= 1, got {self.stride}")
        if int(self.crop) < 1:
            raise ValueError(f"ClipSpec.crop must be >= 1, got {self.crop}")
        if self.resize is not None and int(self.resize) < int(self.crop):
            raise ValueError(f"ClipSpec.resize ({self.resize}) must be >= crop ({self.crop})")

    @property
    def short_side(self) -> int:
        return int(self.resize) if self.resize is not None else int(round(self.crop * 256 / 224))

    @property
    def span(self) -> int:
        """Frames covered by one consecutive clip, ``(T-1)*stride + 1``."""
        return (self.frames - 1) * self.stride + 1


@dataclass
class ViewPlan:
    """One view of one sample: what to decode and how to cut it."""

    indices: np.ndarray          # int64 [T] frame indices (in presentation order, 0-based)
    resize_hw: Tuple[int, int]   # (h, w) after the resize
    crop_yx: Tuple[int, int]     # top-left of the crop in the resized frame
    crop: int
    flip: bool
    audio_start: float = 0.0     # seconds


def sample_rng(seed: int, epoch: int, sample: int, view: int = 0) -> np.random.Generator:
    """The generator of one (seed, epoch, global sample index, view)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(sample), int(view)])


def view_grid(views) -> Tuple[int, int]:
    """``views`` -> (temporal, spatial). An int ``V``: 3 spatial crops when ``V`` is a multiple
    of 3 (``V//3`` temporal clips), else ``V`` temporal clips; or an explicit pair."""
    if isinstance(views, (tuple, list)):
        t, s = int(views[0]), int(views[1])
    else:
        v = int(views)
        if v < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        t, s = (v // 3, 3) if v % 3 == 0 else (v, 1)
    if t < 1 or s < 1:
        raise ValueError(f"views must be >= 1 temporal and spatial, got {views}")
    return t, s


# --------------------------------------------------------------------------- temporal
def frame_indices(
    num_frames: int,
    spec: ClipSpec,
    rng: Optional[np.random.Generator] = None,
    *,
    train: bool = True,
    view: int = 0,
    num_views: int = 1,
) -> np.ndarray:
    """Frame indices (int64, length ``spec.frames``) of one clip; see the module docstring.

    ``train=True`` needs ``rng``; evaluation is deterministic (centre, or view ``view`` of
    ``num_views`` evenly spaced clips).
    """
    n = int(num_frames)
    if n < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    T = int(spec.frames)
    if train and rng is None:
        raise ValueError("training sampling needs a random generator")
    if spec.mode == "consecutive":
        s = int(spec.stride)
        L = spec.span
        if n < L:
            return np.minimum(np.arange(T, dtype=np.int64) * s, n - 1)
        room = n - L
        if train:
            a = int(rng.integers(0, room + 1))
        elif num_views <= 1:
            a = room // 2
        else:
            a = int(round(view * room / (num_views - 1)))
        return a + np.arange(T, dtype=np.int64) * s
    if spec.mode == "uniform":   # one offset for the whole grid (module docstring)
        u = float(rng.random()) if train else (view + 0.5) / max(num_views, 1)
    elif train:                  # segments: one offset per segment
        u = rng.random(T)
    else:
        u = np.full(T, (view + 0.5) / max(num_views, 1))
    # + 1e-9: (t+u)*n/T is an exact integer in theory (e.g. t*75/75); keep float error below it
    idx = np.floor((np.arange(T) + u) * n / T + 1e-9).astype(np.int64)
    return np.clip(idx, 0, n - 1)


# --------------------------------------------------------------------------- spatial
def resized_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """(h, w) with the short side ``short_side`` and the aspect ratio kept (rounded)."""
    h, w = int(height), int(width)
    if h <= 0 or w <= 0:
        raise ValueError(f"bad frame size {h}x{w}")
    if h <= w:
        return short_side, max(short_side, int(round(w * short_side / h)))
    return max(short_side, int(round(h * short_side / w))), short_side


def crop_window(
    resized_hw: Tuple[int, int],
    crop: int,
    rng: Optional[np.random.Generator] = None,
    *,
    train: bool = True,
    view: int = 0,
    num_views: int = 1,
) -> Tuple[int, int]:
    """Top-left (y, x) of a ``crop x crop`` window in a frame of size ``resized_hw``."""
    h, w = resized_hw
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} larger than the resized frame {h}x{w}")
    ry, rx = h - crop, w - crop
    if train:
        return int(rng.integers(0, ry + 1)), int(rng.integers(0, rx + 1))
    if num_views <= 1:
        return ry // 2, rx // 2
    # slide along the long side, centre on the short one
    f = view / (num_views - 1)
    if rx >= ry:
        return ry // 2, int(round(f * rx))
    return int(round(f * ry)), rx // 2


def plan_views(
    num_frames: int,
    height: int,
    width: int,
    fps: float,
    spec: ClipSpec,
    *,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    sample: int = 0,
    views=1,
    audio_whole: bool = False,
) -> List[ViewPlan]:
    """All views of one sample, temporal-major (view ``v = j*spatial + k``); ``audio_whole``:
    every view's audio window starts at 0 (an audio-only model hears the whole clip)."""
    nt, ns = view_grid(views)
    rhw = resized_size(height, width, spec.short_side)
    out = []
    for j in range(nt):
        for k in range(ns):
            v = j * ns + k
            rng = sample_rng(seed, epoch, sample, v) if train else None
            idx = frame_indices(num_frames, spec, rng, train=train, view=j, num_views=nt)
            y, x = crop_window(rhw, spec.crop, rng, train=train, view=k, num_views=ns)
            flip = bool(train and spec.flip and rng.random() < 0.5)
            a0 = float(idx[0]) / float(fps) if spec.mode == "consecutive" else 0.0
            if audio_whole:
                a0 = 0.0
            out.append(ViewPlan(indices=idx, resize_hw=rhw, crop_yx=(y, x), crop=int(spec.crop), flip=flip, audio_start=a0))
    return out


def audio_seconds(spec: ClipSpec, fps: float, video_seconds: float, whole: bool = False) -> float:
    """Length of a view's audio window: the clip's span (consecutive) or the video (segments,
    uniform, and every mode when ``whole``: an audio-only model hears the whole clip)."""
    if spec.mode == "consecutive" and not whole:
        return spec.span / float(fps)
    return float(video_seconds)


def frames_needed(spec: ClipSpec) -> int:
    """Distinct frames one clip of ``spec`` reads from a long enough video: the span of a
    consecutive clip, ``T`` for segments and uniform."""
    return spec.span if spec.mode == "consecutive" else int(spec.frames)


def coverage_problem(spec: ClipSpec, fps: float, seconds: float, preset: Optional[str] = None) -> Optional[str]:
    """One line when shards of ``fps`` x ``seconds`` (``floor(fps*seconds)`` frames per clip)
    hold fewer frames than ``spec`` needs, so that its clips would repeat frames; else None."""
    have = int(np.floor(float(fps) * float(seconds) + 1e-6))
    need = frames_needed(spec)
    if have <= 0 or need <= have:
        return None
    what = f"{spec.frames} frames at stride {spec.stride}" if spec.mode == "consecutive" else f"{spec.frames} frames"
    packed = f"preset {preset!r}, " if preset else ""
    full = preset == "full" or float(fps) >= 25.0
    if spec.mode == "consecutive":
        fix = "use clip mode 'uniform' (defined in seconds) or " + (
            "a smaller stride" if full else "shards packed with --preset full")
    else:
        fix = f"use shards with at least {need} frames per clip" + ("" if full else " (e.g. --preset full)")
    return (f"clip spec {spec.mode} ({what}) needs {need} distinct frames per clip but the shards hold {have} "
            f"({packed}{float(fps):.3g} fps x {float(seconds):.3g} s): frames will repeat; {fix}")


def resolution_problem(spec: ClipSpec, packed_short_side: Optional[int], preset: Optional[str] = None) -> Optional[str]:
    """One line when shards packed at ``packed_short_side`` are smaller than the short side ``spec``
    resizes to (its frames would be upscaled: blurrier than the model expects); else None."""
    if not packed_short_side or spec.short_side <= int(packed_short_side):
        return None
    packed = f"preset {preset!r}, " if preset else ""
    return (f"clip spec resizes frames to short side {spec.short_side} (crop {spec.crop}) but the shards hold "
            f"{int(packed_short_side)} ({packed}short side {int(packed_short_side)}): frames will be upscaled; pack at "
            f"--short-side {spec.short_side} or more")


def audio_window(waveform: Optional[np.ndarray], start_s: float, num_samples: int, sample_rate: int) -> np.ndarray:
    """``num_samples`` of ``waveform`` from ``start_s`` seconds, zero-filled past its end (or
    all zeros when ``waveform`` is None)."""
    out = np.zeros(int(num_samples), dtype=np.float32)
    if waveform is None or len(waveform) == 0:
        return out
    a = int(round(start_s * sample_rate))
    seg = waveform[a: a + int(num_samples)]
    out[: len(seg)] = seg
    return out
