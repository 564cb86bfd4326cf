"""Small I/O helpers shared by every stage: atomic writes (temp file in the same
folder, fsync, then ``os.replace``, then fsync of the folder), so that a crash never leaves a
half-written file under its final name. Files get the mode a plain ``open()`` would give
(``0666 & ~umask``), not ``mkstemp``'s 0600."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would respect the umask
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


OUTPUT_MARKER = ".mmit-output"


class OutputDirError(ValueError):
    """An ``--out`` folder that holds files this verb did not write: nothing is written there."""


def claim_output_dir(path: PathLike, verb: str) -> str:
    """Make ``path`` the output folder of ``mmit <verb>``: created when missing; an existing
    folder must be empty or carry the marker file (:data:`OUTPUT_MARKER`) of an earlier run of
    the same verb, whose files are then replaced. Any other non-empty folder (the user's own
    ``index.html``...) or another verb's output raises :class:`OutputDirError` before anything
    is written. Returns the path."""
    path = os.fspath(path)
    marker = os.path.join(path, OUTPUT_MARKER)
    if os.path.isdir(path) and os.listdir(path):
        owner = None
        try:
            with open(marker, encoding="utf-8") as f:
                owner = json.load(f).get("verb")
        except (OSError, ValueError, AttributeError):
            pass
        if owner is None:
            names = sorted(n for n in os.listdir(path) if not n.startswith("."))[:3] or sorted(os.listdir(path))[:3]
            raise OutputDirError(f"--out {path}: a folder with files of its own ({', '.join(names)}, ...), not the "
                                 f"output of an earlier mmit {verb}: nothing is written there; give a new or empty "
                                 "folder")
        if owner != verb:
            raise OutputDirError(f"--out {path}: holds the output of mmit {owner}, not of mmit {verb}: nothing is "
                                 "written there; give a new or empty folder")
    os.makedirs(path, exist_ok=True)
    if not os.path.exists(marker):
        atomic_write_text(marker, json.dumps({"verb": verb}) + "\n")
    return path
