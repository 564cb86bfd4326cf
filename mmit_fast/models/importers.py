"""Importing released models into mmit checkpoints (``mmit import-weights``).

Formats (``FORMATS``), all read with ``torch.load(weights_only=True)`` (tensors only):

======================  ===============================================  ==================
format                  what it is                                       becomes
======================  ===============================================  ==================
``moments-resnet3d50``  the Moments in Time authors' 3D ResNet-50         ``moments-resnet3d``
                        (``moments_RGB_imagenet_resnet3d50_segment16
                        .pth.tar``; M-MiT v2 ``multi_resnet3d50``):
                        5-D ``conv1.weight``, head ``last_linear.*``
``moments-resnet50``    the authors' 2D ResNet-50 (``moments_RGB_        ``moments-resnet2d``
                        resnet50_imagenetpretrained.pth.tar``):
                        torchvision layout, head ``fc.*``
``torchvision-resnet``  any torchvision ResNet-18/34/50/101/152 state    ``moments-resnet2d``
                        dict (e.g. ImageNet weights), head ``fc.*``
======================  ===============================================  ==================

The file may be a bare state dict or wrap it (``{'state_dict': ...}``, as the authors'
files do), and names may carry DataParallel's ``module.`` prefix. Depth and width are read
from the tensors (blocks per stage, bottleneck or basic, ``conv1`` channels), so smaller
variants of the same layouts import too; the class count is the head's row count and must
equal the length of the categories file (one class name per line, the format ``mmit pack``
reads). A file of another layout is refused with one line listing the first missing,
unexpected and mis-shaped tensors, the format it does fit (if any) and the formats that exist.
``num_batches_tracked`` buffers are optional (files saved before PyTorch 0.4 lack them); a
tensor holding NaN or inf is refused, naming it.

The written checkpoint (:mod:`mmit_fast.models.checkpoint`, version 2) holds the model
spec, the vocabulary, the weights and the preprocessing the authors used: 16 RGB frames
spread uniformly over the clip (``sampling="segments"``: frame ``floor((t + 1/2) F / 16)`` of
``F``), 224 x 224, values in [0, 1] normalised with ImageNet's mean and std, layout
``[B, 3, T, H, W]``. Its ``config`` sets the matching clip settings (``clip_mode=segments``,
``frames=16``, ``crop=224``, ``resize=224``: short side to 224 then the centre 224 x 224; the
authors' script squashes the whole frame to 224 x 224 instead), so ``mmit eval``,
``mmit finetune`` and the interpretation verbs read clips the way the model expects.
Nothing is downloaded: the user passes the file they fetched from the authors' pages.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import read_state_dict
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, safe_torch_load
from .resnet2d import RESNET_LAYERS

__all__ = ["FORMATS", "ImportFormat", "import_weights", "convert_state_dict", "check_layout", "infer_resnet",
           "authors_preprocess"]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class ImportFormat:
    model: str          # create_model name
    head: str           # prefix of the head's tensors in the file
    conv_dims: int      # dimensions of conv1.weight (5: 3D, 4: 2D)
    what: str           # one-line description for messages and --help


FORMATS: Dict[str, ImportFormat] = {
    "moments-resnet3d50": ImportFormat("moments-resnet3d", "last_linear", 5,
                                       "the Moments authors' 3D ResNet (5-D conv1, head last_linear)"),
    "moments-resnet50": ImportFormat("moments-resnet2d", "fc", 4,
                                     "the Moments authors' 2D ResNet-50 (torchvision layout, head fc)"),
    "torchvision-resnet": ImportFormat("moments-resnet2d", "fc", 4,
                                       "a torchvision ResNet-18..152 state dict (head fc), applied per frame"),
}


def authors_preprocess(frames: int = 16, crop: int = 224) -> Dict[str, Any]:
    """What the released models expect as input (see the module docstring)."""
    return {"frames": int(frames), "crop": int(crop), "resize": int(crop), "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "sampling": "segments", "layout": "B,3,T,H,W", "channels": "RGB",
            "value_range": [0.0, 1.0]}


def infer_resnet(sd: Dict[str, torch.Tensor], conv_dims: Optional[int] = None) -> Optional[Tuple[int, int]]:
    """(depth, width) of a torchvision-style ResNet state dict, or None if it is not one:
    width = ``conv1.weight.shape[0]``, depth from the blocks per stage and the block kind
    (``layer1.0.conv3`` present: bottleneck); ``conv_dims``: required ``conv1.weight.dim()``."""
    w = sd.get("conv1.weight")
    if w is None or w.dim() < 2 or (conv_dims is not None and w.dim() != conv_dims):
        return None
    counts = []
    for layer in range(1, 5):
        pat = re.compile(rf"^layer{layer}\.(\d+)\.conv1\.weight$")
        counts.append(len({m.group(1) for m in map(pat.match, sd) if m}))
    kind = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
    for depth, (k, layers) in RESNET_LAYERS.items():
        if k == kind and list(layers) == counts:
            return depth, int(w.shape[0])
    return None


def _diff(fmt: ImportFormat, sd: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> List[str]:
    """Problems of ``sd`` (file names, head already renamed) against ``own``: the first few
    missing, unexpected and mis-shaped tensors; empty when it fits."""
    optional = lambda k: k.endswith("num_batches_tracked")  # noqa: E731
    back = lambda k: fmt.head + k[len("classifier"):] if k.startswith("classifier.") else k  # noqa: E731
    missing = [back(k) for k in own if k not in sd and not optional(k)]
    unexpected = [back(k) for k in sd if k not in own]
    shapes = [f"{back(k)} {tuple(v.shape)} (needs {tuple(own[k].shape)})" for k, v in sd.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    out = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            out.append(f"{label} ({len(items)}): " + ", ".join(items[:4]) + (", ..." if len(items) > 4 else ""))
    return out


def check_layout(sd: Dict[str, torch.Tensor], fmt_name: str, src: str = "<state dict>", *,
                 hint: bool = True) -> Dict[str, Any]:
    """The model spec ``sd`` (file names, ``module.`` stripped) fits in format ``fmt_name``.

    Shapes only, against a model skeleton built on the meta device, so it runs on tensors
    read with ``map_location="meta"`` before any byte of them is allocated. Raises ValueError
    (one line) when the layout does not fit; with ``hint`` the message names the other format
    that fits, if one does. A tensor stored as a view of a larger storage is refused too (its
    whole storage would be read)."""
    from .registry import create_model

    fmt = FORMATS[fmt_name]
    arch = infer_resnet(sd, fmt.conv_dims) or infer_resnet(sd)  # the latter: for the message only
    depth, width = arch if arch is not None else (50, 64)
    head = sd.get(fmt.head + ".weight")
    num_classes = int(head.shape[0]) if head is not None and head.dim() == 2 else 1
    renamed = {("classifier" + k[len(fmt.head):] if k.startswith(fmt.head + ".") else k): v for k, v in sd.items()}
    with torch.device("meta"):
        own = create_model(fmt.model, num_classes, depth=depth, width=width).state_dict()
    problems = _diff(fmt, renamed, own)
    if problems:
        fits = [n for n in FORMATS if n != fmt_name and hint and _fits(sd, n)]
        tip = f"; it fits --format {fits[0]}" if fits else ""
        raise ValueError(f"{src}: not a {fmt_name} file ({fmt.what}; compared as depth {depth}, width {width}): "
                         + "; ".join(problems) + tip + f"; formats: {', '.join(FORMATS)}")
    views = [k for k, v in sd.items() if v.untyped_storage().nbytes() > v.numel() * v.element_size()]
    if views:
        raise ValueError(f"{src}: tensor {views[0]} is stored in a larger storage than it needs "
                         f"({sd[views[0]].untyped_storage().nbytes()} bytes); not a released model's state dict")
    return {"name": fmt.model, "num_classes": num_classes, "kwargs": {"depth": depth, "width": width}}


def convert_state_dict(sd: Dict[str, torch.Tensor], fmt_name: str, src: str = "<state dict>", *,
                       hint: bool = True):
    """File state dict (``module.`` already stripped) -> (model, spec) with the weights loaded
    (:func:`check_layout` first; a tensor holding NaN or inf is refused)."""
    from .registry import create_model

    spec = check_layout(sd, fmt_name, src, hint=hint)
    fmt = FORMATS[fmt_name]
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{src}: non-finite values (NaN/inf) in {len(bad)} tensors: " + ", ".join(bad[:4]))
    model = create_model(fmt.model, spec["num_classes"], **spec["kwargs"])
    own = model.state_dict()
    for k, v in sd.items():
        k = "classifier" + k[len(fmt.head):] if k.startswith(fmt.head + ".") else k
        own[k] = v.detach().to(own[k].dtype).clone()
    model.load_state_dict(own)
    model.eval()
    return model, spec


def _fits(sd: Dict[str, torch.Tensor], fmt_name: str) -> bool:
    fmt = FORMATS[fmt_name]
    arch = infer_resnet(sd, fmt.conv_dims)
    if arch is None or fmt.head + ".weight" not in sd:
        return False
    try:
        check_layout(sd, fmt_name, hint=False)
        return True
    except ValueError:
        return False


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_source(src: str, map_location: str = "cpu") -> Dict[str, torch.Tensor]:
    """The state dict of ``src``; ``map_location="meta"``: its tensors' shapes only (nothing
    of their bytes is read or allocated)."""
    raw = safe_torch_load(src, map_location)  # tensors and plain containers only; a planted pickle is refused
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        raise ValueError(f"{src}: already an mmit checkpoint (use it directly: mmit eval / finetune / export)")
    try:
        return read_state_dict(raw if isinstance(raw, dict) else {})
    except ValueError:
        raise ValueError(f"{src}: holds no state dict (a mapping of names to tensors, bare or under "
                         f"'state_dict'); formats: {', '.join(FORMATS)}") from None


def import_weights(src: Any, fmt_name: str, categories: Any, out: Any, *, frames: int = 16,
                   crop: int = 224) -> Dict[str, Any]:
    """Read a released model ``src`` of format ``fmt_name``, check it against the vocabulary in
    ``categories`` and write an mmit checkpoint to ``out`` (atomically). Returns the checkpoint
    dict (as written). Raises ValueError / FileNotFoundError with one line naming the file."""
    from .._io import atomic_path
    from ..pack.annotations import read_categories

    if fmt_name not in FORMATS:
        raise ValueError(f"unknown format {fmt_name!r}; formats: {', '.join(FORMATS)}")
    src, categories, out = os.fspath(src), os.fspath(categories), os.fspath(out)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src}: no such file (nothing is downloaded; fetch the released model first)")
    classes = read_categories(categories)
    spec = check_layout(_read_source(src, "meta"), fmt_name, src)  # shapes first: nothing allocated yet
    head = f"{FORMATS[fmt_name].head}.weight"
    if len(classes) != spec["num_classes"]:
        raise ValueError(f"{categories} lists {len(classes)} classes but {src} has {spec['num_classes']} outputs "
                         f"({head} rows): not this model's vocabulary")
    model, spec = convert_state_dict(_read_source(src), fmt_name, src)
    kw = spec["kwargs"]
    ck = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_spec": spec, "classes": list(classes),
        "modality": "video", "model": model.state_dict(),
        "config": {"model": spec["name"], "depth": kw["depth"], "width": kw["width"], "clip_mode": "segments",
                   "frames": int(frames), "crop": int(crop), "resize": int(crop)},
        "preprocess": authors_preprocess(frames, crop),
        "source": {"file": os.path.basename(src), "format": fmt_name, "sha256": _sha256(src)},
    }
    with atomic_path(out) as tmp:
        torch.save(ck, tmp)
    return ck
