"""A plain 2D ResNet with torchvision's exact parameter names (no torchvision import).

Keys: ``conv1.weight``, ``bn1.{weight,bias,running_mean,running_var,num_batches_tracked}``,
``layer{1..4}.{i}.conv{1,2[,3]}.weight``, ``layer{l}.{i}.bn{1,2[,3]}.*``,
``layer{l}.0.downsample.{0,1}.*``, ``fc.{weight,bias}`` — so a torchvision ResNet-18/34/50
checkpoint saved to a local file loads with ``load_state_dict`` (ResNet-50 "v1.5": the stride
sits on the 3x3 conv of the bottleneck). ``width`` is the base channel count (64 standard);
stage ``l`` has ``width * 2**(l-1)`` planes (times 4 outputs for bottlenecks).

Used as the 2D source for I3D inflation (:func:`mmit_fast.models.inflate_from_2d`), as the
TSM backbone (the blocks take an optional ``shift`` applied to the residual branch input),
and by the tests as the reference of the inflation.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Type, Union

import torch
from torch import nn

__all__ = ["BasicBlock2d", "Bottleneck2d", "ResNet2d", "RESNET_LAYERS", "resnet2d"]

RESNET_LAYERS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3]),
                 101: ("bottleneck", [3, 4, 23, 3]), 152: ("bottleneck", [3, 8, 36, 3])}


class BasicBlock2d(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.shift: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # TSM: residual shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x if self.shift is None else self.shift(x)
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck2d(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.shift: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x if self.shift is None else self.shift(x)
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet2d(nn.Module):
    """torchvision-layout ResNet. ``forward`` gives ImageNet-style logits from ``fc``;
    ``features`` the last conv maps [B, K, h, w]; ``forward_features`` their spatial mean."""

    def __init__(self, depth: int = 50, num_classes: int = 1000, width: int = 64, zero_init_residual: bool = False):
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        if int(width) < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        kind, layers = RESNET_LAYERS[depth]
        block: Type[Union[BasicBlock2d, Bottleneck2d]] = BasicBlock2d if kind == "basic" else Bottleneck2d
        self.depth, self.width = depth, int(width)
        self.inplanes = self.width
        self.conv1 = nn.Conv2d(3, self.width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, self.width, layers[0], 1)
        self.layer2 = self._make_layer(block, self.width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, self.width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, self.width * 8, layers[3], 2)
        self.feature_dim = self.width * 8 * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        init_resnet_(self, zero_init_residual)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods: List[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def blocks(self) -> List[nn.Module]:
        return [blk for layer in (self.layer1, self.layer2, self.layer3, self.layer4) for blk in layer]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def init_resnet_(model: nn.Module, zero_init_residual: bool = False) -> None:
    """torchvision's initialisation: Kaiming-normal (fan_out, ReLU) convs, BN weight 1 / bias 0,
    optionally the last BN of each residual branch at 0 (the block starts as the identity)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in model.modules():
            last = getattr(m, "bn3", None) if hasattr(m, "conv3") else getattr(m, "bn2", None)
            if isinstance(m, nn.Module) and hasattr(m, "downsample") and last is not None:
                nn.init.constant_(last.weight, 0)


def resnet2d(depth: int = 50, num_classes: int = 1000, width: int = 64) -> ResNet2d:
    return ResNet2d(depth=depth, num_classes=num_classes, width=width)
