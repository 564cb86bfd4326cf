"""TSM: a 2D ResNet with the Temporal Shift Module (Lin, Gan & Han 2019), residual-shift form.

Input ``[B, 3, T, H, W]`` with T = ``segments`` (one frame per segment, TSN sampling). The
clip is folded to a 2D batch ``[B*T, 3, H, W]``; inside every residual block, *before the
first conv of the residual branch* (the identity path is not shifted), the channels of the
branch input ``x`` [B*T, C, H, W] (viewed as [B, T, C, H, W]) are shifted in time:

* channels ``[0, C/8)``  : ``out[:, t] = x[:, t+1]`` (shifted *backward* in time: frame t sees
  frame t+1; the last frame gets zeros),
* channels ``[C/8, 2C/8)``: ``out[:, t] = x[:, t-1]`` (shifted *forward* in time: frame t sees
  frame t-1; the first frame gets zeros),
* channels ``[2C/8, C)`` : unchanged,

with ``C/8`` rounded down (``fold = C // fold_div``, ``fold_div = 8``). The shift has no
parameters, so the state dict is exactly torchvision's ResNet (``fc`` renamed ``classifier``)
and a 2D ImageNet checkpoint loads directly.

``features(x)`` returns the last conv maps re-arranged as video maps [B, K, T, h, w];
pooling averages over (T, h, w) — the same as TSM's average consensus of per-segment logits,
because the classifier is linear.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from .base import ClipClassifier, load_matching, read_state_dict
from .resnet2d import RESNET_LAYERS, ResNet2d

__all__ = ["TSM", "temporal_shift", "TemporalShift"]


def temporal_shift(x: torch.Tensor, segments: int, fold_div: int = 8) -> torch.Tensor:
    """Shift ``x`` [N*T, C, H, W] (T = ``segments``) in time: see the module docstring."""
    nt, c = x.shape[0], x.shape[1]
    if nt % segments:
        raise ValueError(f"temporal_shift: batch {nt} is not a multiple of segments={segments}")
    n = nt // segments
    x = x.view(n, segments, c, *x.shape[2:])
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]  # backward in time (t <- t+1)
    out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]  # forward in time (t <- t-1)
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    return out.view(nt, c, *x.shape[3:])


class TemporalShift(nn.Module):
    """Parameter-free module wrapper of :func:`temporal_shift`."""

    def __init__(self, segments: int, fold_div: int = 8):
        super().__init__()
        self.segments, self.fold_div = int(segments), int(fold_div)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_shift(x, self.segments, self.fold_div)

    def extra_repr(self) -> str:
        return f"segments={self.segments}, fold_div={self.fold_div}"


class TSM(ClipClassifier):
    """TSM ResNet (default ResNet-50, 8 segments). ``width`` = base channels (64 standard)."""

    modality = "video"
    feature_layers = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, num_classes: int, depth: int = 50, width: int = 64, segments: int = 8,
                 fold_div: int = 8, dropout: float = 0.0):
        if depth not in RESNET_LAYERS:
            raise ValueError(f"TSM depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        if int(segments) < 1:
            raise ValueError(f"segments must be >= 1, got {segments}")
        net = ResNet2d(depth=depth, num_classes=1, width=width)
        super().__init__(num_classes, net.feature_dim, dropout)
        self.depth, self.width, self.segments, self.fold_div = depth, int(width), int(segments), int(fold_div)
        self.config = dict(depth=depth, width=int(width), segments=int(segments), fold_div=int(fold_div))
        # adopt the 2D backbone's modules under torchvision's names (fc dropped)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.shift = TemporalShift(self.segments, self.fold_div)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in layer:
                blk.shift = self.shift

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"TSM expects video [B, 3, T, H, W], got shape {tuple(x.shape)}")
        if x.shape[2] != self.segments:
            raise ValueError(f"TSM was built for {self.segments} segments, got a clip of T={x.shape[2]} frames")
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w)

    def _unfold(self, y: torch.Tensor) -> torch.Tensor:
        bt, k, h, w = y.shape
        return y.view(bt // self.segments, self.segments, k, h, w).transpose(1, 2)

    def stage_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Outputs of layer1..layer4 as video maps [B, K_l, T, h_l, w_l]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(self._fold(x)))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(self._unfold(x))
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last conv maps [B, K, T, h, w]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(self._fold(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self._unfold(x)


def load_2d_into_tsm(model: TSM, state_dict_or_path: Any) -> Dict[str, list]:
    """Load a torchvision-layout 2D ResNet state dict into a TSM (``fc.*`` -> ``classifier.*``
    when the class count matches)."""
    sd = read_state_dict(state_dict_or_path)
    sd = {("classifier." + k[3:] if k.startswith("fc.") else k): v for k, v in sd.items()}
    src = state_dict_or_path if isinstance(state_dict_or_path, str) else "2D state dict"
    return load_matching(model, sd, src=str(src))
