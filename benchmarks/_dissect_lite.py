"""Run a user's checkout of NetDissect-Lite (CSAILVision/NetDissect-Lite) as published: its own
``FeatureOperator.quantile_threshold`` and ``FeatureOperator.tally`` on a float64 feature memmap
in its own layout ([N, K, h, w], what its ``feature_extraction`` writes).

Nothing of Lite's code is copied here. The checkout is imported from where it lies, and only what
today's Python, NumPy and SciPy stop is patched, at run time, before its modules are imported:

* ``scipy.misc.imresize`` (removed in SciPy 1.3): ``imresize(arr, (h, w), mode='F')`` was
  ``toimage(arr, mode='F').resize((w, h), Image.BILINEAR)`` read back as float32 -- the same PIL
  call here;
* ``scipy.misc.imread`` (removed in SciPy 1.2): a PIL read as RGB; the array is uint16 so that
  Lite's ``rgb[:, :, 0] + rgb[:, :, 1] * 256`` gives the label it gave under NumPy < 2 (value-based
  casting promoted ``uint8 * 256`` to uint16; NumPy 2 refuses the Python int 256 for uint8);
* ``numpy.NaN`` (removed in NumPy 2): an alias of ``numpy.nan`` (``util/vecquantile.py`` uses it);
* ``SegmentationData.onehot``: ``result[list(np.indices(arr.shape)) + [arr]] = 1`` -- NumPy >= 1.23
  reads a list index as one array index, not as a tuple of indices, which silently writes the
  wrong cells and corrupts every IoU; the same line with ``tuple(...)``;
* ``SegmentationPrefetcher.batches``: ``raise StopIteration`` inside a generator is a
  ``RuntimeError`` since Python 3.7 (PEP 479); the same loop with ``return``.

Lite's settings are set as its README says to edit ``settings.py`` (data folder, output folder,
categories, quantile, CPU); everything else keeps its published value (``PARALLEL = 1``,
``TALLY_BATCH_SIZE = 16``, ``TALLY_AHEAD = 4``, a process pool of ``cpu_count()`` mask readers).
``tally`` computes the IoU matrix internally and returns only the best label per unit; the IoU is
rebuilt here from the four arrays its ``tally_job`` fills (the arrays are Lite's; the two lines of
arithmetic are its own ``tally``'s).
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from typing import Dict, List

import numpy as np


SHIMS = [
    "`scipy.misc.imresize` / `imread` (removed from SciPy) by the same PIL calls (the read widened to uint16 so "
    "that `R + 256 G` is what it was under NumPy < 2)",
    "`numpy.NaN` (removed in NumPy 2) = `numpy.nan`",
    "`SegmentationData.onehot`'s list index (NumPy >= 1.23 reads it as one array index and silently corrupts the "
    "IoU) as a tuple",
    "`raise StopIteration` in `SegmentationPrefetcher.batches` (a RuntimeError since Python 3.7) as `return`",
]


def checkout_commit(path: str) -> str:
    """The checkout's commit (``git rev-parse HEAD``), with ``+dirty`` when it has local changes."""
    try:
        head = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _imresize(arr, size, interp="bilinear", mode=None):
    from PIL import Image

    if mode != "F" or interp != "bilinear":
        raise NotImplementedError(f"shim: imresize(mode={mode!r}, interp={interp!r}) is not what Lite calls")
    im = Image.fromarray(np.asarray(arr, dtype=np.float32), mode="F")
    return np.array(im.resize((int(size[1]), int(size[0])), Image.BILINEAR))


def _imread(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.uint16)


def _onehot(self, arr, minlength=None):
    length = np.amax(arr) + 1
    if minlength is not None:
        length = max(minlength, length)
    result = np.zeros(arr.shape + (length,))
    result[tuple(list(np.indices(arr.shape)) + [arr])] = 1
    return result


def _batches(self):
    while True:
        batch = self.fetch_batch()
        if batch is None:
            return
        yield batch


def load(path: str, broden_dir: str, out_dir: str, categories: List[str], quantile: float):
    """Import the checkout at ``path`` with the shims and settings; ``(FeatureOperator class, captured
    tally arrays dict)``."""
    if not hasattr(np, "NaN"):
        np.NaN = np.nan
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import scipy.misc
    scipy.misc.imresize, scipy.misc.imread = _imresize, _imread
    sys.path.insert(0, os.path.abspath(path))
    import settings

    settings.GPU = False
    settings.DATA_DIRECTORY = broden_dir
    settings.OUTPUT_FOLDER = out_dir
    settings.CATAGORIES = list(categories)
    settings.QUANTILE = quantile
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import feature_operation
        from loader import data_loader
    data_loader.SegmentationData.onehot = _onehot
    data_loader.SegmentationPrefetcher.batches = _batches
    captured: Dict[str, np.ndarray] = {}
    published = feature_operation.FeatureOperator.tally_job

    def tally_job(args):   # remember the arrays Lite's tally fills (no change to what it does)
        captured.update(zip(("features", "data", "threshold", "tally_labels", "tally_units", "tally_units_cat",
                             "tally_both"), args[:7]))
        return published(args)

    feature_operation.FeatureOperator.tally_job = staticmethod(tally_job)
    return feature_operation.FeatureOperator, captured


def run_stage(op, features):
    """Lite's dissection stage: ``quantile_threshold`` then ``tally`` (its progress prints discarded)."""
    with contextlib.redirect_stdout(io.StringIO()):
        thr = op.quantile_threshold(features)
        op.tally(features, thr)
    return thr


def iou_of(op, captured) -> np.ndarray:
    """IoU [K, labels] from the arrays Lite's tally filled, with its own formula."""
    units_cat = np.dot(captured["tally_units_cat"], op.data.labelcat.T)
    both, labels = captured["tally_both"], captured["tally_labels"]
    return both / (units_cat + labels[np.newaxis, :] - both + 1e-10)
