"""The networks of the Moments in Time / Multi-Moments in Time authors' released models.

:class:`MomentsResNet3D` (``create_model("moments-resnet3d")``): the authors' 3D ResNet
(their ``ResNet3D``; released as ``moments_RGB_imagenet_resnet3d50_segment16.pth.tar`` and the
M-MiT ``multi_resnet3d50``), written from its description. Input ``[B, 3, T, H, W]``
(16 frames, 224 x 224, ImageNet mean/std):

* ``conv1``: (7, 7, 7) conv, stride (1, 2, 2), padding 3; ``bn1``; ReLU;
* ``maxpool``: (3, 3, 3) max pool, stride 2 in time and space, padding 1;
* ``layer1`` .. ``layer4``: bottleneck blocks ``conv1`` (1x1x1) -> ``conv2`` (3x3x3, padding 1,
  carries the stride) -> ``conv3`` (1x1x1, 4x planes), each conv followed by its BatchNorm,
  ReLU after bn1, bn2 and after the residual sum; projection shortcut ``downsample`` =
  (1x1x1 conv with the block's stride, BatchNorm) on the first block of a stage whose stride
  or width changes. Stage 1 has stride 1, stages 2-4 stride 2 **in time too**. Depths 18/34
  use basic blocks of two 3x3x3 convs (stride on the first);
* global average pooling over (T', H', W') and ``classifier`` (``last_linear`` in their files).

So 16 x 224 x 224 gives ``features`` [B, 2048, 1, 7, 7] for depth 50 (time: 16 -> 8 after
the pool, -> 4, 2, 1 through stages 2-4).

:class:`FrameResNet2D` (``create_model("moments-resnet2d")``): a 2D ResNet with torchvision's
layout (:class:`~mmit_fast.models.resnet2d.ResNet2d`, ResNet-50 v1.5: stride on the 3x3 conv;
the authors' ``moments_RGB_resnet50_imagenetpretrained.pth.tar`` is a torchvision
``resnet50``) applied to every frame. ``features`` stacks the per-frame maps along time,
``[B, K, T, h, w]``; pooling over (T, h, w) then the linear head gives
``logits = 1/T sum_t fc(mean_hw f_t)``: the mean of the per-frame logits (the authors' test
script averages per-frame *softmax* probabilities instead; the ranking of one frame's classes
is the same, the average over frames differs slightly).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from .base import ClipClassifier
from .resnet2d import RESNET_LAYERS, ResNet2d, init_resnet_

__all__ = ["MomentsResNet3D", "FrameResNet2D"]


def _check_depth_width(depth: int, width: int) -> None:
    if depth not in RESNET_LAYERS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
    if int(width) < 1:
        raise ValueError(f"width must be >= 1, got {width}")


def _check_video(name: str, x: torch.Tensor) -> None:
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"{name} expects video [B, 3, T, H, W], got shape {tuple(x.shape)}")


class Basic3d(nn.Module):
    """Two 3x3x3 convs (stride on the first), the authors' ``BasicBlock``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module = None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck3dFull(nn.Module):
    """1x1x1 -> 3x3x3 (stride) -> 1x1x1 (4x planes), the authors' ``Bottleneck``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module = None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class MomentsResNet3D(ClipClassifier):
    """The authors' 3D ResNet (see the module docstring). ``width`` = base channels (64 standard)."""

    modality = "video"
    feature_layers = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, num_classes: int, depth: int = 50, width: int = 64, dropout: float = 0.0):
        _check_depth_width(depth, width)
        kind, layers = RESNET_LAYERS[depth]
        block = Basic3d if kind == "basic" else Bottleneck3dFull
        width = int(width)
        super().__init__(num_classes, width * 8 * block.expansion, dropout)
        self.depth, self.width = depth, width
        self.conv1 = nn.Conv3d(3, width, 7, (1, 2, 2), 3, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, 2, 1)
        self.inplanes = width
        for i, (n, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
            setattr(self, f"layer{i + 1}", self._make_layer(block, width * 2**i, n, stride))
        init_resnet_(self)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv3d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm3d(planes * block.expansion))
        mods: List[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def stage_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Outputs of layer1..layer4 (block-wise interpretation)."""
        _check_video("moments-resnet3d", x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last conv maps [B, K, T', H', W'] (layer4 output, after its final ReLU)."""
        _check_video("moments-resnet3d", x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class FrameResNet2D(ClipClassifier):
    """A torchvision-layout 2D ResNet applied frame by frame (see the module docstring).

    Its parameters carry torchvision's names (``conv1``, ``bn1``, ``layer1``..``layer4``) with
    ``fc`` renamed ``classifier``."""

    modality = "video"
    feature_layers = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, num_classes: int, depth: int = 50, width: int = 64, dropout: float = 0.0):
        _check_depth_width(depth, width)
        trunk = ResNet2d(depth=depth, num_classes=1, width=width)
        super().__init__(num_classes, trunk.feature_dim, dropout)
        self.depth, self.width = depth, int(width)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(trunk, name))

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> [B*T, 3, H, W] (frame-major within each clip)."""
        _check_video("moments-resnet2d", x)
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w)

    def _clips(self, f: torch.Tensor, b: int) -> torch.Tensor:
        """[B*T, K, h, w] -> [B, K, T, h, w]."""
        bt, k, h, w = f.shape
        return f.reshape(b, bt // b, k, h, w).transpose(1, 2)

    def stage_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Outputs of layer1..layer4, each [B, K_l, T, h_l, w_l]."""
        b = x.shape[0]
        y = self.maxpool(self.relu(self.bn1(self.conv1(self._frames(x)))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            y = layer(y)
            outs.append(self._clips(y, b))
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame last conv maps stacked along time, [B, K, T, h, w]."""
        b = x.shape[0]
        y = self.maxpool(self.relu(self.bn1(self.conv1(self._frames(x)))))
        y = self.layer4(self.layer3(self.layer2(self.layer1(y))))
        return self._clips(y, b)
