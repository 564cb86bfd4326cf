"""Reading a vocabulary and annotation rows.

* Categories file: one class name per line (M-MiT's ``moments_categories.txt`` style;
  a trailing ``,<integer id>`` on a line, as in Moments in Time v1, is accepted and the id
  must equal the line's position). Blank lines are skipped; duplicates are an error.
* Annotations, M-MiT CSV: rows ``relative/video/path.mp4,label,label,...`` (no header; a
  first row whose first field is ``path``/``video``/``filename`` is taken as a header).
* Annotations, JSONL: one object per line, ``{"path": ..., "labels": [...]}``.

A label outside the vocabulary is an :class:`AnnotationError` naming the file, line and
video, unless ``drop_unknown`` (then the label is dropped; a row left with no label is
rejected with that reason, and does not count as a listing of its file). A file that lists no
video (empty, blank lines, a header only), or a CSV row that is not one (a field over the csv
module's limit), is an :class:`AnnotationError` naming the file (and line).
A video listed twice is rejected the second time; "twice" means
the same file, whatever the spelling (``a.mp4``, ``./a.mp4``, ``dir//../a.mp4``, a symlink or
a hard link to it): paths are compared by the file they resolve to under the video root.
Both files must be UTF-8 (a BOM is allowed); any other byte is an error naming file, line and
byte.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple


class AnnotationError(ValueError):
    """A categories or annotation file that cannot be used; the message names file and line."""


@dataclass
class Annotation:
    index: int                 # position among the annotation rows (stable: it makes the key)
    path: str                  # as written in the file (relative to the video root)
    labels: List[str]
    label_ids: List[int]
    line: int                  # 1-based line in the annotation file
    dropped: List[str] = field(default_factory=list)   # unknown labels dropped (drop_unknown)


def read_text(path: str, what: str = "annotation file") -> str:
    """The UTF-8 text of ``path`` (BOM dropped); an :class:`AnnotationError` naming the line,
    column and byte when it is not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise AnnotationError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise AnnotationError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {col}); "
                              "save the file as UTF-8") from None


def read_categories(path: str) -> List[str]:
    """The vocabulary: class names in id order."""
    if not os.path.exists(path):
        raise AnnotationError(f"categories file {path} does not exist")
    classes: List[str] = []
    seen: Dict[str, int] = {}
    with io.StringIO(read_text(path, "categories file")) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            name = line
            if "," in line:
                head, _, tail = line.rpartition(",")
                if tail.strip().lstrip("-").isdigit():
                    if int(tail) != len(classes):
                        raise AnnotationError(
                            f"{path}:{lineno}: class {head.strip()!r} has id {tail.strip()}, expected {len(classes)} "
                            "(ids must count up from 0 in file order)")
                    name = head.strip()
            if name in seen:
                raise AnnotationError(f"{path}:{lineno}: class {name!r} repeats line {seen[name]}")
            seen[name] = lineno
            classes.append(name)
    if not classes:
        raise AnnotationError(f"categories file {path} lists no classes")
    return classes


def _detect_jsonl(path: str, text: str) -> bool:
    if path.endswith((".jsonl", ".json", ".ndjson")):
        return True
    if path.endswith((".csv", ".txt")):
        return False
    for line in text.splitlines():
        if line.strip():
            return line.lstrip().startswith("{")
    return False


def _raw_rows(path: str) -> List[Tuple[int, str, List[str]]]:
    """``(line, video path, labels)`` for each non-empty row."""
    rows = []
    text = read_text(path)
    if _detect_jsonl(path, text):
        with io.StringIO(text) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise AnnotationError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or "path" not in obj:
                    raise AnnotationError(f"{path}:{lineno}: expected an object with 'path' and 'labels'")
                labels = obj.get("labels", [])
                if isinstance(labels, str):
                    labels = [labels]
                if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                    raise AnnotationError(f"{path}:{lineno}: 'labels' must be a list of class names")
                rows.append((lineno, str(obj["path"]), [x.strip() for x in labels if x.strip()]))
    else:
        with io.StringIO(text, newline="") as f:
            reader = csv.reader(f)
            try:
                for fields in reader:
                    lineno = reader.line_num
                    fields = [x.strip() for x in fields]
                    if not fields or not any(fields):
                        continue
                    rows.append((lineno, fields[0], [x for x in fields[1:] if x]))
            except csv.Error as e:
                raise AnnotationError(f"{path}:{reader.line_num}: {_csv_problem(e)}") from None
    return rows


def _csv_problem(e: csv.Error) -> str:
    """A csv module error as what it means for an annotation file."""
    if "field larger than field limit" in str(e):
        return f"a field longer than {csv.field_size_limit()} characters (csv's limit): not an annotation row"
    return f"not a CSV row ({e})"


def file_identity(video_root: Optional[str], vpath: str):
    """What makes two spellings one video: ``(device, inode)`` of the file when it exists
    (symlinks followed, so hard links and symlinks count as the same file), else its
    resolved absolute path (``os.path.realpath``); without a root, the normalised path."""
    if video_root is None:
        return os.path.normpath(vpath)
    full = vpath if os.path.isabs(vpath) else os.path.join(video_root, vpath)
    try:
        st = os.stat(full)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return os.path.realpath(full)


def read_annotations(path: str, classes: Sequence[str], drop_unknown: bool = False,
                     video_root: Optional[str] = None) -> Tuple[List[Annotation], List[Dict]]:
    """Parse ``path`` against ``classes``; return ``(rows, rejected)`` where rejected rows are
    ``{"source", "reason", "line", "index"}`` (no labels left, duplicate video: the same file
    as an earlier row, compared by :func:`file_identity` under ``video_root``)."""
    if not os.path.exists(path):
        raise AnnotationError(f"annotation file {path} does not exist")
    ids = {c: i for i, c in enumerate(classes)}
    raw = _raw_rows(path)
    if raw and raw[0][1].lower() in ("path", "video", "filename", "file", "video_path") and not any(l in ids for l in raw[0][2]):
        raw = raw[1:]
    if not raw:
        raise AnnotationError(f"{path}: the annotation file lists no video (empty, blank lines or a header only)")
    out: List[Annotation] = []
    rejected: List[Dict] = []
    first: Dict[object, Tuple[int, str, List[str]]] = {}   # file identity -> (line, path, labels)
    for index, (lineno, vpath, labels) in enumerate(raw):
        if not vpath:
            raise AnnotationError(f"{path}:{lineno}: empty video path")
        unknown = [l for l in labels if l not in ids]
        if unknown and not drop_unknown:
            raise AnnotationError(
                f"{path}:{lineno}: video {vpath!r} has label(s) {unknown} not in the {len(classes)}-class "
                f"vocabulary (pass --drop-unknown / drop_unknown=True to drop them)")
        known: List[str] = []
        for l in labels:
            if l in ids and l not in known:
                known.append(l)
        ident = file_identity(video_root, vpath)
        if ident in first:
            line0, path0, labels0 = first[ident]
            same = "" if path0 == vpath else f" as {path0!r}"
            clash = f"; its labels {known} differ from that row's {labels0}, which are kept" if known != labels0 else ""
            rejected.append({"source": vpath, "line": lineno, "index": index,
                             "reason": f"duplicate: the same file is already listed{same} on line {line0}{clash}"})
            continue
        if not known:  # rejected: it does not claim the file (a later row of it may be kept)
            why = f"no known labels (dropped unknown {unknown})" if unknown else "no labels"
            rejected.append({"source": vpath, "line": lineno, "index": index, "reason": why})
            continue
        first[ident] = (lineno, vpath, known)
        out.append(Annotation(index=index, path=vpath, labels=known, label_ids=[ids[l] for l in known],
                              line=lineno, dropped=unknown))
    return out, rejected


def slurm_part(env=None) -> Tuple[int, int]:
    """``(i, N)`` of this task of a Slurm job array: ``i = SLURM_ARRAY_TASK_ID -
    SLURM_ARRAY_TASK_MIN`` (MIN defaults to 0), ``N = SLURM_ARRAY_TASK_COUNT``. The array must
    be a contiguous range (``--array=0-15`` or ``1-16``, any ``%`` limit): steps or lists
    would leave parts unpacked, so they are an error."""
    env = os.environ if env is None else env
    need = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
    if any(k not in env for k in need):
        raise ValueError("--part auto reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, which are not set: "
                         "run it inside `sbatch --array=0-N` (or give --part i/N)")
    try:
        tid, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        lo = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        hi = int(env.get("SLURM_ARRAY_TASK_MAX", lo + count - 1))
        step = int(env.get("SLURM_ARRAY_TASK_STEP", 1))
    except ValueError:
        raise ValueError("--part auto: the SLURM_ARRAY_TASK_* variables are not integers") from None
    if step != 1 or hi - lo + 1 != count:
        raise ValueError(f"--part auto needs a contiguous job array (e.g. --array=0-{count - 1}); this one runs "
                         f"{count} tasks over ids {lo}..{hi} step {step}, which would leave parts unpacked")
    return parse_part((tid - lo, count))


def parse_part(part) -> Optional[Tuple[int, int]]:
    """``"2/8"`` or ``(2, 8)`` -> ``(2, 8)``; ``"auto"``: this Slurm array task's
    (:func:`slurm_part`); ``None`` stays ``None``."""
    if part is None:
        return None
    if isinstance(part, str) and part.strip().lower() == "auto":
        return slurm_part()
    if isinstance(part, str):
        try:
            i, n = (int(x) for x in part.split("/"))
        except ValueError:
            raise ValueError(f"--part must look like i/N (e.g. 0/4), got {part!r}") from None
    else:
        i, n = part
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"part {i}/{n}: need 0 <= i < N")
    return int(i), int(n)


def part_range(total: int, part: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    """Part ``i`` of ``N`` of ``total`` rows: the half-open index range
    ``[i*total//N, (i+1)*total//N)``; the parts are disjoint and cover every row."""
    if part is None:
        return 0, total
    i, n = part
    return i * total // n, (i + 1) * total // n


def select_part(rows: Sequence, part: Optional[Tuple[int, int]]) -> List:
    """The rows of part ``i`` of ``N`` (a contiguous slice, see :func:`part_range`)."""
    lo, hi = part_range(len(rows), part)
    return list(rows[lo:hi])
