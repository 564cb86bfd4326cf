"""The independent peer for Grad-CAM: pytorch-grad-cam (PyPI ``grad-cam``), run as published.

``import pytorch_grad_cam`` imports torchvision at the top of its package (for image helpers
and detection targets that Grad-CAM itself never calls). Where torchvision is installed but
cannot be imported (its PyPI wheel is built against CUDA torch and its compiled ops do not load
next to a CPU-only torch: "operator torchvision::nms does not exist"), :func:`load` imports the
peer with an empty stand-in for torchvision that raises if any of it is used, and takes the
stand-in out of ``sys.modules`` again afterwards. The peer's Grad-CAM code is not changed.

:func:`peer_gradcam` is pytorch-grad-cam's ``GradCAM(model, target_layers)(input, targets)``
for a clip and its class slots: one batch of n copies of the clip, one target per copy; the
maps come back at input resolution, min-max normalised by the peer (2D: ``cv2.resize``; 3D:
``scipy.ndimage.zoom``).
"""
from __future__ import annotations

import sys
import types
from typing import Optional

import numpy as np

NOTE: Optional[str] = None   # why the stand-in was used, when it was


def _stand_in(reason: str) -> dict:
    def refuse(*_a, **_k):
        raise RuntimeError(f"torchvision is not importable here ({reason}); not needed by Grad-CAM")

    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops"]
    mods = {n: types.ModuleType(n) for n in names}
    for m in mods.values():
        m.__getattr__ = lambda _name: refuse  # type: ignore[attr-defined]
    mods["torchvision"].transforms = mods["torchvision.transforms"]
    mods["torchvision"].ops = mods["torchvision.ops"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    return mods


def load():
    """The ``pytorch_grad_cam`` module (ImportError when the package is not installed)."""
    global NOTE
    if "pytorch_grad_cam" in sys.modules:
        return sys.modules["pytorch_grad_cam"]
    try:
        import torchvision  # noqa: F401  (does it import? see the module docstring)
    except ImportError:
        pass
    except Exception as e:   # installed but broken: see the module docstring
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        stand_in = _stand_in(reason)
        sys.modules.update(stand_in)
        try:
            import pytorch_grad_cam
        finally:
            for name in stand_in:
                sys.modules.pop(name, None)
        NOTE = f"torchvision present but not importable ({reason}): pytorch-grad-cam imported with a stand-in"
        return pytorch_grad_cam
    import pytorch_grad_cam

    return pytorch_grad_cam


def peer_gradcam(model, x, ids, layer: str = "layer4") -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM of ``layer`` for clip ``x`` [1, ...] and classes ``ids`` [1, n]
    -> [n, *input spatial size] (the peer's own upsampling and normalisation)."""
    gc = load()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(model.named_modules())[layer]
    n = ids.shape[1]
    batch = x.expand(n, *x.shape[1:]).contiguous()
    targets = [ClassifierOutputTarget(int(c)) for c in ids[0].tolist()]
    with gc.GradCAM(model=model, target_layers=[module]) as cam:
        return cam(input_tensor=batch, targets=targets)
