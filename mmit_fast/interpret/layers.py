"""Naming a layer of a model and reading its output as spatial (or space-time) maps.

A layer is a module name of ``model.named_modules()`` (``"layer4"``, ``"layer3.1"``,
``"video.layer4"`` in a fusion model). An unknown name raises :class:`UnknownLayerError`
listing the names that can be used. Outputs are read as maps [B, K, *S]: 5-D (3D nets) and
4-D (2D nets) as they are; a 4-D output of B*T frames (TSM folds time into the batch) is
unfolded to [B, K, T, h, w].
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

__all__ = ["UnknownLayerError", "available_layers", "default_layers", "resolve_layers", "to_video_maps"]


class UnknownLayerError(ValueError):
    """A layer name the model does not have (the message lists the available ones)."""


def _backbone_prefix(model: nn.Module) -> str:
    return "video." if getattr(model, "modality", "video") == "audio-video" else ""


def available_layers(model: nn.Module) -> List[str]:
    """The ResNet stages and their blocks (``layer1`` .. ``layer4``, ``layer4.0`` ...); else every
    named module that has parameters below it."""
    pre = _backbone_prefix(model)
    names = [n for n, _ in model.named_modules()]
    stages = [n for n in names if n.startswith(pre) and n[len(pre):].split(".")[0].startswith("layer")
              and n[len(pre):].count(".") <= 1]
    return stages or [n for n, m in model.named_modules() if n and any(True for _ in m.parameters())]


def default_layers(model: nn.Module) -> List[str]:
    """The last stage (what ``features`` returns): ``layer4`` (``video.layer4`` for fusion)."""
    stages = [n for n in available_layers(model) if "." not in n[len(_backbone_prefix(model)):]]
    if not stages:
        raise UnknownLayerError(f"{type(model).__name__}: no ResNet stage found; name a layer "
                                f"(available: {', '.join(available_layers(model)[:40])})")
    return [stages[-1]]


def resolve_layers(model: nn.Module, layers: Sequence[str]) -> Dict[str, nn.Module]:
    """``{name: module}`` for the named layers; one-line error listing the available ones."""
    mods = dict(model.named_modules())
    out = {}
    for name in layers:
        if name not in mods or not name:
            avail = available_layers(model)
            raise UnknownLayerError(f"layer {name!r} not found in {type(model).__name__}; available: "
                                    + ", ".join(avail[:60]) + (" ..." if len(avail) > 60 else ""))
        out[name] = mods[name]
    return out


def to_video_maps(out: torch.Tensor, batch: int) -> torch.Tensor:
    """A layer output as [B, K, *S]: folded TSM frames [B*T, K, h, w] -> [B, K, T, h, w]."""
    if out.dim() == 4 and out.shape[0] != batch and out.shape[0] % batch == 0:
        t = out.shape[0] // batch
        return out.view(batch, t, *out.shape[1:]).transpose(1, 2)
    if out.dim() not in (4, 5):
        raise ValueError(f"layer output of shape {tuple(out.shape)} is not a 2D or 3D feature map")
    return out
