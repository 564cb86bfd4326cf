"""Transcoding one clip with ffmpeg, and validating what goes in and what comes out.

Every clip of a packed dataset has the same geometry and timing:

* short side ``S`` (default 256): ``scale`` keeps the display aspect ratio (the sample aspect
  ratio is applied first, then ``setsar=1``); the long side is rounded to an even number
  (yuv420p needs even sizes), i.e. ``long = 2 * round(S * long_in / short_in / 2)``;
* frame rate ``F`` (default 25): the ``fps`` filter resamples to constant frame rate, so
  variable-frame-rate input comes out as CFR (frame ``n`` shows the source at ``t = n / F``);
* length: the first ``seconds`` (default 3 s) of the source; shorter clips keep their length,
  so a clip has ``round(min(d, seconds) * F)`` frames (+-1 for rounding of the last frame);
* ``yuv420p`` (``yuvj420p`` for MJPEG, its full-range twin), a short GOP (default ``F/2``
  frames, i.e. a keyframe every half second) for random access, no B-frames;
* codec ``vp9`` (libvpx-vp9, decodable by DALI on CPU and GPU; the default), ``h264``
  (libx264; DALI decodes it on GPU only) or ``mjpeg`` (intra only, large, decodable anywhere);
* audio becomes its own member: mono 22,050 Hz FLAC (or WAV); a clip without an audio
  stream gets none. A/V sync is kept as the source has it: both streams are timed from the
  first video frame (``t_v0``, the video stream's start relative to the file's start), so an
  audio stream that starts ``d`` seconds after the video is padded with ``d`` s of silence
  and one that starts earlier loses its first ``d`` s (``asetpts=PTS-t_v0/TB``, then
  ``aresample=async=1:first_pts=0``, which pads or trims to t = 0, then ``atrim`` to the
  clip length); sample ``n`` of the audio member plays at ``n / 22050`` s after frame 0.

ffmpeg is driven through ffmpeg-python (it builds the command line; the process is run here
so that it dies with its parent), using the system ``ffmpeg`` or else the binary of
``imageio-ffmpeg``. Inputs are probed and outputs fully decoded with PyAV (libav*, the same
decoders as ffmpeg).

Failures. "The input is bad" and "this attempt failed" are told apart. An attempt fails
(:class:`AttemptFailed`) when ffmpeg is killed by a signal (the out-of-memory killer's
SIGKILL, SIGXFSZ from a file-size limit, ...) or reports no space, no memory or a file too
large, or when our own encoded output does not decode: it is retried (``ATTEMPTS`` in all),
and if every attempt fails the packer records it as *not packed, to retry* (``--resume``
retries it). A source whose audio track does not decode while its video does is rejected
(a sample is never packed without the audio its source has).

Validation. An input is rejected (:class:`RejectedInput`, with a reason) when it is empty,
not a readable container, has no video stream, fails to decode, or decodes to fewer frames
than its header declares (a truncated file: a truncated "faststart" mp4 still opens and
ffmpeg exits 0, reporting ``partial file``). The output is decoded in full and its frame
count, size and mean brightness variance are checked, so that a broken encode is never
written.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

CODECS = ("vp9", "h264", "mjpeg")
AUDIO_FORMATS = ("flac", "wav")
AUDIO_RATE = 22050

# ffmpeg messages that mean the input is damaged (as opposed to harmless warnings)
_FATAL_PATTERNS = (
    "partial file",
    "Invalid data found when processing input",
    "moov atom not found",
    "Error while decoding",
    "error reading header",
    "Invalid NAL unit size",
    "corrupt",
)


class RejectedInput(Exception):
    """An input that is not written; ``reason`` says why (it goes to the manifest)."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class AttemptFailed(Exception):
    """This attempt to transcode failed for a reason that is not the input's (see the module
    docstring); ``reason`` says which. Retried here, and by ``--resume``."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class FFmpegNotFound(RuntimeError):
    pass


ATTEMPTS = 3              # tries per clip when an attempt fails for a non-input reason
RETRY_PAUSE_S = 0.5       # pause before try k+1: k * RETRY_PAUSE_S

# ffmpeg messages that mean the machine, not the input, failed this attempt
_ATTEMPT_PATTERNS = ("No space left on device", "File too large", "Cannot allocate memory",
                     "Resource temporarily unavailable", "Disk quota exceeded")
_SIGNAL_HINTS = {signal.SIGKILL: " (the out-of-memory killer?)", signal.SIGXFSZ: " (a file-size limit: ulimit -f)"}


def _killed_reason(returncode: int) -> str:
    try:
        sig = signal.Signals(-returncode)
        return f"ffmpeg was killed by {sig.name}{_SIGNAL_HINTS.get(sig, '')}"
    except ValueError:
        return f"ffmpeg was killed by signal {-returncode}"


# --------------------------------------------------------------------------- ffmpeg
_FFMPEG: Optional[str] = None


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: ``$MMIT_FFMPEG``, the system ``ffmpeg``, else imageio-ffmpeg's.

    The system binary comes before imageio-ffmpeg's static build because it is the one the user
    chose and maintains (distribution security updates, site builds with NVENC or extra codecs);
    the static build is the fallback that makes ``pip install`` alone enough. Both keep A/V sync
    (``tests/test_pack_integrity.py`` packs the same offset sources with each one found).
    ``MMIT_FFMPEG=/path/to/ffmpeg`` pins one explicitly."""
    global _FFMPEG
    if _FFMPEG:
        return _FFMPEG
    exe = os.environ.get("MMIT_FFMPEG") or shutil.which("ffmpeg")
    if not exe:
        try:
            import imageio_ffmpeg

            exe = imageio_ffmpeg.get_ffmpeg_exe()
        except Exception as e:  # pragma: no cover - imageio-ffmpeg is a dependency
            raise FFmpegNotFound(
                "no ffmpeg: install one on PATH or `pip install imageio-ffmpeg` (it ships a static binary)"
            ) from e
    _FFMPEG = exe
    return exe


def _die_with_parent():  # pragma: no cover - runs in the child between fork and exec
    """Linux: ask the kernel to SIGKILL this process when its parent dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


def run_ffmpeg(args: Sequence[str], stdin: Optional[bytes] = None, what: str = "ffmpeg") -> str:
    """Run ffmpeg with ``args`` (without the binary); return its stderr; raise on failure."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", *(["-nostdin"] if stdin is None else []), *args]
    try:
        proc = subprocess.run(
            cmd,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except OSError as e:  # fork/exec failed: no memory, too many processes
        raise AttemptFailed(what, f"ffmpeg could not be started ({e})") from None
    err = proc.stderr.decode("utf-8", "replace")
    last = " | ".join(l for l in err.strip().splitlines()[-3:])
    if proc.returncode < 0:
        raise AttemptFailed(what, _killed_reason(proc.returncode) + (f": {last}" if last else ""))
    if proc.returncode != 0:
        hit = next((p for p in _ATTEMPT_PATTERNS if p.lower() in err.lower()), None)
        if hit:
            raise AttemptFailed(what, f"ffmpeg failed: {hit} ({last})")
        raise RuntimeError(f"{what}: ffmpeg exited with {proc.returncode}: {last}")
    return err


# --------------------------------------------------------------------------- probing
@dataclass
class SourceInfo:
    path: str
    width: int
    height: int
    sar: float
    duration: float          # seconds of the video stream (header), 0 if unknown
    declared_frames: int     # frames in the header, 0 if unknown
    fps: float               # average frame rate
    has_audio: bool
    video_codec: str
    rotation: int = 0
    video_start: float = 0.0  # seconds from the file's start to the video stream's first frame


def probe(path: str, source: Optional[str] = None) -> SourceInfo:
    """Open ``path`` with PyAV and read its header; :class:`RejectedInput` when it is unusable."""
    import av

    source = source or path
    if not os.path.exists(path):
        raise RejectedInput(source, "missing file")
    if os.path.getsize(path) == 0:
        raise RejectedInput(source, "empty file (0 bytes)")
    try:
        container = av.open(path)
    except Exception as e:
        raise RejectedInput(source, f"not a readable video container ({_short(e)})") from None
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise RejectedInput(source, f"no video stream (streams: {', '.join(kinds)})")
        vs = container.streams.video[0]
        cc = vs.codec_context
        if not cc.width or not cc.height:
            raise RejectedInput(source, "video stream has no frame size (undecodable)")
        duration = 0.0
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif container.duration:
            duration = container.duration / 1e6
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        declared = int(vs.frames or 0)
        # demux (no decoding: cheap) every packet: a truncated file holds fewer than declared
        packets = 0
        try:
            for pkt in container.demux(vs):
                if pkt.size:
                    packets += 1
        except Exception as e:
            raise RejectedInput(source, f"damaged container after {packets} video packets ({_short(e)})") from None
        if packets == 0:
            raise RejectedInput(source, "video stream holds no packets")
        if declared and packets < declared:
            raise RejectedInput(source, f"truncated: {packets} of the {declared} frames its header declares are present")
        sar = float(cc.sample_aspect_ratio) if cc.sample_aspect_ratio else 1.0
        return SourceInfo(
            path=path,
            width=int(cc.width),
            height=int(cc.height),
            sar=sar if sar > 0 else 1.0,
            duration=duration,
            declared_frames=declared,
            fps=float(rate) if rate else 0.0,
            has_audio=bool(container.streams.audio),
            video_codec=cc.name,
            video_start=_video_start(container, vs),
        )
    finally:
        container.close()


def _video_start(container, vs) -> float:
    """Seconds from the file's start (the earliest stream; ffmpeg's time zero) to the video's."""
    if vs.start_time is None or vs.time_base is None:
        return 0.0
    file_start = container.start_time / 1e6 if container.start_time is not None else 0.0
    return max(0.0, float(vs.start_time * vs.time_base) - file_start)


def _short(e: BaseException, n: int = 160) -> str:
    s = str(e).strip().replace("\n", " ")
    return s if len(s) <= n else s[: n - 3] + "..."


def output_size(width: int, height: int, short_side: int, sar: float = 1.0) -> (int, int):
    """Output ``(w, h)``: short side ``short_side``, display aspect kept, long side even."""
    dw = width * sar
    if dw <= height:
        w = short_side
        h = 2 * max(1, int(round(short_side * height / dw / 2)))
    else:
        h = short_side
        w = 2 * max(1, int(round(short_side * dw / height / 2)))
    return w, h


# --------------------------------------------------------------------------- encoder
@dataclass
class EncodeSpec:
    """What every packed clip looks like (goes to ``manifest.video`` / ``.audio``)."""

    codec: str = "vp9"
    short_side: int = 256
    fps: float = 25.0
    seconds: float = 3.0
    gop: Optional[int] = None       # frames between keyframes; default round(fps / 2)
    crf: Optional[int] = None       # quality; codec default when None
    audio_format: str = "flac"
    threads: int = 1                # ffmpeg threads per clip (workers give the parallelism)
    preset: Optional[str] = None    # packing preset name (mmit_fast.pack.presets), recorded in the manifest
    bframes: int = 0                # H.264: non-reference B-frames between reference frames (no B-pyramid)

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; choose one of {CODECS}")
        if self.audio_format not in AUDIO_FORMATS:
            raise ValueError(f"unknown audio format {self.audio_format!r}; choose one of {AUDIO_FORMATS}")
        if self.short_side < 16 or self.short_side % 2:
            raise ValueError(f"short_side must be an even number >= 16, got {self.short_side}")
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not self.seconds > 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        if self.gop is None:
            self.gop = max(1, int(round(self.fps / 2)))

    @property
    def pix_fmt(self) -> str:
        return "yuvj420p" if self.codec == "mjpeg" else "yuv420p"

    def video_manifest(self) -> Dict:
        return {
            "codec": self.codec,
            "container": "mp4",
            "short_side": self.short_side,
            "fps": self.fps,
            "seconds": self.seconds,
            "pix_fmt": self.pix_fmt,
            "gop": self.gop if self.codec != "mjpeg" else 1,
            "crf": self.crf_value,
            "preset": self.preset,
        } | ({"bframes": self.bframes} if self.bframes else {})   # absent when 0: older manifests stay equal

    def audio_manifest(self) -> Dict:
        return {"format": self.audio_format, "sample_rate": AUDIO_RATE, "channels": 1, "sample_fmt": "s16"}

    @property
    def crf_value(self) -> int:
        if self.crf is not None:
            return int(self.crf)
        return {"vp9": 32, "h264": 23, "mjpeg": 3}[self.codec]

    def max_frames(self) -> int:
        return int(math.floor(self.seconds * self.fps + 1e-6))

    def video_args(self) -> Dict[str, object]:
        """ffmpeg output options of the video stream."""
        a: Dict[str, object] = {"pix_fmt": self.pix_fmt, "threads": self.threads}
        if self.codec == "vp9":
            a.update({"c:v": "libvpx-vp9", "deadline": "realtime", "cpu-used": 8, "row-mt": 1,
                      "crf": self.crf_value, "b:v": 0, "g": self.gop, "keyint_min": self.gop,
                      "lag-in-frames": 0, "auto-alt-ref": 0})
        elif self.codec == "h264":
            a.update({"c:v": "libx264", "preset": "veryfast", "crf": self.crf_value, "g": self.gop,
                      "keyint_min": self.gop, "sc_threshold": 0, "bf": self.bframes, "profile:v": "high",
                      "movflags": "+faststart"})
            if self.bframes:
                a["b-pyramid"] = "none"   # every B-frame a non-reference picture
        else:
            a.update({"c:v": "mjpeg", "q:v": self.crf_value})
        a["movflags"] = "+faststart"
        a["f"] = "mp4"
        return a

    def audio_args(self) -> Dict[str, object]:
        a: Dict[str, object] = {"ac": 1, "ar": AUDIO_RATE, "sample_fmt": "s16"}
        if self.audio_format == "flac":
            a.update({"c:a": "flac", "f": "flac"})
        else:
            a.update({"c:a": "pcm_s16le", "f": "wav"})
        return a


@dataclass
class EncodedClip:
    video: bytes
    audio: Optional[bytes]
    frames: int
    width: int
    height: int
    fps: float
    audio_samples: int = 0
    warnings: List[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    def meta(self, split: str, codec: str) -> dict:
        """The clip's fields of a sample's ``<key>.json`` (see ``shards.SAMPLE_META_FIELDS``)."""
        return {
            "fps": self.fps,
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "duration": round(self.duration, 6),
            "has_audio": self.audio is not None,
            "audio_samples": self.audio_samples,
            "split": split,
            "codec": codec,
        }


# --------------------------------------------------------------------------- decoding (validation)
def decode_video_bytes(data: bytes, where: str = "video", keep: bool = False):
    """Decode an encoded clip in full with PyAV; return ``(frames_count, width, height, frames|None)``.

    ``frames`` (``[T, H, W, 3]`` uint8 RGB) only when ``keep``. Raises ``ValueError`` naming
    ``where`` when the data does not decode.
    """
    import io

    import av

    try:
        with av.open(io.BytesIO(data)) as c:
            if not c.streams.video:
                raise ValueError(f"{where}: no video stream")
            s = c.streams.video[0]
            n, out = 0, []
            w = h = 0
            for fr in c.decode(s):
                n += 1
                w, h = fr.width, fr.height
                if keep:
                    out.append(fr.to_ndarray(format="rgb24"))
            declared = int(s.frames or 0)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{where}: does not decode ({_short(e)})") from None
    if declared and declared != n:
        raise ValueError(f"{where}: header declares {declared} frames but {n} decode (truncated)")
    return n, w, h, (np.stack(out) if keep and out else None)


def decode_audio_bytes(data: bytes, where: str = "audio") -> np.ndarray:
    """Decode an audio member to float32 mono samples with PyAV."""
    import io

    import av

    try:
        with av.open(io.BytesIO(data)) as c:
            s = c.streams.audio[0]
            chunks = [fr.to_ndarray().reshape(-1) for fr in c.decode(s)]
    except Exception as e:
        raise ValueError(f"{where}: does not decode ({_short(e)})") from None
    if not chunks:
        return np.zeros(0, np.float32)
    x = np.concatenate(chunks)
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    if x.dtype == np.int32:
        return x.astype(np.float32) / 2147483648.0
    return x.astype(np.float32)


def _check_output(video: bytes, expected_frames: int, size, where: str, tol: int = 1):
    n, w, h, _ = decode_video_bytes(video, where=f"{where} (transcoded output)")
    if (w, h) != tuple(size):
        raise RejectedInput(where, f"transcoded output is {w}x{h}, expected {size[0]}x{size[1]}")
    if n == 0:
        raise RejectedInput(where, "transcoded output has no frames")
    if expected_frames and n < expected_frames - tol:
        raise RejectedInput(where, f"truncated: decoded {n} frames, the header implies {expected_frames}")
    return n


# --------------------------------------------------------------------------- transcoding files
def transcode_args(path: str, spec: EncodeSpec, info: SourceInfo, vout: str, aout: Optional[str]) -> List[str]:
    """The ffmpeg arguments (built with ffmpeg-python) that transcode ``path`` to ``spec``:
    ``setpts`` (time zero at the first video frame), ``scale=iw*sar:ih,setsar=1`` (square
    pixels), ``fps`` (constant rate), ``scale`` to the output size (area averaging), video to
    ``vout`` and, when the source has audio and ``aout`` is given, mono 22,050 Hz 16-bit audio
    to ``aout``, timed from the same zero (padded or trimmed at the start, see the module
    docstring)."""
    import ffmpeg  # ffmpeg-python

    w, h = output_size(info.width, info.height, spec.short_side, info.sar)
    v0 = f"{info.video_start:.6f}"
    inp = ffmpeg.input(path, t=spec.seconds + info.video_start)
    v = (
        inp.video.filter("setpts", f"PTS-{v0}/TB")
        .filter("scale", "iw*sar", "ih")
        .filter("setsar", 1)
        .filter("fps", fps=spec.fps, round="near")
        .filter("scale", w, h, flags="area")
        .filter("setsar", 1)
    )
    outs = [ffmpeg.output(v, vout, **{**spec.video_args(), "frames:v": spec.max_frames()})]
    if info.has_audio and aout:
        a = (inp.audio.filter("asetpts", f"PTS-{v0}/TB")
             .filter("aresample", AUDIO_RATE, **{"async": 1, "first_pts": 0})
             .filter("atrim", end=spec.seconds))
        outs.append(ffmpeg.output(a, aout, **spec.audio_args()))
    return ffmpeg.merge_outputs(*outs).global_args("-y").get_args()


def transcode_file(path: str, spec: EncodeSpec, source: Optional[str] = None) -> EncodedClip:
    """Transcode one video file to ``spec``; :class:`RejectedInput` when it is unusable,
    :class:`AttemptFailed` when all ``ATTEMPTS`` tries failed for a non-input reason."""
    source = source or path
    info = probe(path, source)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _transcode_once(path, spec, info, source)
        except AttemptFailed as e:
            if attempt == ATTEMPTS:
                raise AttemptFailed(source, f"{e.reason} (all {ATTEMPTS} attempts failed; not a fault of the input)") from None
            time.sleep(RETRY_PAUSE_S * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _run_transcode(path: str, spec: EncodeSpec, info: SourceInfo, source: str, vout: str, aout: str) -> str:
    """Run ffmpeg; a source whose audio track fails while its video alone transcodes is rejected."""
    try:
        return run_ffmpeg(transcode_args(path, spec, info, vout, aout), what=source)
    except RuntimeError as e:
        if not info.has_audio:
            raise RejectedInput(source, f"does not decode: {_short(e, 240)}") from None
        try:  # which stream fails? the video alone
            run_ffmpeg(transcode_args(path, spec, info, vout, None), what=source)
        except RuntimeError as e2:
            raise RejectedInput(source, f"does not decode: {_short(e2, 240)}") from None
        raise RejectedInput(source, f"audio track does not decode ({_short(e, 200)}); the video does, but a sample "
                                    "is never packed without its audio") from None


def _transcode_once(path: str, spec: EncodeSpec, info: SourceInfo, source: str) -> EncodedClip:
    w, h = output_size(info.width, info.height, spec.short_side, info.sar)
    # frames expected from the header (truncated files decode to fewer)
    src_seconds = min(info.duration, spec.seconds) if info.duration > 0 else 0.0
    expected = int(round(src_seconds * spec.fps)) if src_seconds else 0
    expected = min(expected, spec.max_frames())

    with tempfile.TemporaryDirectory(prefix="mmit-tc-") as tmp:
        vout = os.path.join(tmp, "v.mp4")
        aout = os.path.join(tmp, "a." + spec.audio_format)
        err = _run_transcode(path, spec, info, source, vout, aout)
        fatal = [l for l in err.splitlines() if any(p.lower() in l.lower() for p in _FATAL_PATTERNS)]
        if not os.path.exists(vout) or os.path.getsize(vout) == 0:
            raise RejectedInput(source, "no frames decoded" + (f" ({_short(fatal[0])})" if fatal else ""))
        with open(vout, "rb") as f:
            video = f.read()
        audio = None
        if info.has_audio and os.path.exists(aout) and os.path.getsize(aout) > 0:
            with open(aout, "rb") as f:
                audio = f.read()

    try:
        n = _check_output(video, expected, (w, h), source, tol=max(1, int(0.04 * expected)))
    except ValueError as e:
        raise RejectedInput(source, str(e)) from None
    if fatal and (not expected or n < expected - 1 or any("partial file" in l for l in fatal)):
        raise RejectedInput(source, f"damaged input: {_short(fatal[0])}")
    samples, notes = 0, []
    if audio is not None:
        try:
            samples = int(decode_audio_bytes(audio, where=f"{source} audio").size)
        except ValueError as e:  # our own encode is broken: this attempt failed
            raise AttemptFailed(source, f"the encoded audio does not decode ({_short(e)})") from None
    if info.has_audio and samples == 0:
        audio = None
        notes = ["the source's audio stream has no samples within the packed span"]
    return EncodedClip(video=video, audio=audio, frames=n, width=w, height=h, fps=spec.fps,
                       audio_samples=samples, warnings=fatal + notes)


# --------------------------------------------------------------------------- encoding arrays (synth)
def encode_arrays(frames: np.ndarray, spec: EncodeSpec, audio: Optional[np.ndarray] = None,
                  source: str = "array") -> EncodedClip:
    """Encode ``frames`` (``[T, H, W, 3]`` uint8 RGB, already at the output geometry) and an
    optional mono float waveform (22,050 Hz, in [-1, 1]) with the same encoder settings as
    :func:`transcode_file`, then validate the output the same way."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{source}: frames must be [T, H, W, 3] uint8, got {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"{source}: frame size {w}x{h} must be even for yuv420p")
    import ffmpeg

    with tempfile.TemporaryDirectory(prefix="mmit-enc-") as tmp:
        vout = os.path.join(tmp, "v.mp4")
        aout = os.path.join(tmp, "a." + spec.audio_format)
        stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=spec.fps)
        outs = [ffmpeg.output(stream, vout, **spec.video_args())]
        samples = 0
        if audio is not None:
            # one ffmpeg process for both members: the waveform goes through a raw temp file
            a = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
            raw = os.path.join(tmp, "a.f32")
            a.tofile(raw)
            samples = int(a.size)
            ain = ffmpeg.input(raw, format="f32le", ar=AUDIO_RATE, ac=1)
            outs.append(ffmpeg.output(ain, aout, **spec.audio_args()))
        run_ffmpeg(ffmpeg.merge_outputs(*outs).get_args(), stdin=frames.tobytes(), what=source)
        with open(vout, "rb") as f:
            video = f.read()
        data = None
        if audio is not None:
            with open(aout, "rb") as f:
                data = f.read()
    try:
        n = _check_output(video, t, (w, h), source, tol=0)
    except ValueError as e:
        raise RejectedInput(source, str(e)) from None
    return EncodedClip(video=video, audio=data, frames=n, width=w, height=h, fps=spec.fps, audio_samples=samples)
