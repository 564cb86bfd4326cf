"""The interface every mmit-fast model shares, and checkpoint loading helpers.

Every model is a :class:`ClipClassifier`::

    f      = model.features(x)          # last conv feature maps, [B, K, *spatial]
    pooled = model.pool(f)              # global average pooling over every axis after K -> [B, K]
    pooled = model.forward_features(x)  # = pool(features(x))
    logits = model(x)                   # = classifier(dropout(pooled)) -> [B, C]

``model.classifier`` is the final :class:`torch.nn.Linear` (weight ``W`` of shape [C, K]),
applied directly after global average pooling, so the class activation map of class ``c``
is ``CAM_c = sum_k W[c, k] f_k`` and averaging it over the map gives ``logit_c - b_c``
(linearity of the mean). ``model.modality`` is ``"video"``, ``"audio"`` or ``"audio-video"``.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

__all__ = ["ClipClassifier", "read_state_dict", "replace_classifier", "load_matching"]


class ClipClassifier(nn.Module):
    """Base class: a backbone ending in global average pooling and one linear layer."""

    modality: str = "video"

    def __init__(self, num_classes: int, feature_dim: int, dropout: float = 0.0):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)
        self.dropout = nn.Dropout(float(dropout)) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)

    # -- to implement -------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------
    @staticmethod
    def pool(f: torch.Tensor) -> torch.Tensor:
        """Global average pooling: mean over every axis after the channel axis -> [B, K]."""
        return f.flatten(2).mean(dim=2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, K] (the classifier's input, before dropout)."""
        return self.pool(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))


# ------------------------------------------------------------------ checkpoint reading
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "net")


def read_state_dict(path_or_sd: Any) -> Dict[str, torch.Tensor]:
    """Read a state dict from a local file (or pass a mapping through).

    Accepts a plain state dict or a checkpoint dict that holds one under ``state_dict``,
    ``model``, ``model_state``, ``model_state_dict`` or ``net``; strips the ``module.``
    prefix that DistributedDataParallel / DataParallel add. Never downloads anything.
    """
    if isinstance(path_or_sd, Mapping):
        sd = path_or_sd
        src = "<state dict>"
    else:
        src = os.fspath(path_or_sd)
        if not os.path.isfile(src):
            raise FileNotFoundError(
                f"pretrained weights {src!r}: no such file (weights are never downloaded; "
                "pass a local file or train from scratch with pretrained=None)"
            )
        from .safe_load import safe_torch_load  # weights_only=True, never an unsafe fallback

        sd = safe_torch_load(src)
    for _ in range(3):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
        if not isinstance(sd, Mapping):
            break
        inner = next((sd[k] for k in _WRAPPER_KEYS if k in sd and isinstance(sd[k], Mapping)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, Mapping) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"pretrained weights {src!r}: no state dict (mapping of name -> tensor) found")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def load_matching(
    model: nn.Module, sd: Mapping[str, torch.Tensor], *, src: str = "checkpoint", skip_prefixes: Tuple[str, ...] = ()
) -> Dict[str, list]:
    """Copy every tensor of ``sd`` whose name and shape match ``model``'s.

    The classifier is skipped (with a warning) when its shape differs — the usual case when
    fine-tuning on a new vocabulary. Any other missing or mismatched backbone tensor raises
    ValueError naming it, since silently training a half-loaded backbone is a bug.
    Returns ``{"loaded": [...], "skipped": [...]}``.
    """
    own = model.state_dict()
    loaded, skipped, bad = [], [], []
    for k, v in own.items():
        if k.endswith("num_batches_tracked"):
            if k in sd:
                own[k] = sd[k].clone()
            continue
        if any(k.startswith(p) for p in skip_prefixes):
            skipped.append(k)
            continue
        if k not in sd:
            (skipped if k.startswith("classifier.") else bad).append(k if k.startswith("classifier.") else f"{k} (missing)")
            continue
        if tuple(sd[k].shape) != tuple(v.shape):
            if k.startswith("classifier."):
                skipped.append(k)
            else:
                bad.append(f"{k} (shape {tuple(sd[k].shape)} in {src}, {tuple(v.shape)} in model)")
            continue
        own[k] = sd[k].to(v.dtype).clone()
        loaded.append(k)
    if bad:
        raise ValueError(f"{src}: does not fit this model: " + "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
    if any(k.startswith("classifier.") for k in skipped):
        warnings.warn(f"{src}: classifier not loaded (shape differs or absent); it stays freshly initialised")
    model.load_state_dict(own)
    return {"loaded": loaded, "skipped": skipped}


def replace_classifier(model: ClipClassifier, num_classes: int, *, bias_init: Optional[float] = None) -> ClipClassifier:
    """Swap ``model.classifier`` for a fresh ``nn.Linear(feature_dim, num_classes)`` (fine-tuning
    on a new vocabulary); the backbone is untouched. Returns the model (modified in place)."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    old = model.classifier
    new = nn.Linear(old.in_features, int(num_classes)).to(device=old.weight.device, dtype=old.weight.dtype)
    if bias_init is not None:
        nn.init.constant_(new.bias, float(bias_init))
    model.classifier = new
    model.num_classes = int(num_classes)
    return model
