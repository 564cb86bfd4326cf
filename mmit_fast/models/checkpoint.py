"""Reading mmit checkpoints: the one safe loader every verb and module uses.

A checkpoint is data, not code. It is read with ``torch.load(weights_only=True)`` only: tensors,
plain containers (dict, list, tuple), str, int, float, bool and None. A file that needs anything
else (a pickled class, a function: what a planted pickle uses to run a command) is refused with
one line that names the file; there is no fallback to an unsafe load.

The mmit checkpoint (written by :mod:`mmit_fast.train`, :mod:`mmit_fast.models.importers`):

=============  ==================================================================
key            value
=============  ==================================================================
format         ``"mmit-checkpoint"``
version        int (:data:`CHECKPOINT_VERSION` or older)
model_spec     ``{"name": str, "num_classes": int, "kwargs": dict}`` for ``create_model``
classes        list of class names (the vocabulary, in logit order)
modality       ``"video"`` | ``"audio"`` | ``"audio-video"``
model          the model's state dict
config         the training configuration as a plain dict (optional)
preprocess     what the model expects as input (optional): ``frames``, ``crop``, ``mean``,
               ``std``, ``sampling`` ...
=============  ==================================================================
Training checkpoints add the optimiser, scheduler, loader position and RNG states (as tensors).
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict

import torch
from torch import nn

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "read_checkpoint", "from_checkpoint",
           "safe_torch_load"]

CHECKPOINT_FORMAT = "mmit-checkpoint"
CHECKPOINT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: its message is one line naming the file."""


def safe_torch_load(path: Any, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line error naming the file.

    Never falls back to an unsafe load: a file that holds anything but tensors and plain
    containers is refused (it could run code when unpickled).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(
                f"{path}: refused, it holds Python objects beyond tensors and plain containers "
                f"(loading it could run code; only weights_only checkpoints are read): {first}") from None
        raise CheckpointError(f"{path}: not a readable torch file ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: {first})") from None


def read_checkpoint(path: Any, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read an mmit checkpoint safely and check its format and version."""
    ck = safe_torch_load(path, map_location=map_location)
    path = os.fspath(path)
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an mmit-fast checkpoint (no format={CHECKPOINT_FORMAT!r}; "
                              "released models of other layouts: mmit import-weights)")
    if int(ck.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ck.get('version')} is newer than this mmit-fast "
                              f"(reads up to {CHECKPOINT_VERSION})")
    for key in ("model_spec", "model"):
        if key not in ck:
            raise CheckpointError(f"{path}: mmit checkpoint without {key!r}")
    return ck


def from_checkpoint(path: Any, map_location: Any = "cpu") -> nn.Module:
    """The model stored in an mmit checkpoint, weights loaded, in eval mode.

    The returned model carries ``class_names`` (list of str, logit order), ``modality`` and
    ``preprocess`` (dict, possibly empty) as attributes.

    >>> model = from_checkpoint("runs/demo/train/checkpoints/best.pt")
    >>> model.class_names[:3]
    """
    from .registry import create_model

    ck = read_checkpoint(path, map_location=map_location)
    spec = ck["model_spec"]
    try:
        model = create_model(spec["name"], num_classes=int(spec["num_classes"]), **dict(spec.get("kwargs", {})))
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{os.fspath(path)}: its model_spec {spec!r} does not build a model ({e})") from None
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in ck["model"].items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{os.fspath(path)}: weights do not match {spec['name']} "
                              f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})")
    model.eval()
    classes = ck.get("classes") or [str(i) for i in range(int(spec["num_classes"]))]
    model.class_names = list(classes)
    model.modality = ck.get("modality", getattr(model, "modality", "video"))
    model.preprocess = dict(ck.get("preprocess") or {})
    return model
