"""``create_model(name, num_classes, ...)``: the one way to build a model.

=========  ===========  ================================================================
name       modality     kwargs (defaults)
=========  ===========  ================================================================
i3d        video        depth=50, width=64, conv1_t=5, conv1_stride_t=1, pool1_stride_t=2, with_pool2=True,
                        temporal_padding="zeros"
tsm        video        depth=50, width=64, segments=8, fold_div=8
soundnet   audio        width=16
fusion     audio-video  depth/width (video branch), video_model="i3d", audio_width=16,
                        video_pretrained=None, audio_pretrained=None, freeze_backbones=False
moments-   video        depth=50, width=64: the Moments in Time authors' 3D ResNet
resnet3d                (:mod:`mmit_fast.models.moments`; their weights: ``mmit import-weights``)
moments-   video        depth=50, width=64: a torchvision-layout 2D ResNet applied per frame,
resnet2d                logits averaged over time (the authors' 2D ResNet-50)
=========  ===========  ================================================================

Every model also takes ``dropout`` (before the classifier) and ``pretrained``: ``None`` (train
from scratch) or the path of a **local** file (nothing is ever downloaded):

* a 2D ResNet state dict with torchvision names (``conv1.weight`` 4-D, ``fc.*``): inflated for
  ``i3d`` (:func:`inflate_from_2d`), loaded directly for ``tsm``;
* a full mmit checkpoint of the same architecture (``classifier.*`` names, possibly wrapped
  as ``{"model": state_dict, ...}`` or with DDP's ``module.`` prefix): loaded tensor by tensor;
  the classifier is skipped (freshly initialised, with a warning) when its class count differs.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from .base import ClipClassifier, load_matching, read_state_dict
from .fusion import Fusion
from .moments import FrameResNet2D, MomentsResNet3D
from .resnet3d import I3D, inflate_from_2d
from .soundnet import SoundNet
from .tsm import TSM, load_2d_into_tsm

__all__ = ["create_model", "MODELS", "load_pretrained", "run_model", "count_flops", "count_params", "to_channels_last"]


def _is_2d_resnet(sd: Dict[str, torch.Tensor]) -> bool:
    w = sd.get("conv1.weight")
    return w is not None and w.dim() == 4


def load_pretrained(model: ClipClassifier, path: Any) -> Dict[str, list]:
    """Load a local checkpoint into ``model`` (2D ResNet: inflate / direct; else a full checkpoint)."""
    sd = read_state_dict(path)
    src = str(path) if not isinstance(path, dict) else "state dict"
    if isinstance(model, I3D) and _is_2d_resnet(sd):
        return inflate_from_2d(model, sd)
    if isinstance(model, TSM):
        return load_2d_into_tsm(model, sd)
    return load_matching(model, sd, src=src)


def _i3d(num_classes, depth=None, width=None, dropout=0.0, **kw):
    return I3D(num_classes, depth=depth or 50, width=width or 64, dropout=dropout, **kw)


def _tsm(num_classes, depth=None, width=None, dropout=0.0, **kw):
    return TSM(num_classes, depth=depth or 50, width=width or 64, dropout=dropout, **kw)


def _soundnet(num_classes, depth=None, width=None, dropout=0.0, **kw):
    if depth not in (None, 8):
        raise ValueError(f"soundnet has a fixed depth (8 layers), got depth={depth}")
    return SoundNet(num_classes, width=width or 16, dropout=dropout, **kw)


def _fusion(num_classes, depth=None, width=None, dropout=0.0, video_model="i3d", audio_width=16,
            video_pretrained=None, audio_pretrained=None, freeze_backbones=False, **video_kw):
    if video_model not in ("i3d", "tsm"):
        raise ValueError(f"fusion video_model must be 'i3d' or 'tsm', got {video_model!r}")
    vnet = MODELS[video_model](1, depth=depth, width=width, **video_kw)
    if video_pretrained is not None and _is_2d_resnet(read_state_dict(video_pretrained)):
        load_pretrained(vnet, video_pretrained)
        video_pretrained = None
    anet = SoundNet(1, width=audio_width)
    m = Fusion(num_classes, vnet, anet, dropout=dropout, freeze_backbones=freeze_backbones)
    if video_pretrained is not None:
        m.load_branch("video", video_pretrained)
    if audio_pretrained is not None:
        m.load_branch("audio", audio_pretrained)
    return m


def _moments3d(num_classes, depth=None, width=None, dropout=0.0):
    return MomentsResNet3D(num_classes, depth=depth or 50, width=width or 64, dropout=dropout)


def _moments2d(num_classes, depth=None, width=None, dropout=0.0):
    return FrameResNet2D(num_classes, depth=depth or 50, width=width or 64, dropout=dropout)


MODELS: Dict[str, Callable[..., ClipClassifier]] = {"i3d": _i3d, "tsm": _tsm, "soundnet": _soundnet, "fusion": _fusion,
                                                   "moments-resnet3d": _moments3d, "moments-resnet2d": _moments2d}


def create_model(name: str, num_classes: int, *, depth: Optional[int] = None, width: Optional[int] = None,
                 pretrained: Any = None, dropout: float = 0.0, **kwargs) -> ClipClassifier:
    """Build ``name`` ("i3d" | "tsm" | "soundnet" | "fusion") with ``num_classes`` outputs.

    ``depth``: ResNet depth (18, 34, 50, 101, 152) for i3d/tsm/fusion; ``width``: base channels
    (64 standard ResNet, 16 standard SoundNet; e.g. 16 / 8 for CPU runs); ``pretrained``: local
    file or None (see the module docstring); ``dropout`` before the classifier; other kwargs go
    to the model class. The model records ``model.name`` and ``model.create_kwargs`` so a
    checkpoint can rebuild it: ``create_model(m.name, m.num_classes, **m.create_kwargs)``.
    """
    key = str(name).lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    model = MODELS[key](int(num_classes), depth=depth, width=width, dropout=dropout, **kwargs)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    model.name = key
    model.create_kwargs = dict(depth=depth, width=width, dropout=dropout,
                               **{k: v for k, v in kwargs.items() if not k.endswith("_pretrained")})
    return model


def run_model(model: nn.Module, video: Optional[torch.Tensor] = None, audio: Optional[torch.Tensor] = None,
              has_audio: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Call ``model`` with the inputs its ``modality`` needs (works through DDP wrappers)."""
    modality = getattr(getattr(model, "module", model), "modality", "video")
    if modality == "video":
        if video is None:
            raise ValueError("a video model needs video input")
        return model(video)
    if modality == "audio":
        if audio is None:
            raise ValueError("an audio model needs audio input (load the data with with_audio=True)")
        return model(audio)
    if video is None:
        raise ValueError("a fusion model needs video input")
    return model(video, audio, has_audio)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Put the conv weights in the channels-last layout that suits each model (faster convs on
    GPUs with tensor cores): I3D ``channels_last_3d`` (5-D weights), TSM ``channels_last`` (its
    weights are 4-D, so ``model.to(memory_format=torch.channels_last_3d)`` would raise),
    SoundNet unchanged (1-D convs), fusion: its video branch. Returns the model."""
    m = getattr(model, "module", model)
    if isinstance(m, Fusion):
        to_channels_last(m.video)
    elif isinstance(m, (I3D, MomentsResNet3D)):
        m.to(memory_format=torch.channels_last_3d)
    elif isinstance(m, (TSM, FrameResNet2D)):
        m.to(memory_format=torch.channels_last)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of conv and linear layers for one forward pass on ``inputs``
    (the usual "FLOPs" of model tables; BN/ReLU/pooling not counted)."""
    total = [0]

    def conv_hook(m, inp, out):
        k = m.weight[0].numel()  # (Cin/groups) * prod(kernel)
        total[0] += out.numel() * k

    def lin_hook(m, inp, out):
        total[0] += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return total[0]
