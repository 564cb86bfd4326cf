"""Spatio-temporal-auditory fusion (paper section 6.1): concatenate the pooled features of a
video network (I3D by default) and of SoundNet, and classify them with one linear layer.

``logits = classifier(dropout([pool(video_net.features(video)), pool(soundnet.features(audio))]))``
with ``classifier`` an ``nn.Linear(K_v + K_a, C)``. The branches keep their own
layouts (``model.video``, ``model.audio``) but have no classifiers of their own (replaced by
``nn.Identity``), so a full mmit checkpoint of an I3D or SoundNet loads into a branch with
:meth:`Fusion.load_branch` (its classifier is ignored).

Missing audio: ``audio=None`` or rows with ``has_audio[b] = False`` get an all-zero audio
feature vector (so those rows are classified from video alone, through the video half of
``classifier``'s weight).

``features(video, audio)`` returns ``(video_maps, audio_maps)``; for a class activation map
of the video stream use ``classifier.weight[:, :model.video_dim]``.
``freeze_backbones=True`` trains only the linear layer (the paper's "train a single linear
layer" on top of trained networks).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .base import ClipClassifier, load_matching, read_state_dict

__all__ = ["Fusion"]


class Fusion(ClipClassifier):
    modality = "audio-video"

    def __init__(self, num_classes: int, video_net: ClipClassifier, audio_net: ClipClassifier,
                 dropout: float = 0.0, freeze_backbones: bool = False):
        if getattr(video_net, "modality", None) != "video" or getattr(audio_net, "modality", None) != "audio":
            raise ValueError("Fusion needs a video network and an audio network")
        super().__init__(num_classes, video_net.feature_dim + audio_net.feature_dim, dropout)
        self.video_dim, self.audio_dim = video_net.feature_dim, audio_net.feature_dim
        video_net.classifier = nn.Identity()
        audio_net.classifier = nn.Identity()
        self.video, self.audio = video_net, audio_net
        self.freeze_backbones = bool(freeze_backbones)
        self.config = dict(video=getattr(video_net, "config", {}), audio=getattr(audio_net, "config", {}),
                           freeze_backbones=self.freeze_backbones)
        if freeze_backbones:
            for p in list(self.video.parameters()) + list(self.audio.parameters()):
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbones:  # frozen branches keep their BatchNorm statistics
            self.video.eval()
            self.audio.eval()
        return self

    def features(self, video: torch.Tensor, audio: Optional[torch.Tensor] = None
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(video maps [B, K_v, T', H', W'], audio maps [B, K_a, L'] or None)."""
        return self.video.features(video), (None if audio is None else self.audio.features(audio))

    def forward_features(self, video: torch.Tensor, audio: Optional[torch.Tensor] = None,
                         has_audio: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Concatenated pooled features [B, K_v + K_a] (zeros in the audio part where audio is absent)."""
        fv = self.video.forward_features(video)
        if audio is None:
            fa = fv.new_zeros(fv.shape[0], self.audio_dim)
        else:
            if audio.shape[0] != fv.shape[0]:
                raise ValueError(f"Fusion: video batch {fv.shape[0]} != audio batch {audio.shape[0]}")
            fa = self.audio.forward_features(audio)
            if has_audio is not None:
                fa = fa * has_audio.to(device=fa.device, dtype=fa.dtype).view(-1, 1)
        return torch.cat([fv, fa], dim=1)

    def forward(self, video: torch.Tensor, audio: Optional[torch.Tensor] = None,
                has_audio: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.classifier(self.dropout(self.forward_features(video, audio, has_audio)))

    def load_branch(self, which: str, state_dict_or_path: Any) -> Dict[str, list]:
        """Load a trained single-stream checkpoint (``which`` = "video" | "audio") into a branch."""
        if which not in ("video", "audio"):
            raise ValueError(f"which must be 'video' or 'audio', got {which!r}")
        sd = read_state_dict(state_dict_or_path)
        return load_matching(getattr(self, which), sd, src=str(state_dict_or_path) if isinstance(
            state_dict_or_path, str) else f"{which} state dict", skip_prefixes=("classifier.",))
