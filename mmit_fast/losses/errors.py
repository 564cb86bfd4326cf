"""Bad targets, found inside the kernels that read them (no extra pass, no host sync).

* CPU (C++ kernel, the torch path, Triton under the interpreter): the kernel reports the flat
  index of the first target that is not 0 or 1 and :class:`BadTargets` is raised at once.
* CUDA: a host sync per call is what we avoid, so the kernel poisons the bad rows (loss and
  gradient NaN: a GradScaler skips the step, a NaN check sees it) and records the first bad
  element, encoded ``row * 2**32 + col``, in a per-device int64 flag with an atomic min. :func:`raise_pending` reads the
  flag (one sync: call it where the host waits anyway, e.g. when a loss is logged) and
  raises :class:`BadTargets` naming the element.
"""
from __future__ import annotations

import torch

__all__ = ["BadTargets", "first_bad_target", "device_flag", "raise_pending", "lazy_errors"]

NO_ERROR = torch.iinfo(torch.int64).max
_FLAGS = {}


class BadTargets(ValueError):
    """A target that is not 0 or 1: ``targets[row, col] = value``. The public functions put
    the loss's name in front of the message."""

    def __init__(self, row, col, value=None, where=""):
        self.row, self.col, self.value, self.where = int(row), int(col), value, where
        shown = "" if value is None else f" = {value:g}" if isinstance(value, float) else f" = {value}"
        super().__init__(f"targets must be multi-hot (0 or 1); targets[{self.row}, {self.col}]{shown}{where}")

    def with_name(self, name):
        """The same error with ``name: `` in front of the message."""
        e = BadTargets(self.row, self.col, self.value, self.where)
        e.args = (f"{name}: {e.args[0]}",)
        return e


def first_bad_target(targets):
    """``(row, col, value)`` of the first entry that is not 0 or 1, else None (a host sync:
    only for CPU tensors and the rare target dtypes the kernels do not read directly)."""
    if targets.dtype == torch.bool or not targets.numel():
        return None
    bad = (targets != 0) & (targets != 1)
    idx = bad.reshape(-1).nonzero()
    if not len(idx):
        return None
    k = int(idx[0])
    C = targets.shape[-1]
    return k // C, k % C, targets.reshape(-1)[k].item()


def lazy_errors(device) -> bool:
    """Whether bad targets on ``device`` go to the lazily read flag (CUDA: a read would be a host
    sync) instead of raising at once (CPU). One place, so a test can take the CUDA branch on CPU."""
    return torch.device(device).type != "cpu"


def _key(device) -> str:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:  # "cuda" and "cuda:0" are one flag
        d = torch.device("cuda", torch.cuda.current_device())
    return str(d)


def device_flag(device):
    """The int64[1] error flag of a device (``NO_ERROR`` when clean); made once per device."""
    key = _key(device)
    f = _FLAGS.get(key)
    if f is None:
        f = _FLAGS[key] = torch.full((1,), NO_ERROR, dtype=torch.int64, device=device)
    return f, key


def raise_pending(device=None):
    """Raise :class:`BadTargets` if an earlier loss call on ``device`` (default: every device
    used so far) met a target that is not 0 or 1; reset the flag. One host sync per device."""
    keys = [_key(device)] if device is not None else list(_FLAGS)
    for key in keys:
        f = _FLAGS.get(key)
        if f is None:
            continue
        k = int(f.item())
        if k != NO_ERROR:
            f.fill_(NO_ERROR)
            raise BadTargets(k >> 32, k & 0xFFFFFFFF, where=f" (found on {key} by an earlier loss call; its loss and "
                             "gradient rows were set to NaN)")
