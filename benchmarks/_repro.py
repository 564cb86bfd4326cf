"""Shared by ``repro_losses.py`` and ``repro_table2.py``: the two multi-label tasks, one small
training loop and its evaluation. Everything is in memory, so a grid of runs pays the data
cost once.

Tasks
-----
* ``video`` -- Multi-Moving-Shapes clips rendered in memory by the synthetic generator
  (:func:`mmit_fast.pack.synth.render_video`, the same videos ``mmit synth`` packs, without
  the codec round trip), long-tailed classes (``tail``), label dropout on the training
  labels (absent = unknown, as in M-MiT). Only the 20 visual classes are targets (a video
  model cannot see the 4 auditory ones); videos left without a visual label are dropped.
  Evaluation uses the complete ground truth (``present``) and, for reference, the labels
  after dropout. Model: I3D-R18 (``mmit_fast.models``, width 8, 1x7x7 stem), 8 frames
  stride 2, random 48 px crops of 52 px frames in training, the centre clip in evaluation.
* ``digits`` -- a real-image multi-label task from data shipped in scikit-learn: each image
  is a 4x4 grid of 8x8 cells (32x32 px) with 1-4 handwritten digits
  (``sklearn.datasets.load_digits``) in random cells; the labels are the digits present.
  Digit classes are drawn with long-tailed probabilities ``p_c ∝ (rank_c + 1)^-tail``.
  Training and evaluation images are built from disjoint halves of the digit scans.
  Model: ResNet-18 2D (``mmit_fast.models.resnet2d``, width 16).

With ``num_val > 0`` each task also has a validation split (``x_val`` / ``y_val``) drawn like
the training split, with the same missing labels (video: the labels after dropout), for
choosing a learning rate without looking at the held-out (``eval``) set.

Training: AdamW (lr ``spec.lr`` unless given, weight decay 0.05), one warm-up epoch then cosine
to 0, the same schedule and batch for every loss; the seed sets the initialisation and the
batch order. An *arm* names a loss and its class weights: ``"lsep"``, ``"wlsep"`` (min_ratio,
the authors'), ``"wlsep:tempered"``, ``"wlsep:effective_number:0.99"``, ``"wbce"``...
(:func:`parse_arm`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

METRICS = ("top1", "top5", "micro_map", "macro_map")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# --------------------------------------------------------------------------- task settings
@dataclass(frozen=True)
class TaskSpec:
    kind: str                 # "video" | "digits"
    num_train: int
    num_eval: int
    data_seed: int = 0
    tail: float = 1.0
    label_dropout: float = 0.0   # video only: P(a present action is unlabelled in training)
    size: int = 52               # video: frame side; crop = size - 4
    epochs: int = 12
    batch: int = 32
    lr: float = 2e-3
    num_val: int = 0             # validation split, labelled like the training split
    width: int = 0               # model base width (0: video 8, digits 16)

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


# --------------------------------------------------------------------------- video task
def _render(cfg, index: int):
    from mmit_fast.pack.synth import render_video

    return render_video(cfg, index)


def make_video_task(spec: TaskSpec) -> Dict[str, Any]:
    """Render ``num_train + num_val + num_eval`` videos (10 fps, 2 s -> 20 frames, ``size`` px).

    Returns ``x_train`` / ``x_eval`` uint8 [N,T,H,W,3], ``y_train`` (labels after dropout),
    ``y_eval`` (complete ground truth), ``y_eval_labelled`` (after dropout), ``classes``; with
    ``num_val``, ``x_val`` / ``y_val`` (labels after dropout, like training).
    """
    from mmit_fast.pack.synth import VISUAL_ACTIONS

    cfg = _synth_config(spec)
    n = spec.num_train + spec.num_val + spec.num_eval
    C = len(VISUAL_ACTIONS)
    frames = np.empty((n, cfg.frames, spec.size, spec.size, 3), np.uint8)
    present = np.zeros((n, C), bool)
    labelled = np.zeros((n, C), bool)
    for i in range(n):
        r = _render(cfg, i)
        frames[i] = r["frames"]
        present[i, [c for c in r["present"] if c < C]] = True
        labelled[i, [c for c in r["labels"] if c < C]] = True
    tr = np.arange(spec.num_train)
    va = np.arange(spec.num_train, spec.num_train + spec.num_val)
    ev = np.arange(spec.num_train + spec.num_val, n)
    tr = tr[labelled[tr].any(1)]          # no visual label left: nothing to learn from
    va = va[labelled[va].any(1)]          # the validation split is what training sees
    ev = ev[present[ev].any(1)]           # no visual action: nothing to find
    out = {"x_train": frames[tr], "y_train": labelled[tr], "x_eval": frames[ev], "y_eval": present[ev],
           "y_eval_labelled": labelled[ev], "classes": list(VISUAL_ACTIONS)}
    if spec.num_val:
        out["x_val"], out["y_val"] = frames[va], labelled[va]
    return out


def _synth_config(spec: TaskSpec, num_videos: Optional[int] = None):
    from mmit_fast.pack.synth import SynthConfig

    n = spec.num_train + spec.num_val + spec.num_eval if num_videos is None else num_videos
    return SynthConfig(num_videos=n, seed=spec.data_seed, size=spec.size, fps=10.0, seconds=2.0, tail=spec.tail,
                       label_dropout=spec.label_dropout, no_audio_prob=1.0)


def train_label_counts(spec: TaskSpec) -> np.ndarray:
    """Per-class counts of the training labels the task will have, without rendering or
    composing images (the same draws as :func:`make_task`): what the class weights see."""
    if spec.kind == "digits":
        return make_digits_task(spec, only_train_labels=True)["y_train"].sum(0)
    from mmit_fast.pack.synth import VISUAL_ACTIONS, sample_labels

    cfg, C = _synth_config(spec), len(VISUAL_ACTIONS)
    counts = np.zeros(C, np.int64)
    for i in range(spec.num_train):
        for c in sample_labels(cfg, i)[1]:
            if c < C:
                counts[c] += 1
    return counts


def shape_figures(counts) -> Dict[str, Any]:
    """The figures the results quote about a per-class count vector: sorted counts,
    median/mean, max/min, the share of the labels in the 5 most frequent classes."""
    c = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    seen = c[c > 0]
    return {"counts": [int(v) for v in c], "classes": int(c.size), "median_over_mean": float(np.median(c) / c.mean()),
            "max_over_min": float(seen.max() / seen.min()) if seen.size else float("nan"),
            "top5_share": float(c[:5].sum() / c.sum()) if c.sum() else float("nan"), "mean": float(c.mean()),
            "median": float(np.median(c))}


# --------------------------------------------------------------------------- digits task
def digit_class_probs(tail: float, seed: int) -> np.ndarray:
    rank = np.random.default_rng([seed, 104729]).permutation(10)
    w = (rank + 1.0) ** (-tail)
    return w / w.sum()


def compose_digits(images: np.ndarray, digit_labels: np.ndarray, n: int, probs: np.ndarray,
                   rng: np.random.Generator, grid: int = 4):
    """``n`` images of ``grid x grid`` cells of 8x8 px with 1-4 digits each (P = .35/.35/.2/.1).

    Returns ``x`` uint8 [n, 8*grid, 8*grid] (0-255), ``y`` bool [n, 10] (digits present),
    ``cells`` int [n, grid*grid] (the digit scan index in each cell, -1 = empty).
    """
    by_class = [np.flatnonzero(digit_labels == c) for c in range(10)]
    x = np.zeros((n, 8 * grid, 8 * grid), np.uint8)
    y = np.zeros((n, 10), bool)
    cells = np.full((n, grid * grid), -1, np.int64)
    for i in range(n):
        k = int(rng.choice(4, p=[0.35, 0.35, 0.2, 0.1])) + 1
        where = rng.choice(grid * grid, size=k, replace=False)
        for cell in where:
            c = int(rng.choice(10, p=probs))
            j = int(rng.choice(by_class[c]))
            r0, c0 = 8 * (cell // grid), 8 * (cell % grid)
            x[i, r0:r0 + 8, c0:c0 + 8] = np.round(images[j] * (255.0 / 16.0)).astype(np.uint8)
            y[i, c] = True
            cells[i, cell] = j
    return x, y, cells


def make_digits_task(spec: TaskSpec, only_train_labels: bool = False) -> Dict[str, Any]:
    """Digit grids for training, validation (``num_val``, composed from the training half of the
    scans, labelled alike: complete, as training) and evaluation (the other half)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng([spec.data_seed, 31337])
    perm = rng.permutation(len(d.target))
    half = len(perm) // 2
    probs = digit_class_probs(spec.tail, spec.data_seed)
    out: Dict[str, Any] = {"classes": [str(c) for c in range(10)], "probs": probs}
    parts = (("train", perm[:half], spec.num_train), ("val", perm[:half], spec.num_val), ("eval", perm[half:], spec.num_eval))
    for part, idx, n in parts[:1] if only_train_labels else parts:
        if part == "val" and not n:
            continue
        x, y, cells = compose_digits(d.images[idx], d.target[idx], n, probs, rng)
        out[f"x_{part}"], out[f"y_{part}"] = x, y
        out[f"cells_{part}"] = np.where(cells >= 0, idx[np.maximum(cells, 0)], -1)   # index into load_digits()
    if not only_train_labels:
        out["y_eval_labelled"] = out["y_eval"]
    return out


def make_task(spec: TaskSpec, cache_dir: Optional[str] = None) -> Dict[str, Any]:
    """The task's arrays, cached as ``<cache_dir>/<kind>-<hash>.npz`` (no pickle) when given."""
    path = os.path.join(cache_dir, f"{spec.kind}-{spec.key()}.npz") if cache_dir else None
    if path and os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            task = {k: z[k] for k in z.files}
        task["classes"] = [str(c) for c in task["classes"]]
        return task
    task = make_video_task(spec) if spec.kind == "video" else make_digits_task(spec)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **{k: np.asarray(v) for k, v in task.items()})
        os.replace(tmp, path)
    return task


# --------------------------------------------------------------------------- model and batches
def make_model(kind: str, num_classes: int, width: int = 0) -> torch.nn.Module:
    from mmit_fast.models import create_model
    from mmit_fast.models.resnet2d import resnet2d

    if kind == "video":
        return create_model("i3d", num_classes, depth=18, width=width or 8, conv1_t=1)
    return resnet2d(depth=18, num_classes=num_classes, width=width or 16)


def video_batch(x: np.ndarray, rng: Optional[np.random.Generator], crop: int, frames: int = 8, stride: int = 2):
    """uint8 [B,T,H,W,3] -> float [B,3,frames,crop,crop], ImageNet-normalised. ``rng`` None:
    the centre clip and crop; else a random start frame and crop window per clip."""
    B, T, H, W, _ = x.shape
    span = (frames - 1) * stride + 1
    out = np.empty((B, frames, crop, crop, 3), np.float32)
    for b in range(B):
        t0 = (T - span) // 2 if rng is None else int(rng.integers(0, T - span + 1))
        y0 = (H - crop) // 2 if rng is None else int(rng.integers(0, H - crop + 1))
        x0 = (W - crop) // 2 if rng is None else int(rng.integers(0, W - crop + 1))
        out[b] = x[b, t0:t0 + span:stride, y0:y0 + crop, x0:x0 + crop]
    out = (out / 255.0 - MEAN) / STD
    return torch.from_numpy(out).permute(0, 4, 1, 2, 3).contiguous()


def image_batch(x: np.ndarray) -> torch.Tensor:
    """uint8 [B,H,W] grey -> float [B,3,H,W] in [-1, 1] (the grey value on 3 channels)."""
    t = torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0)
    return t[:, None].expand(-1, 3, -1, -1).contiguous()


def to_input(kind: str, x: np.ndarray, rng: Optional[np.random.Generator], size: int) -> torch.Tensor:
    return video_batch(x, rng, crop=size - 4) if kind == "video" else image_batch(x)


# --------------------------------------------------------------------------- losses
#: short names -> (loss function name in mmit_fast.losses, class weight scheme)
LOSSES = {"bce": ("bce", "none"), "wbce": ("bce", "min_ratio"), "warp": ("warp", "none"),
          "wwarp": ("warp", "min_ratio"), "lsep": ("lsep", "none"), "wlsep": ("wlsep", "min_ratio")}
_NAMES = {"bce": "BCE", "warp": "WARP", "lsep": "LSEP", "wlsep": "wLSEP"}
LABELS = {"bce": "BCE", "wbce": "BCE (weighted)", "warp": "WARP", "wwarp": "WARP (weighted)", "lsep": "LSEP",
          "wlsep": "wLSEP"}


def parse_arm(arm: str):
    """``"wlsep:tempered:0.25"`` -> ``("wlsep", "tempered:0.25")``; a short name of :data:`LOSSES`
    -> its pair. The scheme is checked by ``mmit_fast.losses.weights.parse_scheme``."""
    from mmit_fast.losses.weights import parse_scheme

    if arm in LOSSES:
        return LOSSES[arm]
    loss, sep, scheme = arm.partition(":")
    if loss not in _NAMES or not sep:
        raise ValueError(f"unknown arm {arm!r}: a name of {sorted(LOSSES)} or loss:scheme with loss in {sorted(_NAMES)}")
    parse_scheme(scheme)
    return loss, scheme


def arm_label(arm: str) -> str:
    """``"wlsep:tempered"`` -> ``"wLSEP (tempered)"``; short names keep their :data:`LABELS`."""
    if arm in LABELS:
        return LABELS[arm]
    loss, scheme = parse_arm(arm)
    return f"{_NAMES[loss]} ({scheme})" if scheme != "none" else f"{_NAMES[loss]} (no weights)"


def make_criterion(arm: str, train_targets: np.ndarray) -> torch.nn.Module:
    from mmit_fast.losses import class_weights, get_loss

    fn, scheme = parse_arm(arm)
    w = class_weights(train_targets.sum(0), scheme) if scheme != "none" else None
    return get_loss(fn, weights=w)


# --------------------------------------------------------------------------- train + evaluate
def lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``lr`` to 0 at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(1.0, p)))


@torch.no_grad()
def predict(model: torch.nn.Module, kind: str, x: np.ndarray, size: int, batch: int = 64) -> np.ndarray:
    model.eval()
    out = [model(to_input(kind, x[a:a + batch], None, size)).float().numpy() for a in range(0, len(x), batch)]
    return np.concatenate(out)


def train_model(spec: TaskSpec, task: Dict[str, Any], loss: str, seed: int, *,
                y_train: Optional[np.ndarray] = None, lr: Optional[float] = None, log=None) -> torch.nn.Module:
    """Train a fresh model with arm ``loss`` on ``task`` (``y_train`` overrides its labels,
    ``lr`` the spec's learning rate). Reads ``x_train`` and the training labels only."""
    y = task["y_train"] if y_train is None else y_train
    x = task["x_train"]
    lr = spec.lr if lr is None else lr
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 2024])
    model = make_model(spec.kind, y.shape[1], spec.width)
    crit = make_criterion(loss, y)
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=lr)
    per_epoch = len(x) // spec.batch
    total = per_epoch * spec.epochs
    step = 0
    for epoch in range(spec.epochs):
        model.train()
        order = rng.permutation(len(x))
        run = 0.0
        for b in range(per_epoch):
            idx = np.sort(order[b * spec.batch:(b + 1) * spec.batch])
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, per_epoch, lr)
            out = model(to_input(spec.kind, x[idx], rng, spec.size))
            value = crit(out, torch.from_numpy(y[idx].astype(np.float32)))
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            run += float(value.detach())
            step += 1
        if log:
            log(f"  epoch {epoch + 1}/{spec.epochs} loss {run / max(1, per_epoch):.4f}")
    return model


def evaluate_scores(scores: np.ndarray, targets: np.ndarray, **kw) -> Dict[str, float]:
    from mmit_fast.metrics import evaluate

    m = evaluate(scores, targets, **kw)
    return {k: float(m[k]) for k in METRICS + ("pooled_ap", "num_videos")}


def run_one(spec: TaskSpec, task: Dict[str, Any], loss: str, seed: int, log=None, *, lr: Optional[float] = None,
            split: str = "eval") -> Dict[str, Any]:
    """Train arm ``loss`` with ``seed`` (at ``lr``) and evaluate on ``split``: ``"eval"`` (the
    held-out set: complete ground truth, and the video task's labels after dropout) or
    ``"val"`` (the validation split only: ``task`` need not hold any held-out data)."""
    t0 = time.time()
    model = train_model(spec, task, loss, seed, lr=lr, log=log)
    t1 = time.time()
    scores = predict(model, spec.kind, task[f"x_{split}"], spec.size)
    res = {"task": spec.kind, "loss": loss, "seed": seed, "lr": spec.lr if lr is None else lr, "split": split,
           "train_s": t1 - t0, "eval_s": time.time() - t1, "metrics": evaluate_scores(scores, task[f"y_{split}"])}
    if spec.kind == "video" and split == "eval":
        res["metrics_labelled"] = evaluate_scores(scores, task["y_eval_labelled"])
    return res


def summarise(values) -> Dict[str, float]:
    """mean, sample std, min, max of a list of numbers."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def fmt_load(load) -> str:
    """``(1.234, 5.6, 7.8)`` -> ``"1.2/5.6/7.8"`` ("n/a" when unknown)."""
    return "/".join(f"{float(x):.1f}" for x in load) if load else "n/a"
