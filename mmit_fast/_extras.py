"""Optional dependencies: which named extra of ``mmit-fast`` brings which module.

The core distribution is torch, triton and numpy (the losses need nothing more); every other
capability is an extra (setup.py). ``require("av", extra="data")`` imports a module or raises
:class:`MissingExtra`, a one-line ``ImportError`` that says what to install; ``cli.main`` turns
it -- or any ``ModuleNotFoundError`` of a module listed in ``EXTRA_OF`` -- into
``mmit VERB: needs the [data] extra: pip install "mmit-fast[data]"`` (exit 2).
"""
from __future__ import annotations

import importlib

__all__ = ["EXTRA_OF", "MissingExtra", "require", "extra_for"]

# top-level module name -> the extra that installs it
EXTRA_OF = {
    "av": "data", "webdataset": "data", "ffmpeg": "data", "imageio_ffmpeg": "data", "tqdm": "data",
    "yaml": "train", "tensorboard": "train",
    "matplotlib": "interpret", "PIL": "interpret", "scipy": "interpret",
    "onnx": "export", "onnxscript": "export", "onnxruntime": "export",
    "nvidia": "dali",
    "s3fs": "s3", "gcsfs": "gcs", "aiohttp": "http",
    "sklearn": "test", "skvideo": "test", "pytest": "test", "moto": "test", "pytorch_grad_cam": "test",
}


class MissingExtra(ImportError):
    """An optional module is not installed; the message names the extra that brings it."""

    def __init__(self, module: str, extra: str):
        self.module, self.extra = module, extra
        super().__init__(f'needs the [{extra}] extra: pip install "mmit-fast[{extra}]" (module {module!r} is missing)',
                         name=module)


def require(module: str, extra: str | None = None):
    """``import module`` or raise :class:`MissingExtra` naming ``extra`` (default: from ``EXTRA_OF``)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = (e.name or module).split(".")[0]
        if top != module.split(".")[0]:  # the module exists but one of ITS imports is missing
            raise
        raise MissingExtra(module, extra or EXTRA_OF.get(top, "all")) from None


def extra_for(exc: BaseException) -> MissingExtra | None:
    """The :class:`MissingExtra` an import error stands for, or None if it is not about an optional module."""
    if isinstance(exc, MissingExtra):
        return exc
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top in EXTRA_OF:
            return MissingExtra(top, EXTRA_OF[top])
    return None
