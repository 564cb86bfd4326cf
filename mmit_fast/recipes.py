"""Recipes: everything a run is built from, given its config -- the model (fresh, pretrained,
from a checkpoint), the clip spec and the loaders, the loss, and the ``preprocess`` record
stored in checkpoints (what the model expects as input).

Every verb builds from these (``train/``, ``evaluate``, ``interpret``, ``demo``), so they live
below all of them: nothing here imports ``train/``, ``evaluate`` or ``interpret``."""
from __future__ import annotations

import hashlib
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from .config import ConfigError, TrainConfig


def model_spec(cfg: TrainConfig, num_classes: int) -> Dict[str, Any]:
    """Name and keyword arguments of :func:`mmit_fast.models.create_model` (without weights)."""
    kw: Dict[str, Any] = {}
    if cfg.model in ("i3d", "tsm", "fusion"):
        kw["depth"] = cfg.depth
        kw["width"] = cfg.width
    if cfg.model == "tsm":
        kw["segments"] = cfg.frames
    kw.update(cfg.model_args)
    return {"name": cfg.model, "num_classes": int(num_classes), "kwargs": kw}


def build_model(spec: Dict[str, Any], pretrained: str = "") -> nn.Module:
    from .models import create_model

    kw = dict(spec.get("kwargs", {}))
    if pretrained:
        kw["pretrained"] = pretrained
    try:
        return create_model(spec["name"], num_classes=spec["num_classes"], **kw)
    except TypeError as e:
        raise ConfigError(f"model {spec['name']!r} does not accept {sorted(kw)}: {e} (set model_args in the config)") from None


def model_from_init(path: str, num_classes: int, replace: bool):
    """(model, spec) for fine-tuning from any checkpoint ``read_checkpoint`` accepts: its
    architecture and weights (:func:`~mmit_fast.models.checkpoint.from_checkpoint`), with a new
    classifier when the vocabulary differs or ``replace`` is set."""
    from .models import replace_classifier
    from .models.checkpoint import from_checkpoint, read_checkpoint

    old = read_checkpoint(path)["model_spec"]
    model = from_checkpoint(path).train()
    if int(old["num_classes"]) != num_classes or replace:
        model = replace_classifier(model, num_classes) or model
    return model, dict(old, num_classes=int(num_classes))


def clip_spec(cfg_or_dict: Any, model_name: str):
    from .data import ClipSpec

    d = cfg_or_dict if isinstance(cfg_or_dict, dict) else cfg_or_dict.to_dict()
    defaults = TrainConfig().to_dict()
    g = lambda k: d.get(k, defaults[k])  # noqa: E731
    mode = g("clip_mode")
    if mode == "auto":
        mode = "segments" if model_name == "tsm" else "consecutive"
    extra = {"resize": g("resize") or None, "flip": bool(g("flip"))}
    if mode in ("segments", "uniform"):
        return ClipSpec(mode=mode, frames=g("frames"), crop=g("crop"), **extra)
    return ClipSpec(mode="consecutive", frames=g("frames"), stride=g("stride"), crop=g("crop"), **extra)


def preprocess_spec(cfg: TrainConfig, model_name: str, modality: str) -> Dict[str, Any]:
    """What the model was trained on: frames, crop, short side, mean/std (on 0-1 RGB), the
    sampling mode (and stride), audio sample rate. Stored as ``preprocess`` in checkpoints."""
    from .data.loader import IMAGENET_MEAN, IMAGENET_STD
    from .shards import AUDIO_SAMPLE_RATE

    c = clip_spec(cfg, model_name)
    p: Dict[str, Any] = {"frames": int(c.frames), "crop": int(c.crop), "resize": int(c.short_side),
                         "mean": [float(v) for v in IMAGENET_MEAN], "std": [float(v) for v in IMAGENET_STD],
                         "sampling": c.mode, "layout": "B,3,T,H,W float32", "modality": modality}
    if c.mode == "consecutive":
        p["stride"] = int(c.stride)
    if modality != "video":
        p["audio_sample_rate"] = int(AUDIO_SAMPLE_RATE)
    return p


def make_loader_for(cfg: TrainConfig, split: str, *, train: bool, rank: int, world: int, device: torch.device,
                    with_audio: bool, views: int = 1, batch_size: Optional[int] = None, data: Optional[str] = None,
                    modality: str = "video"):
    from .data import make_loader

    return make_loader(
        data or cfg.data, split, clip=clip_spec(cfg, cfg.model), batch_size=batch_size or cfg.batch_size,
        rank=rank, world_size=world, train=train, backend=cfg.backend, device=str(device), seed=cfg.seed,
        with_audio=with_audio, num_workers=cfg.num_workers, views=views, modality=modality,
    )


def make_criterion(cfg: TrainConfig, manifest, split: str, device: torch.device) -> nn.Module:
    """``get_loss(cfg.loss)`` with the class weights of :meth:`TrainConfig.weight_scheme`."""
    from .losses import class_weights, get_loss

    scheme = cfg.weight_scheme()
    w = None
    if scheme != "none":
        counts = manifest.class_counts(split)
        w = torch.as_tensor(np.asarray(class_weights(counts, scheme=scheme)), dtype=torch.float32, device=device)
    kw: Dict[str, Any] = {"weights": w}
    if cfg.loss == "wlsep":
        kw["normalize"] = cfg.loss_normalize
    return get_loss(cfg.loss, **kw)


def checkpoint_config(ck: Dict[str, Any]) -> TrainConfig:
    """The training config a checkpoint records; for one without (a released or imported
    model) the defaults with its model name and its ``preprocess`` clip settings (frames,
    crop, stride, sampling, short side)."""
    d = {k: v for k, v in (ck.get("config") or {}).items() if k in TrainConfig.__dataclass_fields__}
    if not d:
        pre = ck.get("preprocess") or {}
        d["model"] = ck["model_spec"]["name"]
        for key, name in (("frames", "frames"), ("crop", "crop"), ("stride", "stride"), ("sampling", "clip_mode")):
            if key in pre:
                d[name] = pre[key]
        if pre.get("resize") and int(pre["resize"]) != round(int(d.get("crop", TrainConfig.crop)) * 256 / 224):
            d["resize"] = int(pre["resize"])
    return TrainConfig(**d)


def dataset_fingerprint(manifest, split: str) -> Dict[str, Any]:
    """What a resume must find unchanged in the data: the vocabulary and the split's size."""
    h = hashlib.sha256("\n".join(manifest.classes).encode()).hexdigest()[:16]
    return {"classes_sha256": h, "num_classes": int(manifest.num_classes), "split": split,
            "samples": int(manifest.num_samples(split))}
