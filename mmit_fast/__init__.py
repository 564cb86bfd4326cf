"""mmit-fast: multi-label video action recognition at scale.

Data flows one way::

    pack -> shards -> data (loader) -> models -> losses -> metrics -> interpret

The names most users need are re-exported lazily here so that ``import mmit_fast``
stays cheap (no torch import until a loss or model is asked for).
"""
from ._version import __version__

_LAZY = {
    "losses": "mmit_fast.losses",
    "shards": "mmit_fast.shards",
    "metrics": "mmit_fast.metrics",
    "models": "mmit_fast.models",
    "data": "mmit_fast.data",
    "pack": "mmit_fast.pack",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(_LAZY[name])
    raise AttributeError(f"module 'mmit_fast' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
