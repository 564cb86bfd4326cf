"""A model from an mmit checkpoint: :func:`from_checkpoint`, and :func:`check_spec_fits` (the
checkpoint's ``model_spec`` against its weights, on the meta device, before anything is
allocated). The safe reader itself is :mod:`mmit_fast.models.safe_load` (re-exported here)."""
from __future__ import annotations

import os
from typing import Any, Dict

import torch
from torch import nn

from .registry import create_model
from .safe_load import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CLIP_LIMITS, CheckpointError, read_checkpoint,
                        safe_torch_load)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "read_checkpoint", "from_checkpoint",
           "safe_torch_load", "check_spec_fits", "CLIP_LIMITS"]


def check_spec_fits(path: str, spec: Dict[str, Any], sd: Dict[str, Any]) -> None:
    """The model ``spec`` describes, built on the meta device (nothing allocated), has exactly
    the tensors and shapes of the weights ``sd``: a spec claiming more (40 million classes over a
    4-row classifier) is refused before the real model is built."""
    try:
        with torch.device("meta"):
            own = create_model(spec["name"], num_classes=int(spec["num_classes"]), **dict(spec.get("kwargs", {})))
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its model_spec {spec!r} does not build a model ({e})") from None
    want = own.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [f"{k} {tuple(sd[k].shape)} (needs {tuple(want[k].shape)})" for k in want
              if k in sd and torch.is_tensor(sd[k]) and tuple(sd[k].shape) != tuple(want[k].shape)]
    problems = [f"{label} ({len(items)}): " + ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if items]
    if problems:
        raise CheckpointError(f"{path}: weights do not match its model_spec ({spec['name']}, {spec['num_classes']} "
                              "classes): " + "; ".join(problems))


def from_checkpoint(path: Any, map_location: Any = "cpu") -> nn.Module:
    """The model stored in an mmit checkpoint, weights loaded, in eval mode.

    The returned model carries ``class_names`` (list of str, logit order), ``modality`` and
    ``preprocess`` (dict, possibly empty) as attributes.

    >>> model = from_checkpoint("runs/demo/train/checkpoints/best.pt")
    >>> model.class_names[:3]
    """
    ck = read_checkpoint(path, map_location=map_location)
    spec, path = ck["model_spec"], os.fspath(path)
    if not isinstance(spec, dict) or "name" not in spec or "num_classes" not in spec:
        raise CheckpointError(f"{path}: its model_spec {spec!r} does not name a model and its classes")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in ck["model"].items()}
    check_spec_fits(path, spec, sd)  # before anything of the spec's size is allocated
    classes = ck.get("classes") or [str(i) for i in range(int(spec["num_classes"]))]
    if len(classes) != int(spec["num_classes"]):
        raise CheckpointError(f"{path}: lists {len(classes)} class names for a model of {spec['num_classes']} outputs")
    model = create_model(spec["name"], num_classes=int(spec["num_classes"]), **dict(spec.get("kwargs", {})))
    model.load_state_dict(sd)
    model.eval()
    model.class_names = list(classes)
    model.modality = ck.get("modality", getattr(model, "modality", "video"))
    model.preprocess = dict(ck.get("preprocess") or {})
    return model
