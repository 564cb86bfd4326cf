"""Test configuration.

No GPU here nor in CI: Triton kernels run on CPU tensors through the interpreter.
``TRITON_INTERPRET`` is read when a kernel is decorated, so it is set before any test
module imports ``mmit_fast.kernels``.
"""
import os

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
