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


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Caches the code keeps between runs (dissection's packed concept masks) go to a folder of this
    test session, not to the user's ~/.cache (subprocesses inherit it)."""
    old = os.environ.get("MMIT_CACHE_DIR")
    os.environ["MMIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("mmit-cache"))
    yield
    if old is None:
        os.environ.pop("MMIT_CACHE_DIR", None)
    else:
        os.environ["MMIT_CACHE_DIR"] = old
