"""Reader of concept datasets in the Broden layout (NetDissect), plus action regions.

A folder holds:

* ``index.csv``: header ``image,split,ih,iw,sh,sw,<category>...`` (categories among color,
  object, part, material, scene, texture, action; at least one). ``image`` is a file under
  ``images/``; ``ih, iw`` the image size, ``sh, sw`` the mask size (integers > 0). A category
  cell holds ``;``-separated tokens, each one of:

  - ``name.png``: a mask image under ``images/`` whose pixel label is ``R + 256 * G``
    (0 = none), size ``sh x sw``;
  - ``N``: an image-level label (the whole image is concept N, e.g. scenes, textures);
  - ``box:x0,y0,x1,y1:N``: an action region, a box in mask pixels (x1, y1 exclusive) made into
    a mask of concept N (the paper's Action Regions are boxes).

* ``label.csv``: ``number,name,category,...``; ``category`` is ``cat(count)`` or several
  ``;``-separated, the one with the largest count is the concept's category.
* ``category.csv`` (optional, not needed).

Malformed files and rows raise :class:`BrodenError` naming file and line; an image or mask
that cannot be read raises it when loaded (:meth:`Broden.load`), so a caller can skip and count.

A concept set is data from whoever made it: image and mask names must be files inside
``images/`` (no absolute path, no ``..``), and sizes are checked before anything is allocated:
a row claiming more than :data:`MAX_PIXELS` pixels for its image or masks, and an image or
mask file whose header does, raise :class:`BrodenError` when loaded (skipped and counted).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["BrodenError", "Concept", "Broden", "CATEGORIES", "MAX_PIXELS", "read_mask_png"]

CATEGORIES = ("object", "scene", "part", "material", "texture", "color", "action")
#: the most pixels a concept image or mask may have (Broden's are 224 x 224 to 384 x 384)
MAX_PIXELS = 4096 * 4096
_NEED = ("image", "ih", "iw", "sh", "sw")
_BOX = re.compile(r"^box:(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?):(\d+)$")
_CAT = re.compile(r"^\s*([A-Za-z_]+)\s*(?:\((\d+)\))?\s*$")


class BrodenError(ValueError):
    """A concept dataset file, row or sample that is not in the Broden layout."""


@dataclass(frozen=True)
class Concept:
    number: int
    name: str
    category: str


@dataclass
class _Row:
    image: str
    ih: int
    iw: int
    sh: int
    sw: int
    cells: Dict[str, List[str]]
    line: int


def _open_image(path: str, what: str):
    """A PIL image opened lazily, its header's size checked against :data:`MAX_PIXELS` before
    any pixel is decoded (PIL's own, larger, decompression-bomb limit refuses some at open)."""
    from PIL import Image

    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise BrodenError(f"{path}: its header claims more than the {MAX_PIXELS} pixels a concept image may have "
                          f"(PIL: {e})") from None
    except (OSError, ValueError) as e:
        raise BrodenError(f"{path}: {what} cannot be read ({type(e).__name__}: {e})") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise BrodenError(f"{path}: its header claims {w}x{h} pixels, more than the {MAX_PIXELS} a concept image "
                          "may have")
    return im


def read_mask_png(path: str) -> np.ndarray:
    """A Broden mask PNG as int64 labels ``R + 256 * G`` [h, w]."""
    with _open_image(path, "mask") as im:
        try:
            a = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise BrodenError(f"{path}: mask cannot be read ({type(e).__name__}: {e})") from None
    return a[..., 0].astype(np.int64) + 256 * a[..., 1].astype(np.int64)


def _read_labels(path: str) -> Dict[int, Concept]:
    if not os.path.isfile(path):
        raise BrodenError(f"{path}: missing (label.csv: number,name,category)")
    out: Dict[int, Concept] = {}
    with open(path, newline="", encoding="utf-8") as f:
        rd = csv.DictReader(f)
        miss = [c for c in ("number", "name", "category") if c not in (rd.fieldnames or [])]
        if miss:
            raise BrodenError(f"{path}: missing column(s) {miss}")
        for i, r in enumerate(rd, 2):
            try:
                num = int(r["number"])
            except (TypeError, ValueError):
                raise BrodenError(f"{path}:{i}: number {r['number']!r} is not an integer") from None
            cats = []
            for part in (r["category"] or "").split(";"):
                m = _CAT.match(part)
                if m:
                    cats.append((int(m.group(2) or 0), m.group(1)))
            if not cats:
                raise BrodenError(f"{path}:{i}: category {r['category']!r} is not 'name' or 'name(count)'")
            if num in out:
                raise BrodenError(f"{path}:{i}: label number {num} appears twice")
            cat = max(cats, key=lambda c: c[0])[1] if any(c[0] for c in cats) else cats[0][1]
            if num > 0:
                out[num] = Concept(num, r["name"], cat)
    return out


def _int(v: str, col: str, where: str) -> int:
    try:
        x = int(v)
    except (TypeError, ValueError):
        raise BrodenError(f"{where}: {col} {v!r} is not an integer") from None
    if x <= 0:
        raise BrodenError(f"{where}: {col} must be > 0, got {x}")
    return x


class Broden:
    """A Broden-layout concept dataset (module docstring). ``categories`` keeps only those."""

    def __init__(self, root: str, categories: Optional[Sequence[str]] = None):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise BrodenError(f"{self.root}: not a folder (a Broden-layout concept dataset is a folder with index.csv)")
        self.all_concepts = _read_labels(os.path.join(self.root, "label.csv"))
        self.rows, self.categories = self._read_index(os.path.join(self.root, "index.csv"), categories)
        self.concepts = {n: c for n, c in self.all_concepts.items() if c.category in self.categories}
        if not self.rows:
            raise BrodenError(f"{self.root}/index.csv: no images")
        if not self.concepts:
            raise BrodenError(f"{self.root}: empty concept set (no labels of categories {list(self.categories)} "
                              "in label.csv)")

    def _read_index(self, path: str, keep: Optional[Sequence[str]]) -> Tuple[List[_Row], List[str]]:
        if not os.path.isfile(path):
            raise BrodenError(f"{path}: missing (index.csv: image,split,ih,iw,sh,sw,<categories>)")
        with open(path, newline="", encoding="utf-8") as f:
            rd = csv.DictReader(f)
            cols = rd.fieldnames or []
            miss = [c for c in _NEED if c not in cols]
            if miss:
                raise BrodenError(f"{path}: missing column(s) {miss}")
            cats = [c for c in cols if c in CATEGORIES]
            if keep is not None:
                bad = [c for c in keep if c not in CATEGORIES]
                if bad:
                    raise BrodenError(f"unknown concept categories {bad}; choose among {list(CATEGORIES)}")
                cats = [c for c in cats if c in keep]
            if not cats:
                raise BrodenError(f"{path}: empty concept set (no category column among {list(keep or CATEGORIES)})")
            rows = [self._row(r, cats, f"{path}:{i}", i) for i, r in enumerate(rd, 2)]
        return rows, cats

    def _row(self, r: Dict[str, str], cats: List[str], where: str, line: int) -> _Row:
        if None in r:
            raise BrodenError(f"{where}: more cells than columns")
        if not r.get("image"):
            raise BrodenError(f"{where}: empty image name")
        size = [_int(r.get(c), c, where) for c in ("ih", "iw", "sh", "sw")]
        cells = {}
        for c in cats:
            toks = [t.strip() for t in (r.get(c) or "").split(";") if t.strip()]
            for t in toks:
                if not (t.isdigit() or t.lower().endswith(".png") or _BOX.match(t)):
                    raise BrodenError(f"{where}: {c} token {t!r} is neither a .png mask, a label number nor "
                                      "box:x0,y0,x1,y1:N")
                num = int(t) if t.isdigit() else (int(_BOX.match(t).group(5)) if _BOX.match(t) else None)
                if num is not None and num not in self.all_concepts:
                    raise BrodenError(f"{where}: {c} label {num} is not in label.csv")
            cells[c] = toks
        return _Row(r["image"], *size, cells=cells, line=line)

    def __len__(self) -> int:
        return len(self.rows)

    def _file(self, r: _Row, name: str) -> str:
        """``images/<name>`` when ``name`` stays inside ``images/``; BrodenError otherwise."""
        parts = re.split(r"[\\/]+", name)
        if os.path.isabs(name) or name[:1] in "/\\" or ".." in parts:
            raise BrodenError(f"{self.root}/index.csv:{r.line}: image {name!r} is not a file inside "
                              f"{self.root}/images")
        return os.path.join(self.root, "images", name)

    def _check_size(self, r: _Row) -> None:
        if r.ih * r.iw > MAX_PIXELS or r.sh * r.sw > MAX_PIXELS:
            raise BrodenError(f"{self.root}/index.csv:{r.line}: image {r.image} claims {r.iw}x{r.ih} pixels (masks "
                              f"{r.sw}x{r.sh}), more than the {MAX_PIXELS} a concept image may have")

    def image(self, i: int) -> np.ndarray:
        """uint8 [ih, iw, 3] of row ``i`` (resized to ``ih x iw`` if the file differs); the
        row's claimed sizes and the file's header are checked first (module docstring)."""
        from PIL import Image

        r = self.rows[i]
        path = self._file(r, r.image)
        self._check_size(r)
        with _open_image(path, "image") as im:
            try:
                im = im.convert("RGB")
                if im.size != (r.iw, r.ih):
                    im = im.resize((r.iw, r.ih), Image.BILINEAR)
                return np.asarray(im)
            except (OSError, ValueError) as e:
                raise BrodenError(f"{path}: image cannot be read ({type(e).__name__}: {e})") from None

    def masks(self, i: int) -> Tuple[Dict[int, np.ndarray], List[str]]:
        """``({concept number: bool [sh, sw]}, annotated categories)`` of row ``i``."""
        r = self.rows[i]
        self._check_size(r)
        out: Dict[int, np.ndarray] = {}

        def add(num: int, m: np.ndarray) -> None:
            if num in self.concepts and m.any():
                out[num] = out[num] | m if num in out else m

        for cat in self.categories:
            for t in r.cells.get(cat, []):
                if t.isdigit():
                    add(int(t), np.ones((r.sh, r.sw), bool))
                elif _BOX.match(t):
                    g = _BOX.match(t).groups()
                    x0, y0, x1, y1 = (float(v) for v in g[:4])
                    m = np.zeros((r.sh, r.sw), bool)
                    m[max(0, int(y0)):max(0, int(np.ceil(y1))), max(0, int(x0)):max(0, int(np.ceil(x1)))] = True
                    add(int(g[4]), m)
                else:
                    lab = read_mask_png(self._file(r, t))
                    if lab.shape != (r.sh, r.sw):
                        raise BrodenError(f"{self.root}/images/{t}: mask is {lab.shape[1]}x{lab.shape[0]}, "
                                          f"index.csv line {r.line} says {r.sw}x{r.sh}")
                    for num in np.unique(lab[lab > 0]):
                        add(int(num), lab == num)
        annotated = [c for c in self.categories if r.cells.get(c)]
        return out, annotated

    def load(self, i: int) -> Tuple[np.ndarray, Dict[int, np.ndarray], List[str]]:
        img = self.image(i)
        m, ann = self.masks(i)
        return img, m, ann
