"""Packing presets: store the frames a model samples, and no others.

A loader can only be as fast as the frames it decodes. The paper's I3D takes 16 frames spread
uniformly over each 3-second clip and TSM one frame from each of 8 segments, yet a clip packed
at 25 fps holds 75 frames, most of which a decoder must still decode to reach the 16 it keeps
(an inter-coded frame needs every frame back to its keyframe). A preset packs each clip at the
rate its model samples, with one keyframe per clip, so that every decoded frame is used:

* ``full``: 25 fps (``25 * seconds`` frames per clip), a keyframe every 12 frames (0.5 s);
  serves every clip shape (consecutive clips at any stride).
* ``paper-i3d``: 16 frames per clip (16/3 fps for 3 s clips), one keyframe per clip; serves
  the paper's I3D, ``ClipSpec("uniform", frames=16)``.
* ``tsm8``: 8 frames per clip (8/3 fps for 3 s clips), one keyframe per clip; serves TSM,
  ``ClipSpec("segments", frames=8)`` or ``ClipSpec("uniform", frames=8)``.
* ``paper-i3d-128``, ``tsm8-128``: the same, packed at short side 128 -- the size a 112-pixel
  crop is resized to (``ClipSpec(crop=112)``: ``resize`` 128). Decoding a 256-pixel clip to keep
  a 112-pixel crop decodes ~4x the pixels the model sees; at 128 the loader's resize is a no-op.
  A clip spec that resizes to more than the packed short side gets a one-time warning from the
  loader (its frames would be upscaled).

* ``full-bframes`` (H.264 only): ``full`` with 3 non-reference B-frames between reference frames
  (x264 ``bframes=3``, ``b-pyramid=none``): every clip shape still reads it, and a loader that
  knows which frames nothing refers to (``mmit_fast.data``'s PyAV path) skips the unneeded ones,
  about 3 of 4 frames between two reference frames, while a plain decode loop decodes them all.

A preset with a short side fixes it as it fixes the frame rate: an explicit different
``--short-side`` is an error; the others pack at ``--short-side`` (default 256).

A frames-per-clip preset's rate is ``frames / seconds`` (``--seconds``, 3 by default; the
synthetic set's 2 s clips get 8 and 4 fps). ffmpeg's ``fps`` filter (``round=near``) keeps,
for output frame ``n``, the last source frame before ``(n + 1/2) * seconds / frames``: the
middle of the ``n``-th of ``frames`` equal steps, the instant ``ClipSpec("uniform", frames)``
(and ``"segments"``) asks for in evaluation (:mod:`mmit_fast.data.sampling`). So a config
evaluated on ``full`` shards sees the same instants on matched shards (tested within one
source frame).
What a matched shard gives up: temporal jitter in training (it holds only the instants it
serves) and every other clip shape (the loader warns once when a clip spec needs frames the
shards do not have). The preset's name goes into ``manifest.video["preset"]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

FULL_FPS = 25.0


@dataclass(frozen=True)
class Preset:
    name: str
    frames_per_clip: Optional[int]   # None: a fixed rate (``fps``)
    fps: Optional[float] = None
    gop: Optional[int] = None        # None: the encoder default (fps/2); frames-per-clip presets: one per clip
    serves: str = ""
    short_side: Optional[int] = None  # None: --short-side (default 256)
    bframes: int = 0                  # H.264 non-reference B-frames between references (0: none)

    def settings(self, seconds: float) -> Tuple[float, Optional[int]]:
        """(fps, gop) of clips of ``seconds`` seconds."""
        if self.frames_per_clip is None:
            return float(self.fps), self.gop
        if not seconds > 0:
            raise ValueError(f"preset {self.name!r} needs the clip length in seconds > 0, got {seconds}")
        return self.frames_per_clip / float(seconds), int(self.gop or self.frames_per_clip)


PRESETS: Dict[str, Preset] = {
    "full": Preset("full", None, fps=FULL_FPS, serves="every clip shape (25 fps, keyframe every 0.5 s)"),
    "paper-i3d": Preset("paper-i3d", 16, serves="I3D: ClipSpec('uniform', frames=16), 16 frames over the clip"),
    "tsm8": Preset("tsm8", 8, serves="TSM: ClipSpec('segments' or 'uniform', frames=8), one frame per segment"),
    "full-bframes": Preset("full-bframes", None, fps=FULL_FPS, bframes=3,
                           serves="every clip shape (25 fps, keyframe every 0.5 s); H.264 with non-reference B-frames"),
    "paper-i3d-128": Preset("paper-i3d-128", 16, short_side=128,
                            serves="I3D at 112-px crops: ClipSpec('uniform', frames=16, crop=112), short side 128"),
    "tsm8-128": Preset("tsm8-128", 8, short_side=128,
                       serves="TSM at 112-px crops: ClipSpec('segments', frames=8, crop=112), short side 128"),
}
DEFAULT_SHORT_SIDE = 256
NAMES = tuple(PRESETS)


def resolve(preset: Optional[str], seconds: float, fps: Optional[float] = None,
            gop: Optional[int] = None) -> Tuple[float, Optional[int], Optional[str]]:
    """``(fps, gop, preset name)`` to encode with.

    No preset: ``fps`` (default 25) and ``gop`` as given; the name is ``"full"`` when that is
    what they amount to, else None (custom). A preset fixes both: an explicit ``fps``/``gop``
    that differs from the preset's is an error (one line naming both)."""
    if preset is None:
        f = FULL_FPS if fps is None else float(fps)
        name = "full" if f == FULL_FPS and gop in (None, int(round(FULL_FPS / 2))) else None
        return f, gop, name
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(NAMES)}")
    pf, pg = PRESETS[preset].settings(seconds)
    if fps is not None and abs(float(fps) - pf) > 1e-6:
        raise ValueError(f"preset {preset!r} packs at {pf:.6g} fps for {seconds:g} s clips; "
                         f"drop --fps {fps:g} or the preset")
    if gop is not None and pg is not None and int(gop) != pg:
        raise ValueError(f"preset {preset!r} puts a keyframe every {pg} frames; drop --gop {gop} or the preset")
    return pf, pg, preset


def resolve_short_side(preset: Optional[str], short_side: Optional[int] = None) -> int:
    """The short side to pack at: the preset's (an explicit different ``short_side`` is an error,
    one line naming both), else ``short_side``, else 256."""
    own = PRESETS[preset].short_side if preset in PRESETS else None
    if own is not None and short_side is not None and int(short_side) != own:
        raise ValueError(f"preset {preset!r} packs at short side {own}; drop --short-side {short_side} or the preset")
    return int(own or short_side or DEFAULT_SHORT_SIDE)


def resolve_bframes(preset: Optional[str], codec: str) -> int:
    """Non-reference B-frames between reference frames for ``preset`` (0 without one); a preset with
    B-frames and a codec other than H.264 is an error (one line)."""
    n = PRESETS[preset].bframes if preset in PRESETS else 0
    if n and codec != "h264":
        raise ValueError(f"preset {preset!r} packs H.264 B-frames; use --codec h264 or another preset")
    return n
