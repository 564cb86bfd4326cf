"""SoundNet (Aytar, Vondrick & Torralba 2016): an 8-layer 1D conv net on the raw waveform.

Input ``[B, 1, N]``: mono audio at 22,050 Hz (3 s clips: N = 66,150). Layers (SoundNet-8,
channels for ``width=16``; every conv is Conv1d -> BatchNorm1d -> ReLU):

=====  ========  ======  ======  =======  ================
layer  channels  kernel  stride  padding  then
=====  ========  ======  ======  =======  ================
conv1  16        64      2       32       max pool 8 / 8
conv2  32        32      2       16       max pool 8 / 8
conv3  64        16      2       8
conv4  128       8       2       4
conv5  256       4       2       2        max pool 4 / 4
conv6  512       4       2       2
conv7  1024      4       2       2
=====  ========  ======  ======  =======  ================

(channels scale with ``width``; the original's conv8 prediction heads are replaced by global
average pooling over time and ``classifier``). A 3 s clip (66,150 samples) gives ``features`` [B, 1024, 3].
The shortest accepted input is :data:`MIN_SAMPLES` samples (shorter clips raise ValueError;
pad them with zeros upstream).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import ClipClassifier
from .resnet2d import init_resnet_

__all__ = ["SoundNet", "SAMPLE_RATE", "MIN_SAMPLES"]

SAMPLE_RATE = 22050
_SPEC = [  # (channel multiple of width, kernel, stride, padding, pool after)
    (1, 64, 2, 32, 8),
    (2, 32, 2, 16, 8),
    (4, 16, 2, 8, 0),
    (8, 8, 2, 4, 0),
    (16, 4, 2, 2, 4),
    (32, 4, 2, 2, 0),
    (64, 4, 2, 2, 0),
]


def _out_len(n: int) -> int:
    for _, k, s, p, pool in _SPEC:
        n = (n + 2 * p - k) // s + 1
        if n < 1:
            return 0
        if pool:
            n = n // pool
            if n < 1:
                return 0
    return n


def _min_samples() -> int:
    lo, hi = 1, 1 << 16
    while lo < hi:
        mid = (lo + hi) // 2
        if _out_len(mid) >= 1:
            hi = mid
        else:
            lo = mid + 1
    return lo


MIN_SAMPLES = _min_samples()


class SoundNet(ClipClassifier):
    """SoundNet-8 backbone + linear classifier. ``width`` = conv1 channels (16 standard)."""

    modality = "audio"

    def __init__(self, num_classes: int, width: int = 16, dropout: float = 0.0):
        if int(width) < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        width = int(width)
        super().__init__(num_classes, width * _SPEC[-1][0], dropout)
        self.width = width
        self.config = dict(width=width)
        cin = 1
        layers = []
        for i, (mult, k, s, p, pool) in enumerate(_SPEC):
            cout = width * mult
            block = [nn.Conv1d(cin, cout, k, s, p, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
            if pool:
                block.append(nn.MaxPool1d(pool, pool))
            layers.append(nn.Sequential(*block))
            cin = cout
        self.convs = nn.ModuleList(layers)
        self.feature_layers = tuple(f"convs.{i}" for i in range(len(layers)))
        init_resnet_(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last conv maps [B, K, L'] (K = 64 * width)."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"SoundNet expects a mono waveform [B, 1, N], got shape {tuple(x.shape)}")
        if x.shape[2] < MIN_SAMPLES:
            raise ValueError(f"SoundNet: waveform of {x.shape[2]} samples is too short; needs >= {MIN_SAMPLES} "
                             f"({MIN_SAMPLES / SAMPLE_RATE:.3f} s at {SAMPLE_RATE} Hz)")
        for layer in self.convs:
            x = layer(x)
        return x
