"""What interpretation reads: a checkpoint's model and clip settings, and clips from a user's
video file, one shard, or a split of a packed dataset, cut exactly as evaluation cuts them.

Clip settings come from the checkpoint: ``preprocess`` (``frames``, ``crop``, ``sampling``,
``stride``, ``resize``, ``mean``, ``std``) when present, else its training ``config``
(``clip_mode``, ``frames``, ``stride``, ``crop``, ``resize``), else the I3D defaults. The
view is the evaluation view (:func:`mmit_fast.data.plan_views` with ``train=False``: centre
clip, centre crop). Ground truth of synthetic samples (``<key>.gt.npz``) is carried into the
view: frames picked, resized (nearest) and cropped like the pixels.

Sources: a video file (any container PyAV reads), a ``.tar`` shard, a dataset folder (its
``val`` split, else ``test``, else ``train``) or ``FOLDER:SPLIT``; shards and datasets may be
URLs (``s3://``, ``gs://``, ``https://``: one range request per sample through the ``.idx``,
:mod:`mmit_fast.storage`).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .. import shards as S
from .. import storage
from ..data.sampling import ClipSpec, plan_views
from .cam import NoClassifierError

__all__ = ["ClipItem", "load_model", "clip_spec_of", "iter_clips", "to_input", "gt_to_view", "resolve_device"]


@dataclass
class ClipItem:
    key: str
    frames: np.ndarray                 # uint8 [T, crop, crop, 3], the view the model sees
    labels: List[str]                  # true labels (empty for a user's video)
    gt: Optional[Dict[str, np.ndarray]]  # ground truth in view coordinates (synthetic data), else None


def resolve_device(device: str = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return d


def load_model(checkpoint: str, device: str = "auto"):
    """``(model, clip_spec, mean, std)`` of an mmit checkpoint; one-line errors for a file that
    is not one and for a model without a classifier."""
    from ..models import from_checkpoint, read_checkpoint

    ck = read_checkpoint(checkpoint)
    if not any(k.endswith("classifier.weight") for k in ck["model"]):
        raise NoClassifierError(f"{checkpoint}: the checkpoint has no classifier (no classifier.weight): "
                                "class activation maps and unit-to-class links need the linear layer")
    model = from_checkpoint(checkpoint).to(resolve_device(device))
    spec, mean, std = clip_spec_of(ck, model)
    return model, spec, mean, std


def clip_spec_of(ck: Dict[str, Any], model) -> Tuple[ClipSpec, Tuple[float, ...], Tuple[float, ...]]:
    from ..data.pyav import IMAGENET_MEAN, IMAGENET_STD

    pre = dict(ck.get("preprocess") or {})
    cfg = dict(ck.get("config") or {})
    name = (ck.get("model_spec") or {}).get("name", "i3d")
    mode = pre.get("sampling") or cfg.get("clip_mode") or "auto"
    if mode not in ("consecutive", "segments", "uniform"):
        mode = "segments" if name == "tsm" else "consecutive"
    frames = int(pre.get("frames") or cfg.get("frames") or getattr(model, "segments", 16))
    crop = int(pre.get("crop") or cfg.get("crop") or 112)
    resize = pre.get("resize") or cfg.get("resize") or None
    stride = int(pre.get("stride") or cfg.get("stride") or 2)
    spec = ClipSpec(mode=mode, frames=frames, stride=stride, crop=crop, resize=int(resize) if resize else None,
                    flip=False)
    mean = tuple(float(v) for v in pre.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in pre.get("std", IMAGENET_STD))
    return spec, mean, std


def to_input(frames: np.ndarray, mean, std, device) -> torch.Tensor:
    """uint8 [N, T, H, W, 3] (or [T, H, W, 3]) -> float [N, 3, T, H, W], ``(x/255 - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    if x.dim() == 4:
        x = x[None]
    x = x.permute(0, 4, 1, 2, 3).float().div_(255.0)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1, 1)
    return (x - m) / s


def _decode(data: bytes, where: str) -> np.ndarray:
    from ..pack.transcode import decode_video_bytes

    try:
        n, _w, _h, frames = decode_video_bytes(data, where=where, keep=True)
    except Exception as e:  # PyAV errors are ValueError/OSError subclasses without the file name
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(msg if msg.startswith(where) else f"{where}: cannot be decoded as a video ({msg})") from None
    if not n or frames is None:
        raise ValueError(f"{where}: no video frames decode")
    return frames


def _view(frames: np.ndarray, spec: ClipSpec):
    from ..data.pyav import resize_clip

    F_, H, W = frames.shape[:3]
    plan = plan_views(F_, H, W, 25.0, spec, train=False)[0]
    clip = resize_clip(frames[plan.indices], plan.resize_hw)
    y, x = plan.crop_yx
    return np.ascontiguousarray(clip[:, y:y + plan.crop, x:x + plan.crop]), plan, (H, W)


def gt_to_view(gt: Dict[str, np.ndarray], plan, hw: Tuple[int, int]) -> Dict[str, np.ndarray]:
    """Ground truth in view coordinates: ``actor_map`` [T, c, c] and ``boxes`` [A, T, 4] at the
    view's frames, resized like the pixels (nearest for the map) and cropped; ``box_masks``
    [A, T, c, c] bool (each actor's action region)."""
    H, W = hw
    rh, rw = plan.resize_hw
    y, x = plan.crop_yx
    c = plan.crop
    iy = np.clip(((np.arange(rh) + 0.5) * H / rh).astype(int), 0, H - 1)[y:y + c]
    ix = np.clip(((np.arange(rw) + 0.5) * W / rw).astype(int), 0, W - 1)[x:x + c]
    amap = gt["actor_map"][plan.indices][:, iy][:, :, ix]
    b = gt["boxes"][:, plan.indices].astype(np.float64).copy()
    b[..., [0, 2]] = b[..., [0, 2]] * rw / W - x
    b[..., [1, 3]] = b[..., [1, 3]] * rh / H - y
    yy = np.arange(c)[None, None, :, None] + 0.5
    xx = np.arange(c)[None, None, None, :] + 0.5
    masks = ((xx >= b[..., 0, None, None]) & (xx < b[..., 2, None, None]) &
             (yy >= b[..., 1, None, None]) & (yy < b[..., 3, None, None]))
    out = dict(gt)
    out.update(actor_map=amap, boxes=b.astype(np.float32), box_masks=masks,
               visible=gt["visible"][:, plan.indices])
    return out


def _video_file(path: str, spec: ClipSpec) -> Iterator[ClipItem]:
    """The evaluation view of a user's video file, in bounded memory: only the frames the
    sampler picks are decoded (seeking to the keyframe before them), each resized and cropped
    at once (:func:`mmit_fast.data.pyav.read_file_view`): a 10-minute 1080p video needs what a
    10-second one does, one native frame plus the clip."""
    from ..data.pyav import read_file_view

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such video file")
    frames, _, _ = read_file_view(path, lambda n, h, w: plan_views(n, h, w, 25.0, spec, train=False)[0])
    yield ClipItem(os.path.splitext(os.path.basename(path))[0], frames, [], None)


def compare_vocabularies(where: str, data: Optional[List[str]], model: List[str]) -> Optional[str]:
    """How a source's vocabulary ``data`` (its manifest's classes; None when unknown) relates to
    the checkpoint's ``model`` names: None when equal (or unknown); a note when they differ but
    share names (truth and predictions are then matched by name); a ValueError when they share
    none (not this model's data)."""
    if data is None or list(data) == list(model):
        return None
    shared = set(data) & set(model)
    if not shared:
        show = lambda v: f"{len(v)} classes: {', '.join(map(str, v[:3]))}" + (", ..." if len(v) > 3 else "")  # noqa: E731
        raise ValueError(f"{where}: its vocabulary ({show(list(data))}) shares no class name with the checkpoint's "
                         f"({show(list(model))}): not this model's data")
    if set(data) == set(model):
        return f"{where} orders its {len(data)} classes differently from the checkpoint: truth and predictions are " \
               "matched by name"
    unknown = len(set(data) - set(model))
    return (f"{where} has {len(data)} classes, the checkpoint {len(model)}; {unknown} of {where}'s classes are not "
            "the model's: truth is named by its own vocabulary and matched by name")


def _truth(mem: Dict[str, bytes], vocab: Optional[List[str]]) -> List[str]:
    """True label names of a shard sample: its ids named by the shard's own vocabulary, else
    the names in its metadata, else ``#id`` (never the checkpoint's names for another
    vocabulary's ids)."""
    ids = S.decode_label_ids(mem[S.LABEL_EXT]).tolist() if S.LABEL_EXT in mem else []
    if vocab is not None:
        return [vocab[i] if 0 <= i < len(vocab) else f"#{i}" for i in ids]
    try:
        names = S.parse_sample_meta(mem[S.META_EXT]).get("labels") if S.META_EXT in mem else None
    except S.ShardFormatError:
        names = None
    return [str(n) for n in names] if isinstance(names, list) else [f"#{i}" for i in ids]


def _shard(path: str, spec: ClipSpec, vocab: Optional[List[str]], counter: Dict[str, Any]) -> Iterator[ClipItem]:
    from ..pack.writer import iter_tar_samples

    for key, mem in iter_tar_samples(path):
        where = f"{storage.redact(path)}:{key}"
        if S.VIDEO_EXT not in mem:
            counter.setdefault("skipped", []).append(f"{where}: no {S.VIDEO_EXT} member")
            continue
        try:
            frames, plan, hw = _view(_decode(mem[S.VIDEO_EXT], where), spec)
        except ValueError as e:
            counter.setdefault("skipped", []).append(str(e))
            continue
        labels = _truth(mem, vocab)
        gt = None
        if S.GT_EXT in mem:
            with np.load(io.BytesIO(mem[S.GT_EXT]), allow_pickle=False) as z:
                gt = gt_to_view({k: z[k] for k in z.files}, plan, hw)
        yield ClipItem(key, frames, labels, gt)


def _split_paths(source: str) -> Tuple[str, S.Manifest, List[str]]:
    """``(folder, manifest, shard paths)`` of a dataset folder or ``FOLDER:SPLIT``."""
    folder, split = source, None
    head, _, tail = source.rpartition(":")
    if not os.path.isdir(source) and head and tail and "/" not in tail:
        folder, split = head, tail
    man = S.load_manifest(folder)
    if split is None:
        split = next((s for s in ("val", "test", "train") if man.num_samples(s)), None)
    if split not in man.splits or not man.num_samples(split):
        raise ValueError(f"{folder}: split {split!r} has no samples (splits: {sorted(man.splits)})")
    return folder, man, man.shard_paths(split)


def iter_clips(source: str, spec: ClipSpec, classes: List[str], *, limit: Optional[int] = None,
               counter: Optional[Dict[str, Any]] = None) -> Iterator[ClipItem]:
    """Clips of ``source`` (module docstring), at most ``limit``. Undecodable shard samples are
    skipped and listed in ``counter["skipped"]``; an undecodable video file raises ValueError.

    ``classes``: the checkpoint's names. A shard's or dataset's own vocabulary (its manifest)
    names the true labels, and is compared with them by name (:func:`compare_vocabularies`):
    none shared is a ValueError, another order or set a line in ``counter["notes"]``."""
    counter = {} if counter is None else counter
    source = storage.strip_credentials(os.fspath(source))
    remote = storage.is_url(source)   # a shard or a dataset (``URL[:split]``) in object storage or over HTTP
    if not remote and not os.path.exists(source) and not (":" in source and os.path.isdir(source.rsplit(":", 1)[0])):
        raise FileNotFoundError(f"{source}: no such video file, shard or dataset folder")
    if not remote and os.path.isfile(source) and not source.endswith(".tar"):
        gen = _video_file(source, spec)
    else:
        if source.endswith(".tar"):
            if not remote and not os.path.isfile(source):
                raise FileNotFoundError(f"{source}: no such shard")
            man, where, paths = S.find_manifest(source), storage.redact(source), [source]
        else:
            where, man, paths = _split_paths(source)
        vocab = list(man.classes) if man is not None else None
        note = compare_vocabularies(where, vocab, list(classes))
        if note:
            counter.setdefault("notes", []).append(note)
        gen = (it for p in paths for it in _shard(p, spec, vocab, counter))
    for n, item in enumerate(gen):
        if limit is not None and n >= limit:
            break
        yield item
