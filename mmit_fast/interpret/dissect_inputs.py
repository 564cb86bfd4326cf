"""A concept image's way into the model, for dissection: the stages to dissect, the image
resized to the model's crop, the static clip (the image repeated over the clip's frames), and
each named layer's activation maps from one forward pass. Used by both passes of the
dissection (:mod:`.dissect_run`) and by its figures (:mod:`.dissect_report`)."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

from .layers import available_layers, to_video_maps

__all__ = ["stage_layers", "prep_image", "static_clip", "layer_activations"]


def stage_layers(model) -> List[str]:
    pre = "video." if getattr(model, "modality", "video") == "audio-video" else ""
    return [n for n in available_layers(model) if "." not in n[len(pre):]]


def prep_image(img: np.ndarray, crop: int) -> np.ndarray:
    from PIL import Image

    if img.shape[:2] != (crop, crop):
        img = np.asarray(Image.fromarray(img).resize((crop, crop), Image.BILINEAR))
    return img


def layer_activations(model, modules: Dict[str, torch.nn.Module], x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One forward pass; each named layer's output as [B, K, h, w] (time averaged)."""
    got: Dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: got.__setitem__(n, o)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            from ..models import run_model

            run_model(model, x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n in modules:
        a = to_video_maps(got[n], x.shape[0])
        out[n] = a.mean(dim=2) if a.dim() == 5 else a
    return out


def static_clip(images: np.ndarray, spec, mean, std, device, video: bool, out: Optional[torch.Tensor] = None
           ) -> torch.Tensor:
    """The model input: each image repeated over the clip's frames (``video``), written into ``out``
    (or its first rows) when its shape allows (the static clip of a batch of 16 is ~77 MB at 8 x 224
    px: reusing one buffer saves a fresh, page-faulted allocation and its release per batch)."""
    from .source import to_input

    x = to_input(images[:, None], mean, std, device)                      # [B, 3, 1, c, c]
    if not video:
        return x[:, :, 0]
    shape = (x.shape[0], x.shape[1], spec.frames) + tuple(x.shape[3:])
    if (out is None or tuple(out.shape[1:]) != shape[1:] or out.shape[0] < shape[0] or out.dtype != x.dtype
            or out.device != x.device):
        return x.expand(shape).contiguous()
    return out[:shape[0]].copy_(x.expand(shape))                          # a leading slice stays contiguous

