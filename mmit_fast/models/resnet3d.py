"""I3D: a ResNet inflated to 3D (Carreira & Zisserman 2017; ResNet form as in Wang et al. 2018).

Input ``[B, 3, T, H, W]`` (authors: T=16 frames, 224x224, ImageNet mean/std). Layout:

* ``conv1``: (5, 7, 7) conv, stride (1, 2, 2) (``conv1_stride_t=2``: (2, 2, 2), halving its cost,
  as mmaction2's I3D config); ``bn1``; ReLU;
* ``maxpool``: (3, 3, 3) max pool, stride (2, 2, 2) (``pool1_stride_t=1``: (1, 3, 3), stride (1, 2, 2));
* ``layer1`` .. ``layer4`` (torchvision's stages), with a (2, 1, 1) max pool of temporal stride 2
  after ``layer1`` (``with_pool2``). Every other block is *inflated*: a bottleneck's first conv
  becomes (3, 1, 1) (a basic block's becomes (3, 3, 3)); the rest keep a time extent of 1.
  Pattern (as mmaction2's I3D R50): layer1 all blocks, layer2/3 blocks 0, 2, 4, ..., layer4
  blocks 1, 3, .... Strides inside the stages are spatial only.
* global average pooling over (T', H', W') and ``classifier`` (nn.Linear).
* ``last_stride=1`` (for interpretation): ``layer4`` keeps stride 1 and dilates by 2 every 3x3
  spatial conv after the place of the removed stride (DeepLab's dilated ResNet), so the last
  maps are 1/16 of the input instead of 1/32 (7 x 7 at 112 px, 14 x 14 at 224) with the same
  parameters: the stride-2 net's maps computed at every position (its maps are the even
  positions of these, exactly).
* ``layer3_stride=1`` likewise removes ``layer3``'s stride (torchvision's
  ``replace_stride_with_dilation``, DeepLab's output stride 8 with both): the dilation doubles at
  each removed stride and holds from there on, and the conv that carried a stage's stride keeps
  the dilation of the stage before. Stage ``i``: ``d_i = 2^(removed strides up to i)``, its first
  3x3 conv ``d_(i-1)``, the others ``d_i``. With both, the last maps are 1/8 of the input
  (14 x 14 at 112 px), and the stride-32 net's maps are these at every 4th position, exactly.

So 16 x 224 x 224 gives ``features`` of shape [B, 2048, 4, 7, 7] for ResNet-50 (K = 8 * width
* 4; ResNet-18/34: K = 8 * width).

**Inflation** (:func:`inflate_from_2d`): a 2D kernel ``w2`` [O, I, h, w] becomes
``w3[:, :, t] = w2 / kt`` for every t of the kt time taps (repeat over time, divide by the
length), BatchNorm parameters and running statistics are copied, ``fc.*`` goes to
``classifier.*`` when the class count matches. On a *static* clip (T identical frames) a
temporal conv then sums kt identical 2D responses divided by kt, i.e. equals the 2D conv —
exactly, with ``temporal_padding="replicate"`` (the padded frames are copies of the edge frame,
so every time step sees a full window); with the standard zero padding (default) only time
steps whose window lies inside the clip match, edge steps see a fraction of the kernel.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import ClipClassifier, read_state_dict
from .resnet2d import RESNET_LAYERS, init_resnet_

__all__ = ["I3D", "inflate_from_2d", "i3d_inflate_pattern", "TConv3d"]

_PAD_MODES = ("zeros", "replicate")


class TConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameter names) whose temporal padding is either zeros (built in)
    or ``replicate`` (the edge frame repeated; spatial padding stays zeros)."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, temporal_padding: str = "zeros", dilation=1):
        if temporal_padding not in _PAD_MODES:
            raise ValueError(f"temporal_padding must be one of {_PAD_MODES}, got {temporal_padding!r}")
        kernel, stride, padding = _triple(kernel), _triple(stride), _triple(padding)
        self.tpad = padding[0] if temporal_padding == "replicate" else 0
        if self.tpad:
            padding = (0, padding[1], padding[2])
        super().__init__(cin, cout, kernel, stride, padding, dilation=_triple(dilation), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tpad:
            x = F.pad(x, (0, 0, 0, 0, self.tpad, self.tpad), mode="replicate")
        if (self.in_channels <= 4 and self.kernel_size[0] > 1 and x.device.type == "cpu"
                and torch.is_grad_enabled() and self.weight.requires_grad):
            return _conv3d_as_2d_taps(x, self.weight, self.stride, self.padding)
        return super().forward(x)


def _conv3d_as_2d_taps(x: torch.Tensor, w: torch.Tensor, stride, padding) -> torch.Tensor:
    """``F.conv3d(x, w, stride=(st, sh, sw), padding=(pt, ph, pw))`` computed as the sum over the kt
    time taps of 2D convs of the time-shifted frames: ``y[:, :, t] = sum_i conv2d(x[:, :, st*t+i-pt], w[:, :, i])``.
    Same result (up to float rounding); used for the 3-channel stem while training on CPU, where
    oneDNN's 3D weight gradient for so few input channels is ~2x slower than kt 2D ones."""
    pt = padding[0]
    if pt:
        x = F.pad(x, (0, 0, 0, 0, pt, pt))
    b, c, tp, h, wd = x.shape
    kt, st = w.shape[2], stride[0]
    t = (tp - kt) // st + 1
    xf = x.transpose(1, 2)  # [B, T+2pt, C, H, W]
    y = None
    for i in range(kt):
        yi = F.conv2d(xf[:, i:i + (t - 1) * st + 1:st].reshape(b * t, c, h, wd), w[:, :, i], None, stride[1:], padding[1:])
        y = yi if y is None else y + yi
    return y.view(b, t, *y.shape[1:]).transpose(1, 2)


def _triple(v) -> Tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class BasicBlock3d(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, inflate=True, tp="zeros", dilation=(1, 1)):
        super().__init__()
        d, e = dilation   # spatial dilation of conv1 (which carries any stride), of conv2
        k1, p1 = ((3, 3, 3), (1, d, d)) if inflate else ((1, 3, 3), (0, d, d))
        self.conv1 = TConv3d(inplanes, planes, k1, (1, stride, stride), p1, tp, (1, d, d))
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = TConv3d(planes, planes, (1, 3, 3), 1, (0, e, e), tp, (1, e, e))
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck3d(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, inflate=True, tp="zeros", dilation=(1, 1)):
        super().__init__()
        d = dilation[0]   # spatial dilation of the 3x3 conv (which carries any stride)
        k1, p1 = ((3, 1, 1), (1, 0, 0)) if inflate else ((1, 1, 1), (0, 0, 0))
        self.conv1 = TConv3d(inplanes, planes, k1, 1, p1, tp)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = TConv3d(planes, planes, (1, 3, 3), (1, stride, stride), (0, d, d), tp, (1, d, d))
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = TConv3d(planes, planes * 4, 1, 1, 0, tp)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def i3d_inflate_pattern(layers: Sequence[int]) -> List[List[bool]]:
    """Which blocks get a temporal kernel: stage 1 all, stages 2-3 even blocks, stage 4 odd blocks
    (ResNet-50: (1,1,1), (1,0,1,0), (1,0,1,0,1,0), (0,1,0))."""
    return [
        [True] * layers[0],
        [i % 2 == 0 for i in range(layers[1])],
        [i % 2 == 0 for i in range(layers[2])],
        [i % 2 == 1 for i in range(layers[3])],
    ]


class I3D(ClipClassifier):
    """Inflated 3D ResNet (see the module docstring). ``width`` = base channels (64 standard)."""

    modality = "video"
    feature_layers = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        num_classes: int,
        depth: int = 50,
        width: int = 64,
        dropout: float = 0.0,
        conv1_t: int = 5,
        conv1_stride_t: int = 1,
        pool1_stride_t: int = 2,
        with_pool2: bool = True,
        temporal_padding: str = "zeros",
        zero_init_residual: bool = False,
        last_stride: int = 2,
        layer3_stride: int = 2,
    ):
        if depth not in RESNET_LAYERS:
            raise ValueError(f"I3D depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        if int(width) < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if conv1_t < 1 or conv1_t % 2 == 0:
            raise ValueError(f"conv1_t must be a positive odd number, got {conv1_t}")
        if conv1_stride_t not in (1, 2):
            raise ValueError(f"conv1_stride_t must be 1 or 2, got {conv1_stride_t}")
        if pool1_stride_t not in (1, 2):
            raise ValueError(f"pool1_stride_t must be 1 or 2, got {pool1_stride_t}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        if layer3_stride not in (1, 2):
            raise ValueError(f"layer3_stride must be 1 or 2, got {layer3_stride}")
        kind, layers = RESNET_LAYERS[depth]
        block = BasicBlock3d if kind == "basic" else Bottleneck3d
        width = int(width)
        super().__init__(num_classes, width * 8 * block.expansion, dropout)
        self.depth, self.width, self.temporal_padding = depth, width, temporal_padding
        self.config = dict(depth=depth, width=width, conv1_t=conv1_t, conv1_stride_t=conv1_stride_t,
                           pool1_stride_t=pool1_stride_t,
                           with_pool2=with_pool2, temporal_padding=temporal_padding, last_stride=last_stride,
                           layer3_stride=layer3_stride)
        tp = temporal_padding
        self.conv1 = TConv3d(3, width, (conv1_t, 7, 7), (conv1_stride_t, 2, 2), (conv1_t // 2, 3, 3), tp)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        if pool1_stride_t == 2:
            self.maxpool = nn.MaxPool3d((3, 3, 3), (2, 2, 2), (1, 1, 1))
        else:
            self.maxpool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.pool2 = nn.MaxPool3d((2, 1, 1), (2, 1, 1)) if with_pool2 else nn.Identity()
        self._t_div = conv1_stride_t * pool1_stride_t * (2 if with_pool2 else 1)
        self.inplanes = width
        pattern = i3d_inflate_pattern(layers)
        dil = 1
        for i, (n, stride) in enumerate(zip(layers, (1, 2, layer3_stride, last_stride))):
            prev = dil
            if i >= 2 and stride == 1:   # a removed stride 2: dilate from here on
                dil *= 2
            setattr(self, f"layer{i + 1}",
                    self._make_layer(block, width * 2**i, n, stride, pattern[i], tp, dil, prev))
        init_resnet_(self, zero_init_residual)

    def _make_layer(self, block, planes, blocks, stride, inflate, tp, dilation=1, first_dilation=1):
        """One stage; ``dilation`` > 1 (a removed stride here or before): every 3x3 spatial conv
        after the place of the removed stride is dilated, the first block's first conv (the place
        of the stride) keeps ``first_dilation`` (the previous stage's), so the maps are the
        stride-2 net's maps computed at every position (DeepLab's "a trous")."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                TConv3d(self.inplanes, planes * block.expansion, 1, (1, stride, stride), 0, tp),
                nn.BatchNorm3d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, downsample, inflate[0], tp, (first_dilation, dilation))]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, 1, None, inflate[i], tp, (dilation, dilation)) for i in range(1, blocks)]
        return nn.Sequential(*mods)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects video [B, 3, T, H, W], got shape {tuple(x.shape)}")
        if x.shape[2] < self._t_div:
            raise ValueError(f"I3D: clip of {x.shape[2]} frames is too short; needs at least {self._t_div}")

    def stage_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Outputs of layer1..layer4 (block-wise interpretation)."""
        self._check(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        x = self.layer1(x)
        outs.append(x)
        x = self.pool2(x)
        for layer in (self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last conv maps [B, K, T', H', W'] (layer4 output, after its final ReLU)."""
        self._check(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.pool2(self.layer1(x))
        return self.layer4(self.layer3(self.layer2(x)))


def inflate_from_2d(model: I3D, state_dict_or_path: Any, *, strict: bool = True) -> Dict[str, list]:
    """Initialise ``model`` (an :class:`I3D`) from a 2D ResNet state dict (torchvision names).

    Each 3D conv weight [O, I, kt, h, w] is set to the 2D weight [O, I, h, w] repeated kt times
    along time and divided by kt (so a static clip gives the 2D response); BatchNorm weights,
    biases and running statistics are copied; ``fc.weight``/``fc.bias`` go to the classifier
    when the class count matches (else the classifier keeps its fresh initialisation, with a
    warning). ``state_dict_or_path``: a mapping or a local file (never downloaded).
    Raises ValueError naming the tensor when a backbone tensor is missing or the wrong shape
    (e.g. a ResNet-18 checkpoint for a ResNet-50 I3D). Returns ``{"loaded": [...], "skipped": [...]}``.
    """
    sd2 = read_state_dict(state_dict_or_path)
    src = state_dict_or_path if isinstance(state_dict_or_path, str) else "2D state dict"
    own = model.state_dict()
    loaded, skipped, bad = [], [], []
    for k, v in own.items():
        k2 = "fc." + k[len("classifier."):] if k.startswith("classifier.") else k
        if k2 not in sd2:
            if k.startswith("classifier.") or k.endswith("num_batches_tracked"):
                skipped.append(k)
            else:
                bad.append(f"{k2} (missing)")
            continue
        w2 = sd2[k2]
        if v.dim() == 5 and w2.dim() == 4:
            kt = v.shape[2]
            if tuple(w2.shape) != (v.shape[0], v.shape[1], v.shape[3], v.shape[4]):
                bad.append(f"{k2} (shape {tuple(w2.shape)}, needs {(v.shape[0], v.shape[1], v.shape[3], v.shape[4])})")
                continue
            own[k] = (w2.to(v.dtype).unsqueeze(2) / kt).expand(-1, -1, kt, -1, -1).contiguous()
        elif tuple(w2.shape) == tuple(v.shape):
            own[k] = w2.to(v.dtype).clone()
        elif k.startswith("classifier."):
            skipped.append(k)
            continue
        else:
            bad.append(f"{k2} (shape {tuple(w2.shape)}, needs {tuple(v.shape)})")
            continue
        loaded.append(k)
    if bad and strict:
        raise ValueError(f"inflate_from_2d: {src} does not fit this I3D (depth {model.depth}, width {model.width}): "
                         + "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
    if any(k.startswith("classifier.") for k in skipped):
        warnings.warn(f"inflate_from_2d: classifier not taken from {src} (class count differs); freshly initialised")
    model.load_state_dict(own)
    return {"loaded": loaded, "skipped": skipped}
