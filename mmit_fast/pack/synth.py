"""Multi-Moving-Shapes: short videos in which several actors perform different actions at
once, with the ground truth of every pixel — a multi-label dataset whose answers are known.

Each video shows 1-4 actions on a textured background. A *visual* action is performed by
one actor (a shape of some object kind, colour and texture); an *auditory* action is only in
the audio track (tones and rhythms). Several visual pairs differ only over time (left vs
right, grow vs shrink, fade in vs out, clockwise vs counter-clockwise, falling vs moving
down), so a single frame cannot tell them apart.

Sampling (deterministic from ``seed``; video ``i`` uses ``numpy.random.default_rng([seed, i])``,
so the result does not depend on the number of workers):

* number of actions ``k ~ action_count_probs`` (default P(1..4) = .35, .35, .2, .1);
* the ``k`` classes are drawn without replacement with probabilities ``p_c ∝ (rank_c + 1)^-tail``
  (Zipf; ``rank`` is a seeded permutation of the classes, ``tail=0`` is uniform), a long tail
  as in M-MiT;
* label dropout: each present action is left unlabelled with probability ``label_dropout``
  (at least one label is kept), like M-MiT's unverified labels; the ground truth keeps all;
* audio: videos with an auditory action always have audio (mix of the tones plus faint
  noise); the others have faint noise, or no audio at all with probability ``no_audio_prob``.

Ground truth (``<key>.gt.npz``, at the packed resolution, per frame):

* ``actor_map`` uint8 ``[T,H,W]``: 0 background, ``a+1`` where actor ``a`` is visible (top-most);
* ``boxes`` float32 ``[A,T,4]``: (x0, y0, x1, y1) of each actor's whole shape (the action
  region, occlusion ignored), ``visible`` bool ``[A,T]``;
* ``actor_action`` int16 ``[A]`` (class id; -1 for a static distractor), ``actor_object`` and
  ``actor_texture`` int16 ``[A]``, ``actor_color`` int16 ``[A,T]`` (colour can change);
* ``scene`` (background kind), ``present`` (all actions), ``labels`` (after dropout),
  ``audio_actions``; and the name lists ``classes``, ``objects``, ``colors``, ``textures``, ``scenes``.

These give the concept masks of Network Dissection (object, colour, texture per pixel; scene
per image; action regions as boxes): :func:`export_broden` writes them in the Broden layout.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .. import shards as S
from .. import storage
from .layout import ANYWHERE_FALL, ANYWHERE_MOTION, ANYWHERE_SCALE, LAYOUTS, centre_positions, extents_of, \
    place_anywhere, place_close, tracks_of
from .packer import Job, write_split
from .transcode import AUDIO_RATE, EncodeSpec, encode_arrays
from .writer import Sample, make_sample

VISUAL_ACTIONS = (
    "moving_left", "moving_right", "moving_up", "moving_down",
    "rotating_clockwise", "rotating_counterclockwise", "growing", "shrinking",
    "blinking", "bouncing", "orbiting", "shaking", "falling", "pulsing",
    "fading_in", "fading_out", "color_changing", "zigzagging", "stretching", "swinging",
)
AUDIO_ACTIONS = ("beeping", "drumming", "humming", "whistling")
CLASSES = VISUAL_ACTIONS + AUDIO_ACTIONS

OBJECTS = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS = {
    "red": (235, 45, 45), "green": (40, 210, 70), "blue": (60, 110, 255), "yellow": (245, 225, 40),
    "magenta": (225, 60, 225), "cyan": (40, 225, 235), "white": (248, 248, 248), "orange": (255, 145, 20),
}
COLOR_NAMES = tuple(COLORS)
COLOR_RGB = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)
TEXTURES = ("solid", "striped", "checkered", "dotted")
SCENES = ("plain", "noise", "grid", "waves")


@dataclass
class SynthConfig:
    """Parameters of a Multi-Moving-Shapes dataset (saved in ``manifest.source``)."""

    num_videos: int = 600
    seed: int = 0
    size: int = 112                     # frame side (square frames, even)
    fps: float = 25.0
    seconds: float = 2.0
    splits: Tuple[float, float, float] = (0.8, 0.1, 0.1)   # train / val / test fractions
    action_count_probs: Tuple[float, ...] = (0.35, 0.35, 0.2, 0.1)  # P(1 action), P(2), ...
    tail: float = 0.8                   # Zipf exponent of class frequencies (0 = uniform)
    label_dropout: float = 0.0          # probability that a present action is left unlabelled
    no_audio_prob: float = 0.3          # P(no audio track) for videos without an auditory action
    distractors: int = 0                # max static actors without an action per video
    actor_scale: float = 0.13           # actor radius as a fraction of the frame side (centre layout)
    layout: str = "centre"              # where actors stand: "centre", "anywhere" or "close" (pack/layout.py)

    def __post_init__(self):
        if self.num_videos < 1:
            raise ValueError("num_videos must be >= 1")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"size must be an even number >= 32, got {self.size}")
        if len(self.splits) != 3 or any(f < 0 for f in self.splits) or sum(self.splits) <= 0:
            raise ValueError(f"splits must be three non-negative fractions, got {self.splits}")
        p = np.asarray(self.action_count_probs, dtype=float)
        if p.ndim != 1 or p.size < 1 or p.size > 4 or (p < 0).any() or p.sum() <= 0:
            raise ValueError("action_count_probs: 1 to 4 non-negative weights (for 1..4 actions)")
        if not 0 <= self.label_dropout < 1:
            raise ValueError("label_dropout must be in [0, 1)")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    @property
    def frames(self) -> int:
        return max(2, int(round(self.seconds * self.fps)))

    def class_probs(self) -> np.ndarray:
        """Sampling probability of each class: ``∝ (rank + 1)^-tail`` with a seeded rank."""
        rank = np.random.default_rng([self.seed, 7919]).permutation(len(CLASSES))
        w = (rank + 1.0) ** (-self.tail)
        return w / w.sum()

    def split_counts(self) -> Dict[str, int]:
        f = np.asarray(self.splits, dtype=float) / sum(self.splits)
        n = np.floor(f * self.num_videos).astype(int)
        n[0] += self.num_videos - n.sum()
        return dict(zip(S.SPLITS, n.tolist()))


# --------------------------------------------------------------------------- sampling a video
@dataclass
class Actor:
    action: int                      # class id, -1 for a static distractor
    obj: int
    color: int
    texture: int
    cx: float
    cy: float
    radius: float
    params: Dict = field(default_factory=dict)


def _make_actor(cfg: SynthConfig, rng: np.random.Generator, action: int, color: int, cx: float, cy: float,
                scale: float, extra: Dict) -> Actor:
    """One actor's appearance and motion parameters (the draws in a fixed order)."""
    name = VISUAL_ACTIONS[action] if action >= 0 else "static"
    objs = [o for o in range(len(OBJECTS)) if not (name.startswith("rotating") and OBJECTS[o] == "circle")]
    return Actor(action=action, obj=int(rng.choice(objs)), color=int(color),
                 texture=int(rng.integers(len(TEXTURES))), cx=cx, cy=cy,
                 radius=scale * cfg.size * rng.uniform(0.85, 1.15),
                 params={"phase": float(rng.uniform(0, 2 * math.pi)), "theta0": float(rng.uniform(0, 2 * math.pi)),
                         "dir": int(rng.choice([-1, 1])), "jitter": rng.normal(0, 1, size=(cfg.frames, 2)).tolist(),
                         "palette": [int(x) for x in rng.permutation(len(COLOR_NAMES))], **extra})


def _place_actors(cfg: SynthConfig, rng: np.random.Generator, actions: List[int]) -> List[Actor]:
    """The actors of one video, placed by the configured layout (:mod:`.layout`)."""
    if cfg.layout == "centre":
        centres = centre_positions(rng, len(actions), cfg.size)
        colors = list(rng.permutation(len(COLOR_NAMES)))
        return [_make_actor(cfg, rng, a, colors[j % len(colors)], centres[j][0], centres[j][1], cfg.actor_scale, {})
                for j, a in enumerate(actions)]
    colors = list(rng.permutation(len(COLOR_NAMES)))
    extra = {"amp": ANYWHERE_MOTION, "fall": ANYWHERE_FALL * cfg.size}
    actors = [_make_actor(cfg, rng, a, colors[j % len(colors)], 0.0, 0.0, ANYWHERE_SCALE, extra)
              for j, a in enumerate(actions)]
    def states(j):
        return [(st[0], st[1], st[3], st[4]) for st in (_state(actors[j], t, cfg) for t in range(cfg.frames))]

    radii = [a.radius for a in actors]
    if cfg.layout == "close":
        centres = place_close(rng, tracks_of(states, radii), cfg.size)
    else:
        centres = place_anywhere(rng, extents_of(states, radii), cfg.size)
    for act, (cx, cy) in zip(actors, centres):
        act.cx, act.cy = cx, cy
    return actors


def _sample_video(cfg: SynthConfig, index: int):
    rng = np.random.default_rng([cfg.seed, index])
    probs = cfg.class_probs()
    cp = np.asarray(cfg.action_count_probs, dtype=float)
    k = int(rng.choice(np.arange(1, cp.size + 1), p=cp / cp.sum()))
    present = sorted(int(c) for c in rng.choice(len(CLASSES), size=k, replace=False, p=probs))
    visual = [c for c in present if c < len(VISUAL_ACTIONS)]
    audio_actions = [c for c in present if c >= len(VISUAL_ACTIONS)]
    n_distract = int(rng.integers(0, cfg.distractors + 1)) if cfg.distractors else 0
    actors = _place_actors(cfg, rng, visual + [-1] * n_distract)
    scene = int(rng.integers(len(SCENES)))
    bg_seed = int(rng.integers(2 ** 31))
    labels = [c for c in present if rng.uniform() >= cfg.label_dropout]
    if not labels:
        labels = [present[int(rng.integers(len(present)))]]
    has_audio = bool(audio_actions) or rng.uniform() >= cfg.no_audio_prob
    audio_seed = int(rng.integers(2 ** 31))
    return dict(present=present, labels=labels, actors=actors, audio_actions=audio_actions, scene=scene,
                bg_seed=bg_seed, has_audio=has_audio, audio_seed=audio_seed)


def sample_labels(cfg: SynthConfig, index: int) -> Tuple[List[int], List[int]]:
    """``(present, labels)`` of video ``index`` -- the class ids it shows and those left labelled
    after ``label_dropout`` -- without rendering it (the same draws as :func:`render_video`)."""
    s = _sample_video(cfg, index)
    return s["present"], s["labels"]


# --------------------------------------------------------------------------- motion
def _state(actor: Actor, t: int, cfg: SynthConfig):
    """``(x, y, angle, sx, sy, alpha, on, color)`` of an actor at frame ``t``.

    ``angle`` is clockwise on screen (image y points down); ``u = t / (T-1)`` runs 0 -> 1 over
    the clip, ``tau = t / fps`` is time in seconds."""
    T, S_ = cfg.frames, cfg.size
    u = t / (T - 1)
    tau = t / cfg.fps
    p = actor.params
    x, y = actor.cx, actor.cy
    ang, sx, sy, alpha, on, color = p["theta0"], 1.0, 1.0, 1.0, True, actor.color
    amp = p.get("amp", 1.0)      # motion amplitude (the anywhere layout: 0.6)
    D = 0.4 * S_ * amp
    name = VISUAL_ACTIONS[actor.action] if actor.action >= 0 else "static"
    if name == "moving_left":
        x = actor.cx + D * (0.5 - u)
    elif name == "moving_right":
        x = actor.cx - D * (0.5 - u)
    elif name == "moving_up":
        y = actor.cy + D * (0.5 - u)
    elif name == "moving_down":
        y = actor.cy - D * (0.5 - u)
    elif name == "rotating_clockwise":
        ang = p["theta0"] + 2 * math.pi * 0.5 * tau
    elif name == "rotating_counterclockwise":
        ang = p["theta0"] - 2 * math.pi * 0.5 * tau
    elif name == "growing":
        sx = sy = 0.5 + 1.0 * u
    elif name == "shrinking":
        sx = sy = 1.5 - 1.0 * u
    elif name == "blinking":
        on = int(tau * 6.0 + p["phase"]) % 2 == 0
    elif name == "bouncing":
        H = 0.35 * S_ * amp
        y = actor.cy + H / 2 - H * abs(math.sin(math.pi * 1.25 * tau + p["phase"]))
    elif name == "orbiting":
        R = 0.17 * S_ * amp
        a = p["phase"] + p["dir"] * 2 * math.pi * 0.6 * tau
        x, y = actor.cx + R * math.cos(a), actor.cy + R * math.sin(a)
    elif name == "shaking":
        j = p["jitter"][t]
        x, y = actor.cx + 0.045 * S_ * amp * j[0], actor.cy + 0.045 * S_ * amp * j[1]
    elif name == "falling":
        # centre layout: from 0.12 to 0.88 of the frame; anywhere: a drop of p["fall"] around cy
        top, bottom = (0.12 * S_, 0.88 * S_) if "fall" not in p else (actor.cy - p["fall"] / 2, actor.cy + p["fall"] / 2)
        y = top + (bottom - top) * u * u
    elif name == "pulsing":
        sx = sy = 1.0 + 0.3 * math.sin(2 * math.pi * 1.5 * tau + p["phase"])
    elif name == "fading_in":
        alpha = u
    elif name == "fading_out":
        alpha = 1.0 - u
    elif name == "color_changing":
        pal = p["palette"]
        color = pal[int(tau / 0.4) % len(pal)]
    elif name == "zigzagging":
        x = actor.cx + p["dir"] * D * (u - 0.5)
        tri = 2 * abs(((tau * 2.0 + p["phase"] / (2 * math.pi)) % 1.0) - 0.5) - 0.5
        y = actor.cy + 0.25 * S_ * amp * tri
    elif name == "stretching":
        sx, sy = 1.0 + 0.8 * u, 1.0 - 0.4 * u
    elif name == "swinging":
        L = 0.22 * S_ * amp
        phi = 0.7 * math.sin(2 * math.pi * 0.8 * tau + p["phase"])
        x, y = actor.cx + L * math.sin(phi), actor.cy - L / 2 + L * math.cos(phi) - L / 2
        ang = p["theta0"] + phi
    return x, y, ang, sx, sy, alpha, on, color


def _shape_mask(obj: int, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    name = OBJECTS[obj]
    if name == "circle":
        return lx * lx + ly * ly <= 1.0
    if name == "square":
        return np.maximum(np.abs(lx), np.abs(ly)) <= 0.82
    if name == "diamond":
        return np.abs(lx) + np.abs(ly) <= 1.0
    if name == "triangle":  # apex up (y points down)
        return (ly <= 0.6) & (np.abs(lx) <= 0.95 * (ly + 1.0) / 1.6)
    if name == "star":
        r = np.hypot(lx, ly)
        phi = np.arctan2(ly, lx)
        return r <= 0.62 + 0.36 * np.cos(5 * phi + math.pi / 2)
    if name == "cross":
        return ((np.abs(lx) <= 0.32) & (np.abs(ly) <= 0.95)) | ((np.abs(ly) <= 0.32) & (np.abs(lx) <= 0.95))
    raise ValueError(name)


def _texture(tex: int, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Brightness factor in [0.45, 1] of a texture in the actor's own coordinates (it turns with it)."""
    name = TEXTURES[tex]
    if name == "solid":
        return np.ones_like(lx)
    if name == "striped":
        return np.where(np.sin(lx * math.pi * 2.5) > 0, 1.0, 0.45)
    if name == "checkered":
        return np.where((np.floor(lx * 2.2) + np.floor(ly * 2.2)) % 2 == 0, 1.0, 0.45)
    if name == "dotted":
        fx, fy = lx * 2.5 - np.round(lx * 2.5), ly * 2.5 - np.round(ly * 2.5)
        return np.where(fx * fx + fy * fy < 0.09, 0.45, 1.0)
    raise ValueError(name)


def _background(scene: int, size: int, seed: int) -> np.ndarray:
    """A dim, low-contrast textured background ``[H, W, 3]`` float32 (actors are bright)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(35, 75, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    name = SCENES[scene]
    if name == "plain":   # flat colour with a faint vertical shading: never a constant frame
        pat = (yy / max(size - 1, 1) - 0.5) * 8
    elif name == "noise":
        n = rng.normal(0, 1, size=(size // 8 + 2, size // 8 + 2)).astype(np.float32)
        pat = np.kron(n, np.ones((8, 8), np.float32))[:size, :size] * 7
    elif name == "grid":
        step = int(rng.integers(10, 18))
        pat = ((((xx // step) + (yy // step)) % 2) * 2 - 1) * 9
    else:  # waves
        f = rng.uniform(0.08, 0.18)
        pat = np.sin(xx * f + np.sin(yy * f * 0.7) * 2) * 10
    return np.clip(base[None, None, :] + pat[..., None], 0, 255)


def _audio(actions: Sequence[int], n: int, seed: int) -> np.ndarray:
    """Mono 22,050 Hz waveform: the auditory actions' tones plus faint noise (std 0.002; peak <= 0.8)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64) / AUDIO_RATE
    x = rng.normal(0, 0.002, n)
    for c in actions:
        name = CLASSES[c]
        j = rng.uniform(0.9, 1.1)
        if name == "beeping":   # 1 kHz beeps, 0.1 s on every 0.25 s
            gate = ((t * 4 / j) % 1.0) < 0.4
            x += 0.35 * np.sin(2 * math.pi * 1000 * j * t) * gate
        elif name == "drumming":  # decaying noise bursts + a low thump, 3 per second
            ph = (t * 3 * j) % 1.0 / (3 * j)
            env = np.exp(-ph / 0.03)
            x += env * (0.35 * rng.normal(0, 1, n) + 0.4 * np.sin(2 * math.pi * 70 * t))
        elif name == "humming":  # steady 140 Hz with harmonics
            f0 = 140 * j
            x += sum(0.25 / h * np.sin(2 * math.pi * f0 * h * t) for h in range(1, 5))
        elif name == "whistling":  # rising sweep 800 -> 2400 Hz, twice a second
            ph = (t * 2 * j) % 1.0
            f = 800 + 1600 * ph
            x += 0.3 * np.sin(2 * math.pi * np.cumsum(f) / AUDIO_RATE)
    peak = np.abs(x).max()
    if peak > 0.8:
        x *= 0.8 / peak
    return x.astype(np.float32)


def render_video(cfg: SynthConfig, index: int) -> Dict:
    """Render video ``index``: ``frames`` uint8 ``[T,H,W,3]``, ``audio`` (or None), the ground truth."""
    v = _sample_video(cfg, index)
    T, S_ = cfg.frames, cfg.size
    bg = _background(v["scene"], S_, v["bg_seed"])
    actors: List[Actor] = v["actors"]
    A = len(actors)
    frames = np.empty((T, S_, S_, 3), np.uint8)
    actor_map = np.zeros((T, S_, S_), np.uint8)
    boxes = np.zeros((A, T, 4), np.float32)
    visible = np.zeros((A, T), bool)
    colors = np.zeros((A, T), np.int16)
    for t in range(T):
        img = bg.copy()
        amap = actor_map[t]
        for a, act in enumerate(actors):
            x, y, ang, sx, sy, alpha, on, color = _state(act, t, cfg)
            colors[a, t] = color
            r = act.radius
            ext = r * max(sx, sy) * 1.05 + 1
            x0, x1 = int(max(0, math.floor(x - ext))), int(min(S_, math.ceil(x + ext) + 1))
            y0, y1 = int(max(0, math.floor(y - ext))), int(min(S_, math.ceil(y + ext) + 1))
            if x0 >= x1 or y0 >= y1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            dx, dy = xx + 0.5 - x, yy + 0.5 - y
            c, s = math.cos(ang), math.sin(ang)
            lx = (c * dx + s * dy) / (r * sx)
            ly = (-s * dx + c * dy) / (r * sy)
            mask = _shape_mask(act.obj, lx, ly)
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            boxes[a, t] = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            if not on or alpha <= 0.0:
                continue
            shade = _texture(act.texture, lx, ly)[..., None] * COLOR_RGB[color][None, None, :]
            win = img[y0:y1, x0:x1]
            blend = alpha * shade + (1 - alpha) * win
            win[mask] = blend[mask]
            if alpha >= 0.25:
                visible[a, t] = True
                amap[y0:y1, x0:x1][mask] = a + 1
        frames[t] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    audio = None
    if v["has_audio"]:
        n = int(round(T / cfg.fps * AUDIO_RATE))
        audio = _audio(v["audio_actions"], n, v["audio_seed"])
    gt = {
        "actor_map": actor_map,
        "boxes": boxes,
        "visible": visible,
        "actor_action": np.array([a.action for a in actors], np.int16),
        "actor_object": np.array([a.obj for a in actors], np.int16),
        "actor_texture": np.array([a.texture for a in actors], np.int16),
        "actor_color": colors,
        "scene": np.int16(v["scene"]),
        "present": np.array(v["present"], np.int16),
        "labels": np.array(v["labels"], np.int16),
        "audio_actions": np.array(v["audio_actions"], np.int16),
        "classes": np.array(CLASSES),
        "objects": np.array(OBJECTS),
        "colors": np.array(COLOR_NAMES),
        "textures": np.array(TEXTURES),
        "scenes": np.array(SCENES),
    }
    return {"frames": frames, "audio": audio, "gt": gt, "labels": v["labels"], "present": v["present"]}


def _npz_bytes(arrays: Dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


class _SynthJob:
    """Picklable worker: render, encode and validate one synthetic video."""

    def __init__(self, cfg: SynthConfig, spec: EncodeSpec, split: str):
        self.cfg, self.spec, self.split = cfg, spec, split

    def __call__(self, job: Job) -> Sample:
        index = job.payload
        r = render_video(self.cfg, index)
        clip = encode_arrays(r["frames"], self.spec, audio=r["audio"], source=job.source)
        ids = list(r["labels"])
        meta = {
            "source": job.source,
            "labels": [CLASSES[i] for i in ids],
            "label_ids": ids,
            "present": [CLASSES[i] for i in r["present"]],
            "synth_index": index,
            **clip.meta(self.split, self.spec.codec),
        }
        return make_sample(job.key, meta, clip.video, ids, audio=clip.audio, audio_ext=self.spec.audio_format,
                           extra={S.GT_EXT: _npz_bytes(r["gt"])})


def generate_dataset(out_dir: str, *, num_videos: int = 600, seed: int = 0, size: int = 112, fps: float = 25.0,
                     seconds: float = 2.0, codec: str = "vp9", workers: int = 2, shard_samples: int = 200,
                     shard_bytes: int = 1 << 30, splits: Tuple[float, float, float] = (0.8, 0.1, 0.1),
                     tail: float = 0.8, label_dropout: float = 0.0, no_audio_prob: float = 0.3,
                     distractors: int = 0, action_count_probs: Tuple[float, ...] = (0.35, 0.35, 0.2, 0.1),
                     resume: bool = False, overwrite: bool = False, broden: Optional[str] = None,
                     progress: bool = True, preset: Optional[str] = None, layout: str = "centre") -> S.Manifest:
    """Render a Multi-Moving-Shapes dataset into ``out_dir`` (train/val/test shards + manifest),
    through the same packer as ``mmit pack`` (:func:`~mmit_fast.pack.packer.write_split`).

    ``num_videos`` are split by ``splits``; video ``i`` is deterministic from ``(seed, i)``.
    When ``out_dir`` already holds this exact dataset (same settings, complete), it is not
    rendered again: its manifest is returned. Other existing shards need ``overwrite=True``
    (which first removes the previous dataset's manifests, shards and indexes from ``out_dir``)
    or ``resume=True`` (to finish an interrupted run with the same settings).
    With ``broden=DIR`` the test split (val when test is empty) is also exported in the
    Broden layout (:func:`export_broden`). ``preset`` (:mod:`mmit_fast.pack.presets`) renders
    and packs at the preset's rate for ``seconds`` (e.g. ``paper-i3d``: 16 frames per clip).
    ``layout`` (:mod:`.layout`): ``"centre"`` (default), ``"anywhere"`` (actors uniform over
    the frame, fully visible, apart from each other: the localisation benchmark's data) or
    ``"close"`` (as anywhere, the actors of a clip side by side, touching or overlapping in part).
    Returns the manifest.
    """
    from .presets import resolve, resolve_bframes, resolve_short_side

    size = resolve_short_side(preset, None if size == 112 else size) if preset else size
    bframes = resolve_bframes(preset, codec)
    fps, gop, preset = resolve(preset, seconds, None if fps == 25.0 else fps, None)
    cfg = SynthConfig(num_videos=num_videos, seed=seed, size=size, fps=fps, seconds=seconds, splits=tuple(splits),
                      action_count_probs=tuple(action_count_probs), tail=tail, label_dropout=label_dropout,
                      no_audio_prob=no_audio_prob, distractors=distractors, layout=layout)
    spec = EncodeSpec(codec=codec, short_side=size, fps=fps, seconds=cfg.frames / fps, gop=gop, preset=preset,
                      bframes=bframes)
    counts = cfg.split_counts()
    info = {"generator": "multi-moving-shapes", "config": asdict(cfg), "class_probs": cfg.class_probs().tolist(),
            "visual_classes": list(VISUAL_ACTIONS), "audio_classes": list(AUDIO_ACTIONS),
            "objects": list(OBJECTS), "colors": list(COLOR_NAMES), "textures": list(TEXTURES), "scenes": list(SCENES)}
    if not overwrite and not resume:
        done = _finished(out_dir, info, spec, counts)
        if done is not None:   # already rendered: still export when asked (never skip it silently)
            _export_if_asked(out_dir, broden, counts)
            return done
    if overwrite:
        _clear_dataset(out_dir)
    start = 0
    man = None
    for split in S.SPLITS:
        n = counts[split]
        jobs = [Job(key=S.key_for(i, "mms"), source=f"synth:mms/seed={seed}/index={i}", payload=i)
                for i in range(start, start + n)]
        start += n
        if not jobs:
            continue
        man = write_split(out_dir, split, jobs, _SynthJob(cfg, spec, split), classes=list(CLASSES), spec=spec,
                          workers=workers, shard_samples=shard_samples, shard_bytes=shard_bytes, resume=resume,
                          overwrite=overwrite, source_info=info, progress=progress, desc="synth")
    _export_if_asked(out_dir, broden, counts)
    return man


def _export_if_asked(out_dir: str, broden: Optional[str], counts: Dict[str, int]) -> None:
    """``generate_dataset(broden=DIR)``: export the test split (val, then train when empty)."""
    if broden:
        split = "test" if counts["test"] else ("val" if counts["val"] else "train")
        export_broden(out_dir, broden, split=split)


def _clear_dataset(out_dir: str) -> None:
    """Remove a previous dataset's files (manifests, shards, indexes, resume state) from ``out_dir``."""
    import re

    rx = re.compile(r"^(manifest(-p\d{4})?\.json|(train|val|test)(-p\d{4})?-\d{6}\.(tar|idx)|"
                    r"\.manifest.*\.(jsonl|json)|\..*\.partial)$")
    names = storage.listdir(out_dir)   # the manifest goes first: it never names a missing shard
    for name in sorted(names, key=lambda n: not n.startswith("manifest")):
        if rx.match(name):
            storage.remove(storage.join(out_dir, name))


def _with_layout(config: Optional[Dict]) -> Optional[Dict]:
    """A recorded generator config; datasets made before layouts existed are the centre layout."""
    return config if not isinstance(config, dict) or "layout" in config else {**config, "layout": "centre"}


def _finished(out_dir: str, info: Dict, spec: EncodeSpec, counts: Dict[str, int]) -> Optional[S.Manifest]:
    """The manifest of ``out_dir`` when it already holds this exact dataset, complete; else None."""
    try:
        man = S.load_manifest(out_dir)
    except (FileNotFoundError, S.ShardFormatError):
        return None
    want = spec.video_manifest()
    if "preset" not in man.video and want.get("preset") == "full":
        want.pop("preset")   # packed before presets were recorded: the same 25 fps settings
    if man.classes != list(CLASSES) or man.video != want:
        return None
    for split, n in counts.items():
        src = man.source.get("splits", {}).get(split)
        if n == 0:
            continue
        if not src or _with_layout(src.get("config")) != json.loads(json.dumps(info["config"])) or man.num_samples(split) + \
                man.splits.get(split, {}).get("rejected", 0) != n:
            return None
        try:
            storage.sizes(man.shard_paths(split))
        except FileNotFoundError:
            return None
    return man


# --------------------------------------------------------------------------- Broden export
BRODEN_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw", "color", "object", "part", "material", "scene",
                  "texture", "action")
BRODEN_CATEGORIES = ("color", "object", "texture", "scene", "action")


def _png(path: str, labels: np.ndarray) -> None:
    """Write a Broden mask: label number = R + 256 * G."""
    from PIL import Image

    lab = labels.astype(np.int64)
    rgb = np.zeros(lab.shape + (3,), np.uint8)
    rgb[..., 0] = lab % 256
    rgb[..., 1] = lab // 256
    Image.fromarray(rgb).save(path)


def export_broden(dataset_dir: str, out_dir: str, split: str = "test", frames_per_video: int = 3,
                  max_videos: Optional[int] = None) -> str:
    """Write the ground truth of a packed Multi-Moving-Shapes split in the Broden layout read
    by NetDissect(-Lite): ``index.csv`` (columns ``image,split,ih,iw,sh,sw,color,object,part,
    material,scene,texture,action``; mask cells are ``;``-separated PNG names under ``images/``,
    scene is an image-level label number), ``category.csv``, ``label.csv`` (one global label
    numbering, 0 = unlabelled) and ``c_<category>.csv``.

    Images are frames decoded from the packed clips (what a model sees), ``frames_per_video``
    evenly spaced frames per clip, saved as JPEG ``images/<key>_f<t>.jpg``. Masks per frame:
    colour, object and texture of the visible actor pixels; action regions are the actors'
    boxes filled with the action label (one PNG per action, as regions may overlap).
    ``videos.csv`` (``image,key,frame,frames,labels``) names the clip and frame of each image,
    so a video model can be run on the whole clip around the frame (the sample ``key`` is in
    the dataset's shards of ``split``). Returns ``out_dir``.

    File names come from valid sample keys only (``[A-Za-z0-9_-]+``): a sample whose tar member
    names are anything else (``../x``, an absolute path) is skipped, and the skipped samples are
    counted in one warning naming the first."""
    from .writer import iter_tar_samples

    man = S.load_manifest(dataset_dir)
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    number, labels = _broden_labels()
    tally = _BrodenTally(np.zeros(len(labels) + 1, np.int64), np.zeros(len(labels) + 1, np.float64))
    rows, clips, bad = [], [], []
    n_videos = 0
    for shard in man.shard_paths(split):
        for key, mem in iter_tar_samples(shard):
            if max_videos is not None and n_videos >= max_videos:
                break
            if not S.is_valid_key(key):
                bad.append((shard, key))
                continue
            if S.GT_EXT not in mem:
                raise S.ShardFormatError(f"{shard}:{key}: no {S.GT_EXT} member (not a synthetic dataset?)")
            n_videos += 1
            _export_video(key, mem, split, frames_per_video, img_dir, number, tally, rows, clips)
    if bad:
        warnings.warn(f"export_broden: skipped {len(bad)} sample(s) whose tar member names are not sample keys "
                      f"(first: {bad[0][1]!r} in {bad[0][0]}): no file is named from them", RuntimeWarning, stacklevel=2)
    if not rows:
        raise ValueError(f"{dataset_dir}: split {split!r} has no samples to export")
    _write_broden_tables(out_dir, rows, clips, labels, tally)
    return out_dir


class _BrodenTally(NamedTuple):
    """Per label number: images it appears in (``freq``) and summed pixel coverage (``cover``)."""
    freq: np.ndarray
    cover: np.ndarray

    def add(self, lab: int, coverage: float) -> None:
        self.freq[lab] += 1
        self.cover[lab] += coverage


def _broden_labels() -> Tuple[Dict[Tuple[str, int], int], List[Tuple[int, str, str]]]:
    """One global label numbering, category by category (0 = none): ``{(category, index):
    number}`` and the ``(number, name, category)`` rows of ``label.csv``."""
    names: Dict[str, List[str]] = {"color": list(COLOR_NAMES), "object": list(OBJECTS), "texture": list(TEXTURES),
                                   "scene": list(SCENES), "action": list(VISUAL_ACTIONS)}
    number: Dict[Tuple[str, int], int] = {}
    labels: List[Tuple[int, str, str]] = []
    for cat in BRODEN_CATEGORIES:
        for i, nm in enumerate(names[cat]):
            number[(cat, i)] = len(labels) + 1
            labels.append((len(labels) + 1, f"{nm}-{cat[0]}" if cat in ("color", "scene") else nm, cat))
    return number, labels


def _export_video(key, mem, split, frames_per_video, img_dir, number, tally, rows, clips) -> None:
    """Decode one packed clip, save ``frames_per_video`` evenly spaced frames as JPEG with their
    masks, and append their ``index.csv`` rows and ``videos.csv`` rows."""
    from PIL import Image

    from .transcode import decode_video_bytes

    with np.load(io.BytesIO(mem[S.GT_EXT]), allow_pickle=False) as z:
        gt = {k: z[k] for k in z.files}
    _, w, h, frames = decode_video_bytes(mem[S.VIDEO_EXT], where=key, keep=True)
    T = frames.shape[0]
    picks = np.unique(np.linspace(0, T - 1, frames_per_video + 2)[1:-1].round().astype(int))
    for t in picks:
        stem = f"{key}_f{t:03d}"
        Image.fromarray(frames[t]).save(os.path.join(img_dir, stem + ".jpg"), quality=95)
        cells = _frame_masks(gt, int(t), stem, img_dir, number, tally, (h, w))
        row = {"image": stem + ".jpg", "split": split, "ih": h, "iw": w, "sh": h, "sw": w}
        row.update({c: ";".join(v) for c, v in cells.items()})
        rows.append(row)
        clips.append({"image": row["image"], "key": key, "frame": int(t), "frames": int(T),
                      "labels": ";".join(CLASSES[i] for i in gt["labels"])})


def _frame_masks(gt, t, stem, img_dir, number, tally, hw) -> Dict[str, List[str]]:
    """The mask cells of frame ``t``: colour, object and texture of the visible actor pixels (one
    PNG each), the scene number, and one PNG per action region (the actor's box)."""
    amap = gt["actor_map"][t].astype(np.int64)
    A = gt["actor_action"].shape[0]
    lut = {c: np.zeros(A + 1, np.int64) for c in ("color", "object", "texture")}
    for a in range(A):
        lut["color"][a + 1] = number[("color", int(gt["actor_color"][a, t]))]
        lut["object"][a + 1] = number[("object", int(gt["actor_object"][a]))]
        lut["texture"][a + 1] = number[("texture", int(gt["actor_texture"][a]))]
    cells: Dict[str, List[str]] = {c: [] for c in BRODEN_COLUMNS[6:]}
    for cat in ("color", "object", "texture"):
        m = lut[cat][amap]
        if m.any():
            fn = f"{stem}_{cat}.png"
            _png(os.path.join(img_dir, fn), m)
            cells[cat].append(fn)
            for lab in np.unique(m[m > 0]):
                tally.add(lab, (m == lab).mean())
    scene_no = number[("scene", int(gt["scene"]))]
    cells["scene"].append(str(scene_no))
    tally.add(scene_no, 1.0)
    for a in range(A):
        act = int(gt["actor_action"][a])
        x0, y0, x1, y1 = gt["boxes"][a, t]
        if act < 0 or x1 <= x0 or y1 <= y0:
            continue
        m = np.zeros(hw, np.int64)
        m[int(y0):int(math.ceil(y1)), int(x0):int(math.ceil(x1))] = number[("action", act)]
        fn = f"{stem}_action{a}.png"
        _png(os.path.join(img_dir, fn), m)
        cells["action"].append(fn)
        tally.add(number[("action", act)], (m > 0).mean())
    return cells


def _write_broden_tables(out_dir, rows, clips, labels, tally) -> None:
    """``index.csv``, ``videos.csv``, ``label.csv``, ``category.csv`` and ``c_<category>.csv``."""
    freq, cover = tally.freq, tally.cover
    with open(os.path.join(out_dir, "index.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(BRODEN_COLUMNS))
        wr.writeheader()
        wr.writerows(rows)
    with open(os.path.join(out_dir, "videos.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["image", "key", "frame", "frames", "labels"])
        wr.writeheader()
        wr.writerows(clips)
    with open(os.path.join(out_dir, "label.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for num, nm, cat in labels:
            wr.writerow([num, nm, f"{cat}({int(freq[num])})", int(freq[num]), f"{cover[num]:.4f}", ""])
    with open(os.path.join(out_dir, "category.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["name", "first", "last", "count", "frequency"])
        for cat in BRODEN_CATEGORIES:
            nums = [num for num, _, c in labels if c == cat]
            touched = sum(1 for r in rows if r[cat])
            wr.writerow([cat, min(nums), max(nums), len(nums), touched])
    for cat in BRODEN_CATEGORIES:
        with open(os.path.join(out_dir, f"c_{cat}.csv"), "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["code", "number", "name", "frequency", "coverage"])
            code = 1
            for num, nm, c in labels:
                if c == cat:
                    wr.writerow([code, num, nm, int(freq[num]), f"{cover[num]:.4f}"])
                    code += 1
