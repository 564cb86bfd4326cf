"""Grad-CAM (Selvaraju et al. 2017), the gradient-based baseline of the localisation scores.

For a target layer with output ``A`` [B, K, *S] and a class score ``y_c`` (the logit):

    alpha_k = mean_S d y_c / d A_k            Grad-CAM_c = ReLU( sum_k alpha_k A_k )

one backward pass per class slot (all clips of the batch at once: rows are independent in
eval mode). At the last conv layer of a network that ends in global average pooling + linear,
``d y_c / d A_k = W[c, k] / |S|``, so Grad-CAM there equals ``ReLU(CAM_c) / |S|``; at an earlier
layer (``layer="layer3"``) it differs. TSM layers give [B*T, K, h, w]: they are folded back
to [B, K, T, h, w].

Usage (hooks live only inside the ``with``)::

    with GradCAM(model, "layer4") as gc:
        maps = gc(video, class_ids)          # [B, n, *S] raw (not upsampled, not normalised)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .layers import resolve_layers, to_video_maps

__all__ = ["GradCAM"]


class GradCAM:
    def __init__(self, model: nn.Module, layer: str = "layer4"):
        self.model = model
        self.layer = layer
        self.module = resolve_layers(model, [layer])[layer]
        self._handle = None
        self._act: Optional[torch.Tensor] = None

    def __enter__(self) -> "GradCAM":
        def hook(_m, _inp, out):
            self._act = out

        self._handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._act = None

    def __call__(self, video: torch.Tensor, class_ids: torch.Tensor, audio: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
        if self._handle is None:
            raise RuntimeError("GradCAM must be used inside a `with` block")
        from ..models import run_model

        B = video.shape[0]
        with torch.enable_grad():
            logits = run_model(self.model, video, audio)
            act = self._act
            if act is None:
                raise RuntimeError(f"layer {self.layer!r} was not run by the model's forward pass")
            ids = class_ids.to(logits.device).long()
            maps = []
            for j in range(ids.shape[1]):
                y = logits.gather(1, ids[:, j:j + 1]).sum()
                (g,) = torch.autograd.grad(y, act, retain_graph=j + 1 < ids.shape[1])
                a, gv = to_video_maps(act.detach(), B), to_video_maps(g, B)
                alpha = gv.flatten(2).mean(dim=2)                                    # [B, K]
                maps.append(torch.relu(torch.einsum("bk,bk...->b...", alpha, a)))
        return torch.stack(maps, dim=1)
