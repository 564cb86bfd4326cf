"""Multi-label class activation maps (mCAM, paper section 5.1): the maths, batched, no drawing.

For a network ending in global average pooling + one linear layer (``W`` [C, K], bias ``b``)
on last conv maps ``f`` [K, *S] (S = T' x H' x W' for 3D nets, H' x W' for 2D ones):

* ``CAM_c = sum_k W[c, k] f_k``; its mean over S is ``logit_c - b_c`` (linearity of the mean).
  Fusion models: only the video half of ``W`` (``W[:, :video_dim]``) maps onto the video maps;
  the audio part adds a constant per class and so does not move a map.
* upsampling to the input: per frame (``per_frame=True``) trilinear to ``T x H x W``; or the
  time average first (mean over T'), then bilinear to ``H x W``;
* detected classes: the ``top_k`` highest scores ``sigmoid(logit)``, or with ``threshold``
  the classes (at most ``top_k``, ``top_k=None`` = all) whose score is at least ``threshold``;
  rows are padded to a common width ``n`` and ``valid`` [B, n] says which slots are real;
* normalise: ``A_c = (CAM_c - min CAM_c) / (max CAM_c - min CAM_c)`` over the whole map (a
  constant map becomes 0);
* separation: cosine distance ``d_ij = 1 - <A_i, A_j> / (|A_i| |A_j|)`` (1 when a map is all
  zero); classes ``i != j`` *differ* when ``d_ij > separation`` (``separation <= 0``: every
  pair differs). At a pixel where ``A_i >= high`` and ``A_j >= high`` ("similar high values",
  ``high`` = 0.5 by default) for a differing pair, both maps are set to 0 there. Identical maps
  (d = 0, e.g. two labels of one region) are never cut apart unless ``separation <= 0``;
* ownership: ``owner = argmax_c A_c`` per pixel, ``heat = max_c A_c`` (owner -1 where heat = 0);
* smoothing: ``heat`` is convolved per frame with the 5 x 5 binomial kernel
  ``[1 4 6 4 1]^T [1 4 6 4 1] / 256`` (a Gaussian of sigma ~1), edges replicated.

Everything runs on the tensors' device, for all clips and classes at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MCAM", "class_activation_maps", "upsample_maps", "normalise_maps", "cosine_distance", "separate",
           "own_and_smooth", "gaussian5", "select_classes", "features_and_logits", "video_weight", "mcam",
           "NoClassifierError"]


class NoClassifierError(ValueError):
    """The model (or checkpoint) has no linear classifier after global average pooling."""


@dataclass
class MCAM:
    """The result of :func:`mcam` for a batch of B clips and n class slots.

    ``class_ids`` [B, n] long, ``scores`` [B, n] (sigmoid), ``valid`` [B, n] bool;
    ``cams`` [B, n, (T,) H, W] normalised single-class maps (before separation);
    ``separated`` [B, n, (T,) H, W] after separation; ``heat`` [B, (T,) H, W] smoothed max;
    ``owner`` [B, (T,) H, W] long (slot index, -1 = nobody); ``logits`` [B, C]."""

    class_ids: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor
    cams: torch.Tensor
    separated: torch.Tensor
    heat: torch.Tensor
    owner: torch.Tensor
    logits: torch.Tensor


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """``CAM[b, j] = sum_k weight[class_ids[b, j], k] * features[b, k]``: [B, K, *S] -> [B, n, *S]."""
    w = weight[class_ids.long()].to(features.dtype)                     # [B, n, K]
    return torch.einsum("bnk,bk...->bn...", w, features)


def upsample_maps(maps: torch.Tensor, size: Tuple[int, ...], per_frame: bool = True) -> torch.Tensor:
    """[B, n, T', h, w] -> [B, n, T, H, W] (trilinear) or, ``per_frame=False``, the time mean
    -> [B, n, H, W] (bilinear); 2D maps [B, n, h, w] -> [B, n, H, W]. ``size`` = (T, H, W) or (H, W)."""
    if maps.dim() == 5 and not per_frame:
        maps = maps.mean(dim=2)
    if maps.dim() == 5:
        if len(size) != 3:
            raise ValueError(f"per-frame maps need size (T, H, W), got {size}")
        return F.interpolate(maps.float(), size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)
    if maps.dim() != 4:
        raise ValueError(f"maps must be [B, n, h, w] or [B, n, T, h, w], got shape {tuple(maps.shape)}")
    hw = tuple(int(s) for s in size[-2:])
    return F.interpolate(maps.float(), size=hw, mode="bilinear", align_corners=False)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map ``maps[b, j]`` over all its pixels to [0, 1] (constant -> 0)."""
    flat = maps.flatten(2)
    lo = flat.min(dim=2, keepdim=True).values
    span = flat.max(dim=2, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.view_as(maps)


def cosine_distance(maps: torch.Tensor) -> torch.Tensor:
    """``d[b, i, j] = 1 - cos(maps[b, i], maps[b, j])`` [B, n, n]; 1 where either map is all zero."""
    flat = maps.flatten(2).double()
    norm = flat.norm(dim=2)
    dot = flat @ flat.transpose(1, 2)
    den = norm[:, :, None] * norm[:, None, :]
    cos = torch.where(den > 0, dot / den.clamp_min(1e-300), torch.zeros_like(dot))
    return (1.0 - cos).to(maps.dtype)


def separate(maps: torch.Tensor, valid: Optional[torch.Tensor] = None, separation: float = 1e-4,
             high: float = 0.5) -> torch.Tensor:
    """Zero the pixels where two *differing* valid classes both have a high value (module docstring).

    ``maps`` [B, n, *S] normalised to [0, 1]; ``valid`` [B, n] bool (default all). Returns a new tensor."""
    B, n = maps.shape[:2]
    if valid is None:
        valid = torch.ones(B, n, dtype=torch.bool, device=maps.device)
    maps = maps * valid.view(B, n, *([1] * (maps.dim() - 2))).to(maps.dtype)
    if separation <= 0:
        differ = torch.ones(B, n, n, dtype=torch.bool, device=maps.device)
    else:
        differ = cosine_distance(maps) > separation
    eye = torch.eye(n, dtype=torch.bool, device=maps.device)
    pair = differ & ~eye & valid[:, :, None] & valid[:, None, :]            # [B, n, n]
    hi = (maps >= high) & valid.view(B, n, *([1] * (maps.dim() - 2)))
    # number of other, differing classes that are also high at each pixel
    others = torch.einsum("bij,bj...->bi...", pair.to(maps.dtype), hi.to(maps.dtype))
    return torch.where(hi & (others > 0), torch.zeros_like(maps), maps)


def gaussian5(device=None, dtype=torch.float32) -> torch.Tensor:
    """The 5 x 5 binomial smoothing kernel ``outer([1,4,6,4,1], [1,4,6,4,1]) / 256``."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device, dtype=dtype)
    return torch.outer(k, k) / 256.0


def own_and_smooth(maps: torch.Tensor, valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel-wise max over the class axis and 5 x 5 smoothing per frame.

    ``maps`` [B, n, *S] (S = (T,) H, W) -> ``(heat [B, *S], owner [B, *S] long, -1 where heat = 0)``."""
    if valid is not None:
        maps = maps * valid.view(*valid.shape, *([1] * (maps.dim() - 2))).to(maps.dtype)
    heat, owner = maps.max(dim=1)
    owner = torch.where(heat > 0, owner, torch.full_like(owner, -1))
    H, W = heat.shape[-2:]
    x = heat.reshape(-1, 1, H, W).float()
    x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), gaussian5(x.device, x.dtype)[None, None])
    return x.view_as(heat).to(maps.dtype), owner


def select_classes(logits: torch.Tensor, top_k: Optional[int] = 3, threshold: Optional[float] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detected classes per row: ``(class_ids [B, n], scores [B, n], valid [B, n])`` (module docstring)."""
    C = logits.shape[1]
    k = C if top_k is None else max(1, min(int(top_k), C))
    scores, ids = torch.sigmoid(logits.float()).topk(k, dim=1)
    valid = torch.ones_like(scores, dtype=torch.bool) if threshold is None else scores >= float(threshold)
    return ids, scores, valid


def video_weight(model: nn.Module) -> torch.Tensor:
    """The classifier weight that maps onto the video feature maps ([C, K_v])."""
    clf = getattr(model, "classifier", None)
    if not isinstance(clf, nn.Linear):
        raise NoClassifierError(f"{type(model).__name__} has no nn.Linear classifier after global average pooling "
                                f"(found {type(clf).__name__}): class activation maps need one")
    if getattr(model, "modality", "video") == "audio-video":
        return clf.weight[:, : model.video_dim]
    return clf.weight


def features_and_logits(model: nn.Module, video: torch.Tensor, audio: Optional[torch.Tensor] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Video feature maps and logits in one pass (``logits == model(video[, audio])``)."""
    modality = getattr(model, "modality", "video")
    video_weight(model)  # raises NoClassifierError early
    if modality == "audio":
        raise ValueError("class activation maps need a video model; this is an audio model (SoundNet)")
    if modality == "audio-video":
        fv, fa = model.features(video, audio)
        pa = fv.new_zeros(fv.shape[0], model.audio_dim) if fa is None else model.pool(fa)
        pooled = torch.cat([model.pool(fv), pa], dim=1)
    else:
        fv = model.features(video)
        pooled = model.pool(fv)
    return fv, model.classifier(pooled)


@torch.no_grad()
def mcam(model: nn.Module, video: torch.Tensor, audio: Optional[torch.Tensor] = None, *, top_k: Optional[int] = 3,
         threshold: Optional[float] = None, class_ids: Optional[torch.Tensor] = None, per_frame: bool = True,
         separation: float = 1e-4, high: float = 0.5) -> MCAM:
    """mCAM of a batch of clips ``video`` [B, 3, T, H, W] (module docstring): one forward pass,
    all clips and classes at once. ``class_ids`` [B, n] overrides the detection (e.g. the true
    classes, to score localisation alone); then every slot is valid."""
    feats, logits = features_and_logits(model, video, audio)
    if class_ids is None:
        ids, scores, valid = select_classes(logits, top_k, threshold)
    else:
        ids = class_ids.to(logits.device).long()
        scores = torch.sigmoid(logits.float()).gather(1, ids)
        valid = torch.ones_like(ids, dtype=torch.bool)
    raw = class_activation_maps(feats.float(), video_weight(model).float(), ids)
    size = tuple(video.shape[2:]) if (raw.dim() == 5 and per_frame) else tuple(video.shape[-2:])
    cams = normalise_maps(upsample_maps(raw, size, per_frame))
    cams = cams * valid.view(*valid.shape, *([1] * (cams.dim() - 2))).to(cams.dtype)
    sep = separate(cams, valid, separation, high)
    heat, owner = own_and_smooth(sep, valid)
    return MCAM(ids, scores, valid, cams, sep, heat, owner, logits)
