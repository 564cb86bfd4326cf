"""Exporting a trained (or imported) clip classifier out of PyTorch: ``mmit export``.

Formats:

* ``onnx``: ``torch.onnx.export`` (the torch.export-based exporter), weights inside the file,
  input ``video`` float32 ``[B, 3, T, H, W]``, output ``logits`` ``[B, C]``; the batch axis is
  symbolic (``batch``) unless a fixed batch is asked for;
* ``torchscript``: ``torch.jit.trace`` of the model in eval mode, saved with ``torch.jit.save``
  (load with ``torch.jit.load``; no mmit-fast needed). Tracing records sizes as operations, so
  the batch stays free even when a fixed one is asked for (the sidecar says so).

Next to ``FILE`` goes ``FILE.json``, the sidecar a user of the exported model needs: input
name, shape and layout, the preprocessing (frames, how they are sampled, resize, crop, RGB
values in [0, 1] normalised with ``mean``/``std``), output name and meaning (raw scores; for
multi-label use ``sigmoid`` or the ranking, no softmax is inside), the class names in logit
order, the source checkpoint and the check result.

**Check** (on by default): the exported file is loaded by its own runtime (onnxruntime's CPU
provider, or ``torch.jit.load``) and run on random clips (batch 1 and 2 when the batch is
free, else the fixed batch); it passes when ``max |y_runtime - y_torch| <= tol * max(1,
max |y_torch|)`` with ``tol = 1e-4`` (float32 convolution sums reordered by another runtime
differ by ~1e-6 relative). Both files are written atomically, the model only after it passed.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Dict, List, Optional

import torch

from ._extras import require
from ._io import atomic_path, atomic_write_json

__all__ = ["EXPORT_FORMATS", "export_checkpoint", "sidecar_path", "input_shape", "run_exported"]

EXPORT_FORMATS = ("onnx", "torchscript")
DEFAULT_TOLERANCE = 1e-4


def sidecar_path(out: Any) -> str:
    return os.fspath(out) + ".json"


def input_shape(model: torch.nn.Module, frames: Optional[int] = None, crop: Optional[int] = None,
                config: Optional[Dict[str, Any]] = None) -> List[int]:
    """[3, T, H, W] of one clip: the flags, else the checkpoint's ``preprocess``, else its training
    ``config`` (``frames``, ``crop``), else 16 x 224 (a TSM's frames are its ``segments``)."""
    pre = getattr(model, "preprocess", {}) or {}
    cfg = config or {}
    t = int(frames or pre.get("frames") or getattr(model, "segments", 0) or cfg.get("frames") or 16)
    c = int(crop or pre.get("crop") or cfg.get("crop") or 224)
    return [3, t, c, c]


def _preprocess_of(model: torch.nn.Module, ck_config: Dict[str, Any], shape: List[int]) -> Dict[str, Any]:
    pre = dict(getattr(model, "preprocess", {}) or {})
    if not pre:  # a checkpoint written by mmit train: its clip settings are in the config
        mode = ck_config.get("clip_mode", "auto")
        if mode == "auto":
            mode = "segments" if ck_config.get("model") == "tsm" else "consecutive"
        crop0 = int(ck_config.get("crop") or shape[2]) if ck_config.get("resize") else shape[2]
        pre = {"sampling": mode, "stride": ck_config.get("stride", 2) if mode == "consecutive" else None,
               "crop": crop0, "resize": int(ck_config.get("resize") or round(crop0 * 256 / 224)),
               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channels": "RGB",
               "value_range": [0.0, 1.0], "layout": "B,3,T,H,W"}
    old_crop = int(pre.get("crop") or shape[2])
    if pre.get("resize") and old_crop != shape[2]:  # --crop changed the input: keep the resize/crop ratio
        pre["resize"] = int(round(int(pre["resize"]) * shape[2] / old_crop))
    pre.update(frames=shape[1], crop=shape[2])
    return pre


def _export_onnx(model, x: torch.Tensor, path: str, dynamic: bool, opset: Optional[int]) -> None:
    kw: Dict[str, Any] = dict(input_names=["video"], output_names=["logits"], external_data=False, dynamo=True,
                              verbose=False)
    if dynamic:
        kw["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)  # positional: the clip's axis 0
    if opset is not None:
        kw["opset_version"] = int(opset)
    noisy = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the exporter's own deprecation notices
            torch.onnx.export(model, (x,), path, **kw)
    finally:
        noisy.setLevel(level)


def _export_torchscript(model, x: torch.Tensor, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants: intended
        traced = torch.jit.trace(model, x, check_trace=False)
    torch.jit.save(traced, path)


def run_exported(path: str, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """Logits of the exported file ``path`` on ``x``, computed by the format's own runtime."""
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return torch.from_numpy(sess.run(["logits"], {"video": x.numpy()})[0])
    with torch.no_grad():
        return torch.jit.load(path, map_location="cpu")(x)


def _check(model, path: str, fmt: str, shape: List[int], batches: List[int], tol: float) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for b in batches:
        x = torch.randn([b] + shape, generator=gen)
        with torch.no_grad():
            ref = model(x)
        got = run_exported(path, fmt, x)
        if tuple(got.shape) != tuple(ref.shape):
            raise RuntimeError(f"export check: {fmt} gives shape {tuple(got.shape)} for batch {b}, "
                               f"PyTorch {tuple(ref.shape)}")
        diff = float((got.double() - ref.double()).abs().max())
        bound = tol * max(1.0, float(ref.abs().max()))
        if not diff <= bound:
            raise RuntimeError(f"export check: {fmt} logits differ from PyTorch by {diff:.3g} > {bound:.3g} "
                               f"(batch {b}); nothing written")
        worst = max(worst, diff / max(1.0, float(ref.abs().max())))
    runtime = "onnxruntime CPUExecutionProvider" if fmt == "onnx" else "torch.jit.load"
    return {"runtime": runtime, "batches": batches, "max_rel_diff": worst, "tolerance": tol}


def export_checkpoint(checkpoint: Any, fmt: str, out: Any, *, batch: Optional[int] = None,
                      frames: Optional[int] = None, crop: Optional[int] = None, check: bool = True,
                      tolerance: float = DEFAULT_TOLERANCE, opset: Optional[int] = None) -> Dict[str, Any]:
    """Export the model of an mmit checkpoint to ``out`` (``fmt``: onnx | torchscript) and write
    the sidecar ``out + ".json"``. ``batch``: None = dynamic batch, or a fixed int. Returns the
    sidecar dict. Bad input raises ValueError (one line); a failed check RuntimeError."""
    from .models.checkpoint import from_checkpoint, read_checkpoint

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if batch is not None and int(batch) < 1:
        raise ValueError(f"--batch must be >= 1 (or omitted for a dynamic batch), got {batch}")
    for name, v in (("frames", frames), ("crop", crop)):
        if v is not None and int(v) < 1:
            raise ValueError(f"--{name} must be >= 1, got {v}")
    if fmt == "onnx":  # missing: one line naming the [export] extra (cli.main)
        require("onnxscript")
        if check:
            require("onnxruntime")
    checkpoint, out = os.fspath(checkpoint), os.fspath(out)
    ck = read_checkpoint(checkpoint)
    model = from_checkpoint(checkpoint)
    if getattr(model, "modality", "video") != "video":
        raise ValueError(f"{checkpoint}: a {model.modality} model; export supports video models (one input)")
    shape = input_shape(model, frames, crop, ck.get("config") or {})
    dynamic = batch is None
    x = torch.randn([int(batch or 2)] + shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(x[:1])  # a clip this model cannot take (e.g. too few frames) fails here, in one line
    report = None
    with atomic_path(out) as tmp, torch.no_grad():
        if fmt == "onnx":
            _export_onnx(model, x, tmp, dynamic, opset)
        else:
            _export_torchscript(model, x, tmp)
        if check:
            report = _check(model, tmp, fmt, shape, [1, 2] if dynamic else [int(batch)], tolerance)
    side = _sidecar(ck, model, checkpoint, out, fmt, shape, batch, report)
    atomic_write_json(sidecar_path(out), side)
    return side


def _sidecar(ck, model, checkpoint, out, fmt, shape, batch, report) -> Dict[str, Any]:
    b: Any = "batch" if batch is None or fmt == "torchscript" else int(batch)
    return {
        "file": os.path.basename(out), "format": fmt, "torch": torch.__version__,
        "input": {"name": "video", "dtype": "float32", "shape": [b] + shape, "layout": "B,3,T,H,W"},
        "output": {"name": "logits", "dtype": "float32", "shape": [b, model.num_classes],
                   "meaning": "raw class scores in the order of 'classes' (multi-label: sigmoid or rank them; "
                              "no softmax inside)"},
        "preprocess": _preprocess_of(model, ck.get("config") or {}, shape),
        "classes": list(model.class_names),
        "model_spec": ck["model_spec"], "source_checkpoint": os.path.abspath(checkpoint),
        "check": report or "skipped (--no-check)",
    }
