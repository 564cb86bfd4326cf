"""PyAV decoding, and the per-batch work every backend shares.

:class:`BatchSource` turns ``(epoch, batch)`` into one batch of one rank: it reads the
members of each sample straight from the tar (offsets from the ``.idx``), plans the views
(:mod:`.sampling`), builds multi-hot targets and the audio windows, and then either decodes
the frames with PyAV (``decode=True``: the CPU backend) or only checks the video container
(:func:`check_mp4_boxes`, optionally a PyAV demux) and hands the encoded bytes, frame indices
and crop windows to DALI (``decode=False``).
It runs inside ``torch.utils.data.DataLoader`` worker processes.

Decoding one view (:func:`decode_clip`) touches as little as possible:

1. demux every packet (cheap; no decoding) -> presentation order, keyframes; a container
   that fails to demux, or holds fewer packets than the sample's metadata says
   (a truncated file), makes the sample *bad*;
2. for each run of needed frames, start decoding at the last keyframe before it (a seek:
   flush the decoder and feed packets from that keyframe) unless the decoder is already
   between that keyframe and the frame; stop after the last needed frame; on the way, skip the
   packets of frames no other frame refers to (H.264 non-reference pictures, e.g. the B-frames of
   ``--preset full-bframes``) unless they are needed;
3. convert only the needed frames to RGB, resized in the same swscale call straight to the
   view's size (``frame.to_ndarray(width=, height=)``, bilinear: swscale widens its filter when
   shrinking, so the resize is antialiased); then crop and flip in NumPy, writing each view
   into its slot of the batch's uint8 buffer (no stacking, no concatenation: the decoded
   frame, its crop in the batch, the normalised float batch are the only copies). With
   ``exact_color`` the frames are converted at native size with accurate rounding (DALI's
   decoder's pixels) and resized by :func:`resize_clip`, DALI's resize.

A bad sample (demux/decode error, missing frames, a constant (e.g. all-black) clip) is
dropped from its batch and reported in ``skipped`` with the shard, key and reason.
"""
from __future__ import annotations

import io
import os
import threading
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .. import shards as S
from . import verify
from .index import MemberReader, SampleTable
from .sampling import ClipSpec, ViewPlan, audio_window, plan_views, view_grid

try:  # PyAV is needed by the CPU backend and to check containers before DALI decodes them
    import av
except ImportError:  # pragma: no cover
    av = None


class BadSample(Exception):
    """A sample that cannot be used (the reason is the message)."""


# --------------------------------------------------------------------------- video
class Demuxed:
    """The packets of a video stream in decode order, with their presentation ranks."""

    def __init__(self, data: bytes, expect_frames: Optional[int] = None, threads: int = 1):
        if av is None:
            raise ImportError("PyAV is required: pip install av")
        try:
            self.container = av.open(io.BytesIO(data), mode="r", format="mp4")
        except Exception:
            try:  # not an mp4 after all: let libavformat probe
                self.container = av.open(io.BytesIO(data), mode="r")
            except Exception as e:
                raise BadSample(f"cannot open the video ({type(e).__name__}: {e})") from None
        vs = [s for s in self.container.streams if s.type == "video"]
        if not vs:
            raise BadSample("the mp4 has no video stream")
        self.stream = vs[0]
        ctx = self.stream.codec_context
        if threads and threads > 1:
            ctx.thread_type = "AUTO"
            ctx.thread_count = int(threads)
        else:
            ctx.thread_count = 1
        self.ctx = ctx
        pkts = []
        try:
            for p in self.container.demux(self.stream):
                if p.size == 0 or p.pts is None:
                    continue
                pkts.append(p)
        except Exception as e:
            raise BadSample(f"the mp4 does not demux ({type(e).__name__}: {e})") from None
        if not pkts:
            raise BadSample("the mp4 holds no video packets")
        if expect_frames and len(pkts) < int(expect_frames):
            raise BadSample(f"the mp4 is truncated: {len(pkts)} video packets, metadata says {expect_frames} frames")
        self.packets = pkts
        pts = np.array([p.pts for p in pkts], dtype=np.int64)
        order = np.argsort(pts, kind="stable")
        self.pts_sorted = pts[order]
        self.rank_of_pts = {int(v): i for i, v in enumerate(self.pts_sorted)}
        self.num_frames = len(pkts)
        # decode position of each presentation rank, presentation rank of each decode position; keyframe positions
        self.pos_of_rank = order.astype(np.int64)
        self.rank_of_pos = np.empty(len(pkts), dtype=np.int64)
        self.rank_of_pos[order] = np.arange(len(pkts))
        # frames no other frame refers to (H.264 nal_ref_idc 0: B-frames without pyramid): skippable when unwanted
        self.disposable = _h264_disposable(pkts, ctx.extradata) if ctx.name == "h264" else np.zeros(len(pkts), bool)
        self.key_pos = np.array([i for i, p in enumerate(pkts) if p.is_keyframe], dtype=np.int64)
        if self.key_pos.size == 0 or self.key_pos[0] != 0:
            self.key_pos = np.concatenate([[0], self.key_pos]).astype(np.int64)

    def close(self):
        try:
            self.container.close()
        except Exception:
            pass


def _h264_disposable(pkts, extradata) -> np.ndarray:
    """bool per packet: its picture is not a reference (``nal_ref_idc`` of its first slice NAL unit is 0),
    so no other frame is decoded from it. AVCC packets only (an mp4's ``avcC`` extradata gives the
    NAL length size); anything else is never disposable."""
    out = np.zeros(len(pkts), bool)
    if not extradata or len(extradata) < 7 or extradata[0] != 1:
        return out
    size = (extradata[4] & 3) + 1
    for j, p in enumerate(pkts):
        d, i = bytes(p), 0
        while i + size < len(d):
            n = int.from_bytes(d[i: i + size], "big")
            nal = d[i + size]
            if nal & 0x1F in (1, 5):                     # a slice: this picture's reference flag
                out[j] = (nal >> 5) & 3 == 0
                break
            i += size + n
    return out


#: swscale flags of the YUV->RGB conversion (BT.601 as the stream says, bilinear chroma
#: upsampling at full chroma resolution). ``SWS_EXACT`` adds accurate rounding and is
#: bit-exact with DALI's CPU decoder; ``SWS_FAST`` (the default, the same path a plain
#: ``frame.to_ndarray(format="rgb24")`` takes) is ~4x cheaper and 34-42 dB PSNR from it.
if av is not None:
    _I = av.video.reformatter.Interpolation
    SWS_FAST = int(_I.BILINEAR | _I.FULL_CHR_H_INT)
    SWS_EXACT = int(_I.BILINEAR | _I.FULL_CHR_H_INT | _I.ACCURATE_RND)
else:  # pragma: no cover
    SWS_FAST = SWS_EXACT = 0


_LOCAL = threading.local()
_INHERITED = []   # reformatters made by a parent process before a fork: kept, never freed here


def _reformatter():
    """This thread's PyAV ``VideoReformatter``: its swscale context is kept between frames of the same
    size and format (``frame.to_ndarray(...)`` builds a new context for every frame: its filter
    set-up costs more than converting a 112-pixel frame). One per process too: a context made before
    a fork may hold swscale's worker threads, which the forked DataLoader worker does not have, so the
    worker makes its own and never frees the inherited one (freeing it waits for those threads
    forever)."""
    pid = os.getpid()
    if getattr(_LOCAL, "pid", None) != pid:
        if getattr(_LOCAL, "reformatter", None) is not None:
            _INHERITED.append(_LOCAL.reformatter)
        _LOCAL.reformatter, _LOCAL.pid = av.video.reformatter.VideoReformatter(), pid
    return _LOCAL.reformatter


def _rgb_planes(fr) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, G, B) [h, w] uint8 views of a ``gbrp`` frame's planes (FFmpeg's order: G, B, R); each
    view holds its plane, which holds the frame."""
    h, w = fr.height, fr.width
    g, b, r = (np.frombuffer(p, np.uint8).reshape(h, p.line_size)[:, :w] for p in fr.planes)
    return r, g, b


def decode_frames(dm: Demuxed, indices: Sequence[int], sws_flags: int = SWS_FAST, *, seek: bool = True,
                  stats: Optional[Dict[str, int]] = None, size: Optional[Tuple[int, int]] = None,
                  planar: bool = False) -> Dict[int, np.ndarray]:
    """RGB frames (uint8 HxWx3; native size, or ``size`` = (h, w) resized by swscale in the same
    conversion) for the presentation indices ``indices``; ``planar``: each frame as its (R, G, B)
    planes, [h, w] views of swscale's planar output (no interleaved copy).

    ``seek=False`` decodes from the first packet instead of the keyframe before each run of
    needed frames (the reference the seeking path is tested against). ``stats["decoded"]``
    (when given) is increased by the frames the decoder produced, used or not."""
    fmt = {"format": "gbrp" if planar else "rgb24", "interpolation": sws_flags}
    if size is not None:
        fmt.update(height=int(size[0]), width=int(size[1]))
    conv = _reformatter().reformat   # one swscale context for every frame (a frame's own makes a new one)
    rgb = (lambda fr: _rgb_planes(conv(fr, **fmt))) if planar else (lambda fr: conv(fr, **fmt).to_ndarray())
    need = sorted(set(int(i) for i in indices))
    wanted = set(need)
    if need[-1] >= dm.num_frames or need[0] < 0:
        raise BadSample(f"frame {need[-1]} requested from a video of {dm.num_frames} frames")
    got: Dict[int, np.ndarray] = {}
    pkts, ctx = dm.packets, dm.ctx
    pos = None  # next packet position to feed; None = decoder not started
    n_out = 0   # frames the decoder produced
    try:
        for target in need:
            if target in got:
                continue
            tpos = int(dm.pos_of_rank[target])
            kf = int(dm.key_pos[np.searchsorted(dm.key_pos, tpos, side="right") - 1])
            if pos is None and not seek:
                pos = 0
            elif pos is None or (seek and kf > pos):  # seek: start (again) at the keyframe
                if pos is not None:
                    ctx.flush_buffers()
                pos = kf
            # feed until the target frame comes out (B-frames delay output)
            while target not in got:
                if pos < len(pkts):
                    if seek and dm.disposable[pos] and int(dm.rank_of_pos[pos]) not in wanted:
                        pos += 1                       # a frame nothing refers to and nobody wants: not decoded
                        continue
                    frames = ctx.decode(pkts[pos])
                    pos += 1
                else:
                    frames = ctx.decode(None)
                    if not frames:
                        break
                n_out += len(frames)
                for fr in frames:
                    r = dm.rank_of_pts.get(int(fr.pts)) if fr.pts is not None else None
                    if r is not None and r in wanted and r not in got:
                        got[r] = rgb(fr)
            if target not in got:
                break
    except BadSample:
        raise
    except Exception as e:
        raise BadSample(f"decode error ({type(e).__name__}: {e})") from None
    finally:
        if stats is not None:
            stats["decoded"] = stats.get("decoded", 0) + n_out
    missing = [i for i in need if i not in got]
    if missing:
        raise BadSample(f"frames {missing[:5]} could not be decoded")
    return got


def resize_clip(clip: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """Resize uint8 [T,H,W,3] to ``hw``: linear interpolation with antialiasing (a triangle
    filter widened by the scale factor when shrinking), what DALI's
    ``fn.resize(interp_type=INTERP_LINEAR, antialias=True)`` computes. Runs on uint8
    channels-last tensors (torch's vectorised path; within 1 grey level of float32)."""
    if tuple(clip.shape[1:3]) == tuple(hw):
        return clip
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)   # NCHW view of NHWC = channels_last
    t = F.interpolate(t, size=tuple(int(v) for v in hw), mode="bilinear", antialias=True, align_corners=False)
    return t.permute(0, 2, 3, 1).contiguous().numpy()


def cut_view(frames: Dict[int, np.ndarray], plan: ViewPlan, out: Optional[np.ndarray] = None,
             planar: bool = False) -> np.ndarray:
    """One view, uint8 [T, crop, crop, 3] (``planar``: [3, T, crop, crop]): resize the decoded frames
    (unless they already have the view's size), crop, flip; written into ``out`` when given.
    ``frames``: RGB [h, w, 3] arrays, or (R, G, B) planes (:func:`decode_frames`' ``planar``)."""
    y, x = plan.crop_yx
    c, T = plan.crop, len(plan.indices)
    if out is None:
        out = np.empty((3, T, c, c) if planar else (T, c, c, 3), np.uint8)
    first = frames[int(plan.indices[0])]
    if isinstance(first, tuple):                        # planes, already at the view's size
        for t, i in enumerate(plan.indices):
            for ch, plane in enumerate(frames[int(i)]):
                win = plane[y: y + c, x: x + c]
                win = win[:, ::-1] if plan.flip else win
                if planar:
                    out[ch, t] = win
                else:
                    out[t, :, :, ch] = win
        return out
    if tuple(first.shape[:2]) == tuple(plan.resize_hw):
        clip = np.stack([frames[int(i)][y: y + c, x: x + c] for i in plan.indices])
    else:
        clip = resize_clip(np.stack([frames[int(i)] for i in plan.indices]), plan.resize_hw)[:, y: y + c, x: x + c]
    clip = clip[:, :, ::-1] if plan.flip else clip
    out[:] = clip.transpose(3, 0, 1, 2) if planar else clip
    return out


def is_constant(clip: np.ndarray, planar: bool = False) -> bool:
    """True when every pixel of the clip has the same colour (black frames from a broken decode);
    ``clip`` [T, h, w, 3], or [3, T, h, w] when ``planar``."""
    if planar:
        return all(_flat_is_constant(ch.reshape(-1)) for ch in clip)
    flat = clip.reshape(-1, clip.shape[-1])
    if not (np.array_equal(flat[0], flat[len(flat) // 2]) and np.array_equal(flat[0], flat[-1])):
        return False   # the usual case, decided in O(1)
    rows = clip.reshape(-1, clip.shape[-2] * clip.shape[-1])   # rows of pixels: contiguous compares
    return bool((rows == rows[0]).all() and (flat[: clip.shape[-2]] == flat[0]).all())


def _flat_is_constant(v: np.ndarray) -> bool:
    if not (v[0] == v[len(v) // 2] == v[-1]):
        return False   # the usual case, decided in O(1)
    return bool((v == v[0]).all())


def decode_clip(data: bytes, plans: Sequence[ViewPlan], expect_frames: Optional[int] = None, threads: int = 1,
                exact_color: bool = False, stats: Optional[Dict[str, int]] = None,
                out: Optional[np.ndarray] = None, planar: bool = False) -> np.ndarray:
    """uint8 [V, T, crop, crop, 3] (``planar``: [V, 3, T, crop, crop]) for the views ``plans`` of one
    encoded video, written into ``out`` when given (``stats["decoded"]``: frames decoded, see
    :func:`decode_frames`). The frames are resized by swscale as they are converted when every view
    wants the same size (the usual case), except with ``exact_color``."""
    dm = Demuxed(data, expect_frames, threads)
    sizes = {tuple(p.resize_hw) for p in plans}
    size = sizes.pop() if len(sizes) == 1 and not exact_color else None
    try:
        frames = decode_frames(dm, [int(i) for p in plans for i in p.indices], SWS_EXACT if exact_color else SWS_FAST,
                               stats=stats, size=size, planar=size is not None)
        if out is None:
            T, c = len(plans[0].indices), plans[0].crop
            out = np.empty((len(plans),) + ((3, T, c, c) if planar else (T, c, c, 3)), np.uint8)
        for v, p in enumerate(plans):
            cut_view(frames, p, out[v], planar)
    finally:
        dm.close()
    for v in out:
        if is_constant(v, planar):
            raise BadSample("decoded clip is constant (all frames one colour, e.g. black): broken video")
    return out


def check_mp4_boxes(data: bytes) -> None:
    """Cheap structural check of an mp4 (microseconds, no libav): the top-level boxes must
    tile the file exactly and include ``moov`` and ``mdat``. Catches truncated files (the
    last box runs past the end), cut-off headers and non-mp4 bytes; a corrupt bitstream
    inside ``mdat`` is caught by the decoder instead."""
    n, pos, seen = len(data), 0, set()
    while pos < n:
        if pos + 8 > n:
            raise BadSample(f"the mp4 is truncated: {n - pos} stray bytes after the last box")
        size = int.from_bytes(data[pos: pos + 4], "big")
        kind = data[pos + 4: pos + 8]
        hdr = 8
        if size == 1:
            if pos + 16 > n:
                raise BadSample("the mp4 is truncated inside a box header")
            size, hdr = int.from_bytes(data[pos + 8: pos + 16], "big"), 16
        elif size == 0:
            size = n - pos
        if size < hdr or not kind.isascii() or not kind.decode("ascii", "replace").isprintable():
            raise BadSample(f"not an mp4: bad box header at byte {pos}")
        if pos + size > n:
            raise BadSample(f"the mp4 is truncated: box {kind.decode('ascii', 'replace')!r} needs {pos + size} bytes, "
                            f"the member has {n}")
        seen.add(kind)
        pos += size
    missing = [k.decode() for k in (b"moov", b"mdat") if k not in seen]
    if missing:
        raise BadSample(f"the mp4 lacks its {'/'.join(missing)} box")


# --------------------------------------------------------------------------- video files
class VideoFile:
    """The first video stream of a file on disk, probed without decoding: the presentation
    timestamps of its frames (``pts``, sorted), those of its keyframes (``key_pts``) and the
    frame size. The demux pass reads every packet and drops it at once, so what is kept grows
    by 16 bytes per frame at most (~0.3 MB for 10 minutes at 30 fps), never by frame data."""

    def __init__(self, path: str):
        if av is None:
            raise ImportError("PyAV is required: pip install av")
        self.path = path
        try:
            self.container = av.open(path, mode="r")
        except Exception as e:
            raise ValueError(f"{path}: cannot be decoded as a video ({_first_line(e)})") from None
        try:
            vs = [st for st in self.container.streams if st.type == "video"]
            if not vs:
                raise ValueError(f"{path}: no video stream")
            self.stream = vs[0]
            self.stream.codec_context.thread_count = 1
            pts, keys = [], []
            for p in self.container.demux(self.stream):
                if p.size == 0 or p.pts is None:
                    continue
                pts.append(int(p.pts))
                if p.is_keyframe:
                    keys.append(int(p.pts))
        except ValueError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise ValueError(f"{path}: cannot be decoded as a video ({_first_line(e)})") from None
        if not pts:
            self.close()
            raise ValueError(f"{path}: no video frames decode")
        self.pts = np.sort(np.asarray(pts, dtype=np.int64))
        self.key_pts = np.sort(np.asarray(keys or [int(self.pts[0])], dtype=np.int64))
        self.num_frames = len(self.pts)
        self.width, self.height = int(self.stream.codec_context.width), int(self.stream.codec_context.height)

    def _from_keyframe(self, pts: int):
        """Decoded frames from the keyframe at or before ``pts`` (a seek; the decoder is flushed)."""
        self.container.seek(int(pts), stream=self.stream, backward=True, any_frame=False)
        for packet in self.container.demux(self.stream):
            yield from packet.decode()

    def decode(self, ranks: Sequence[int], on_frame) -> int:
        """Decode the frames of presentation ranks ``ranks``; ``on_frame(rank, rgb)`` gets each
        one (uint8 HxWx3) as it comes out, and nothing is kept here. Before each needed frame
        the reader seeks to the keyframe at or before it, unless the decoder already is between
        that keyframe and the frame. Returns the number of frames decoded."""
        want = {int(self.pts[r]): int(r) for r in sorted(set(int(r) for r in ranks))}
        frames, last, done, n = None, None, set(), 0
        try:
            for t in sorted(want):
                kf = int(self.key_pts[max(0, np.searchsorted(self.key_pts, t, side="right") - 1)])
                if frames is None or last is None or kf > last:
                    frames = self._from_keyframe(kf)
                for fr in frames:
                    n += 1
                    if fr.pts is None:
                        continue
                    last = int(fr.pts)
                    if last in want and last not in done:
                        on_frame(want[last], fr.to_ndarray(format="rgb24"))
                        done.add(last)
                    if last >= t:
                        break
        except Exception as e:
            raise ValueError(f"{self.path}: cannot be decoded as a video ({_first_line(e)})") from None
        missing = [r for t, r in sorted(want.items()) if t not in done]
        if missing:
            raise ValueError(f"{self.path}: frames {missing[:5]} could not be decoded")
        return n

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:
            pass


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_file_view(path: str, plan_for) -> Tuple[np.ndarray, ViewPlan, Tuple[int, int]]:
    """``(uint8 [T, crop, crop, 3], plan, (H, W))``: the view ``plan_for(frames, H, W)`` of the
    video file ``path``, decoding only the frames the plan picks (:class:`VideoFile`), each
    resized and cropped as soon as it is decoded. Peak memory: one native frame, the T frames of
    the view and the decoder's own few reference frames; it does not grow with the video's
    length (bytes of the file are never read into memory at once)."""
    vf = VideoFile(path)
    try:
        plan = plan_for(vf.num_frames, vf.height, vf.width)
        y, x = plan.crop_yx
        c = plan.crop
        out = np.empty((len(plan.indices), c, c, 3), np.uint8)
        where: Dict[int, List[int]] = {}
        for t, i in enumerate(plan.indices):
            where.setdefault(int(i), []).append(t)

        def put(rank: int, rgb: np.ndarray) -> None:
            small = resize_clip(rgb[None], plan.resize_hw)[0, y: y + c, x: x + c]
            for t in where[rank]:
                out[t] = small

        vf.decode(list(where), put)
    finally:
        vf.close()
    if plan.flip:
        out = np.ascontiguousarray(out[:, :, ::-1])
    return out, plan, (vf.height, vf.width)


# --------------------------------------------------------------------------- audio
def decode_audio(data: bytes, sample_rate: int = S.AUDIO_SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform at ``sample_rate`` from a .flac/.wav member."""
    try:
        with av.open(io.BytesIO(data), mode="r") as c:
            st = c.streams.audio[0]
            rs = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            parts = []
            for fr in c.decode(st):
                for o in rs.resample(fr):
                    parts.append(o.to_ndarray().reshape(-1))
            for o in rs.resample(None):
                parts.append(o.to_ndarray().reshape(-1))
    except Exception as e:
        raise BadSample(f"audio member does not decode ({type(e).__name__}: {e})") from None
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


# --------------------------------------------------------------------------- batches
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(u8):
    """uint8 [N,T,H,W,3] -> float32 [N,3,T,H,W] = (x - 255*mean) / (255*std), per channel.
    One strided copy into a contiguous float tensor, then in-place arithmetic (~5x faster
    than ``permute().float()`` followed by out-of-place ops)."""
    import torch

    n, t, h, w, c = u8.shape
    out = torch.empty((n, c, t, h, w), dtype=torch.float32, device=u8.device)
    out.copy_(u8.permute(0, 4, 1, 2, 3))
    mean = torch.tensor(IMAGENET_MEAN, device=u8.device).view(1, 3, 1, 1, 1) * 255
    inv = 1.0 / (torch.tensor(IMAGENET_STD, device=u8.device).view(1, 3, 1, 1, 1) * 255)
    return out.sub_(mean).mul_(inv)

def normalise_planar(u8):
    """uint8 [N,3,T,H,W] -> float32, ``(x - 255*mean) / (255*std)`` per channel: one contiguous
    conversion, then in-place arithmetic (~3x faster than :func:`normalise`'s transposing copy)."""
    import torch

    out = u8.to(torch.float32)
    mean = torch.tensor(IMAGENET_MEAN, device=u8.device).view(1, 3, 1, 1, 1) * 255
    inv = 1.0 / (torch.tensor(IMAGENET_STD, device=u8.device).view(1, 3, 1, 1, 1) * 255)
    return out.sub_(mean).mul_(inv)


class BatchSource:
    """``(epoch, batch) -> dict`` for one rank; picklable, used in DataLoader workers."""

    def __init__(self, table: SampleTable, plans_fn, num_classes: int, spec: ClipSpec, *, train: bool, seed: int,
                 views, with_audio: bool, audio_samples: int, decode: bool, threads: int = 1, exact_color: bool = False,
                 check: str = "boxes", normalise_in_worker: bool = True, video: bool = True,
                 audio_whole: bool = False):
        self.table = table
        self.reader = MemberReader(table)
        self.plans_fn = plans_fn          # epoch -> list of arrays of global sample indices
        self.num_classes = num_classes
        self.spec = spec
        self.train = train
        self.seed = seed
        self.views = views
        self.with_audio = with_audio
        self.audio_samples = int(audio_samples)
        self.decode = decode
        self.threads = threads
        self.exact_color = exact_color
        self.check = check          # DALI inputs: "boxes" (mp4 structure) or "demux" (also PyAV demux)
        self.normalise = normalise_in_worker   # float output made here (CPU training) or uint8 (GPU: normalised there)
        self.video = bool(video)    # False: an audio-only model; the video member is neither read nor decoded
        self.audio_whole = bool(audio_whole) or not self.video   # every view hears the whole clip (SoundNet)
        self._plan_epoch = None
        self._plan = None

    def batches(self, epoch: int):
        if self._plan_epoch != epoch:
            self._plan, self._plan_epoch = self.plans_fn(epoch), epoch
        return self._plan

    def __len__(self):
        return len(self.batches(0))

    def load_sample(self, gi: int, epoch: int):
        ref = self.table.samples[gi]
        where = f"{self.table.shards[ref.shard]}:{ref.key}"
        meta = S.parse_sample_meta(self.reader.read(ref, S.META_EXT) or b"", where)
        digests = verify.sample_digests(self.table.verify, meta, ref, where)   # before any decoding
        ids_b = self.reader.read(ref, S.LABEL_EXT)
        verify.check_member(digests, S.LABEL_EXT, ids_b, where)
        ids = verify.label_ids(meta, ids_b, where)
        meta["_digests"] = digests
        if ids.size and (ids.max() >= self.num_classes or ids.min() < 0):
            raise BadSample(f"label ids {ids.tolist()} out of range for {self.num_classes} classes")
        nf, h, w, fps = int(meta.get("frames") or 0), int(meta.get("height") or 0), int(meta.get("width") or 0), float(meta.get("fps") or 0)
        mp4 = self.reader.read(ref, S.VIDEO_EXT) if self.video else None
        verify.check_member(digests, S.VIDEO_EXT, mp4, where)
        if not (nf > 0 and h > 0 and w > 0 and fps > 0):
            raise BadSample(f"metadata lacks frames/width/height/fps ({ {k: meta.get(k) for k in ('frames', 'width', 'height', 'fps')} })")
        plans = plan_views(nf, h, w, fps, self.spec, train=self.train, seed=self.seed, epoch=epoch, sample=gi, views=self.views,
                           audio_whole=self.audio_whole)
        return ref, meta, ids, mp4, plans, fps

    def __getitem__(self, item):
        epoch, b = item
        idx = self.batches(epoch)[b]
        raw, keys, where, ids_list, audio, has_audio, skipped = [], [], [], [], [], [], []
        clips = _ClipSlots(len(idx), self.spec)
        stats = {"decoded": 0}
        exts = ((S.VIDEO_EXT,) if self.video else ()) + (S.META_EXT, S.LABEL_EXT) + (S.AUDIO_EXTS if self.with_audio else ())
        io_mark = self.reader.prefetch([self.table.samples[int(gi)] for gi in idx], exts)   # shards at a URL: read ahead
        for gi in idx:
            gi = int(gi)
            ref = self.table.samples[gi]
            decoded = False
            try:
                ref, meta, ids, mp4, plans, fps = self.load_sample(gi, epoch)
                nf = int(meta["frames"])
                if not self.video:
                    pass   # audio-only model: no video member read, no frame decoded
                elif self.decode:
                    decode_clip(mp4, plans, nf, self.threads, self.exact_color, stats, out=clips.slot(plans),
                                planar=True)
                    decoded = True
                else:
                    # DALI cannot skip a broken video: check the container before it gets one.
                    check_mp4_boxes(mp4)
                    if self.check == "demux":
                        dm = Demuxed(mp4, nf)
                        dm.close()
                    import torch  # a tensor travels from the worker through shared memory

                    raw.append((torch.frombuffer(bytearray(mp4), dtype=torch.uint8), plans))
                wave = None
                if self.with_audio:
                    ab = None
                    for ext in S.AUDIO_EXTS:
                        ab = self.reader.read(ref, ext)
                        if ab is not None:
                            verify.check_member(meta["_digests"], ext, ab, f"{self.table.shards[ref.shard]}:{ref.key}")
                            break
                    if ab is not None:
                        wave = decode_audio(ab)
                    audio.append(np.stack([audio_window(wave, p.audio_start, self.audio_samples, S.AUDIO_SAMPLE_RATE) for p in plans]))
                    has_audio.append(wave is not None and len(wave) > 0)
                else:
                    has_audio.append(any(ext in ref.members for ext in S.AUDIO_EXTS))
            except (BadSample, S.ShardFormatError) as e:
                skipped.append((self.table.shards[ref.shard], ref.key, str(e)))
                if raw and len(raw) > len(keys):
                    raw.pop()
                continue
            if decoded:
                clips.commit()   # a sample that failed later (its audio) leaves its slot to the next one
            keys.append(ref.key)
            where.append(self.table.shards[ref.shard])
            ids_list.append(ids)
        targets = np.zeros((len(keys), self.num_classes), np.float32)
        for i, ids in enumerate(ids_list):
            targets[i, ids] = 1.0
        out = {
            "planned": len(idx),
            "keys": keys,
            "shards": where,
            "ids": [i.astype(np.int32) for i in ids_list],
            "targets": targets,
            "has_audio": np.asarray(has_audio, dtype=bool),
            "audio": (np.concatenate(audio)[:, None, :] if audio else np.zeros((0, 1, self.audio_samples), np.float32)) if self.with_audio else None,
            "skipped": skipped,
            "decoded": stats["decoded"],
            "io": self.reader.io_since(io_mark),
        }
        if self.decode or not self.video:
            out["video"] = self._pixels(clips, len(keys))
        else:
            out["raw"] = raw
        return out

    def _pixels(self, clips: "_ClipSlots", n: int):
        """The batch's video tensor (a tensor travels from the worker through shared memory):
        the decoded views, float32 [n*V, 3, T, c, c] normalised here, or uint8 [n*V, T, c, c, 3]
        (a view of the planar buffer, normalised on the GPU); ``[n*V, 0 frames, c, c, 3]`` for an
        audio-only model (the batch layout without pixels)."""
        import torch

        c = self.spec.crop
        if not self.video:
            u8 = torch.zeros((n * int(np.prod(view_grid(self.views))), 0, c, c, 3), dtype=torch.uint8)
            return normalise(u8) if self.normalise else u8
        planar = torch.from_numpy(clips.filled())                         # [n*V, 3, T, c, c]
        return normalise_planar(planar) if self.normalise else planar.permute(0, 2, 3, 4, 1)


class _ClipSlots:
    """One batch's uint8 video buffer, planar ``[samples * V, 3, T, crop, crop]``: each decoded
    sample's views are written straight into the next free slot (no per-clip arrays to
    concatenate, and the layout the model takes, so normalising is one contiguous pass)."""

    def __init__(self, planned: int, spec: ClipSpec):
        self.planned, self.spec = planned, spec
        self.buf: Optional[np.ndarray] = None
        self.n = self.V = 0

    def slot(self, plans) -> np.ndarray:
        if self.buf is None:
            self.V = len(plans)
            c = self.spec.crop
            self.buf = np.empty((self.planned * self.V, 3, len(plans[0].indices), c, c), np.uint8)
        return self.buf[self.n * self.V:(self.n + 1) * self.V]

    def commit(self) -> None:
        self.n += 1

    def filled(self) -> np.ndarray:
        if self.buf is None:
            c = self.spec.crop
            return np.zeros((0, 3, self.spec.frames, c, c), np.uint8)
        return self.buf[: self.n * self.V]
