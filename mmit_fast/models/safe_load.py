"""Reading mmit checkpoints: the one safe loader every verb and module uses (it needs no model
code, so every model file can use it; building a model from a checkpoint is
:mod:`mmit_fast.models.checkpoint`).

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
import zipfile
from typing import Any, Dict, Optional

import torch

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "read_checkpoint", "safe_torch_load",
           "CLIP_LIMITS"]

CHECKPOINT_FORMAT = "mmit-checkpoint"
CHECKPOINT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: its message is one line naming the file."""


def _zip_claim(path: str) -> Optional[int]:
    """The bytes the records of a zip-format torch file claim uncompressed (from the zip's
    central directory: nothing is read or inflated), None for the legacy format."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            return sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return None  # torch.load names the damage


def safe_torch_load(path: Any, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line error naming the file.

    Never falls back to an unsafe load: a file that holds anything but tensors and plain
    containers is refused (it could run code when unpickled). Sizes are checked before
    anything is allocated: ``torch.save`` stores every record of its zip uncompressed, so
    records that claim more bytes than the file holds (a few MB of deflated zeros claiming
    gigabytes) are refused from the zip's directory alone.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    claim, size = _zip_claim(path), os.path.getsize(path)
    if claim is not None and claim > size:
        raise CheckpointError(f"{path}: its zip records claim {claim} bytes in a file of {size} bytes (compressed "
                              "records, which torch.save never writes); refused before reading them")
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
    _check_clip_settings(ck, path)
    return ck


#: the largest clip settings a checkpoint may ask for (they size every input a verb allocates)
CLIP_LIMITS = {"frames": 1024, "crop": 4096, "resize": 4096}


def _check_clip_settings(ck: Dict[str, Any], path: str) -> None:
    """``frames``/``crop``/``resize`` of ``preprocess`` and ``config`` within :data:`CLIP_LIMITS`
    (export, cam, predict and dissect allocate clips of that size)."""
    for part in ("preprocess", "config"):
        d = ck.get(part) or {}
        if not isinstance(d, dict):
            raise CheckpointError(f"{path}: {part} is not a mapping")
        for key, top in CLIP_LIMITS.items():
            v = d.get(key)
            if v is None or (key == "resize" and v == 0):
                continue
            integral = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
            if isinstance(v, bool) or not integral or not 1 <= v <= top:
                raise CheckpointError(f"{path}: {part} {key}={v!r} is not a sane clip setting (1..{top})")
