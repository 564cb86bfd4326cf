"""Pictures and HTML of interpretation (the only drawing code): mCAM overlays like the paper's
Figure 6, frame strips and GIFs, the CAM gallery, and the dissection figures.

mCAM overlay of one frame (``heat`` in [0, 1], ``owner`` = class slot or -1):

* red overlay of the important regions: ``out = (1 - a) * frame + a * RED`` with
  ``a = alpha * clip((heat - floor) / (1 - floor), 0, 1)`` per pixel (``floor`` = 0.35: the
  weak part of a min-max normalised map stays clear);
* blue boundaries: pixels whose owner differs from the pixel to the right or below, both owned
  (>= 0) and both with ``heat >= floor``: painted ``BLUE``;
* labels: each class is written (white on black) at the centre of mass of the pixels it owns
  with ``heat >= 0.5``, kept inside the picture.

All files are written atomically.
"""
from __future__ import annotations

import html
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .._io import atomic_path, atomic_write_text

__all__ = ["RED", "BLUE", "GREEN", "CATEGORY_COLORS", "overlay_frame", "clip_strip", "comparison_strip", "save_png",
           "save_gif", "write_gallery", "bar_chart", "grouped_bar_chart", "mask_overlay", "tile_grid",
           "label_positions"]

RED = np.array([255, 0, 0], np.float32)
BLUE = np.array([0, 64, 255], np.uint8)
GREEN = (40, 230, 90)     # true action regions (boxes) drawn on comparison strips
# one colour per concept category, in every figure (Fig. 7, Fig. 9, the report page) with a legend
CATEGORY_COLORS = {"object": "#3b6fb6", "scene": "#2ca02c", "part": "#9467bd", "material": "#8c564b",
                   "texture": "#e377c2", "color": "#ff7f0e", "action": "#d62728"}


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _upscale(frame: np.ndarray, heat: np.ndarray, owner: np.ndarray, scale: int):
    if scale <= 1:
        return frame, heat, owner
    rep = lambda a: np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)  # noqa: E731
    from PIL import Image

    H, W = heat.shape
    big = np.asarray(Image.fromarray(frame).resize((W * scale, H * scale), Image.BILINEAR))
    h = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((W * scale, H * scale), Image.BILINEAR))
    return big, np.clip(h, 0, 1), rep(owner)


def label_positions(heat: np.ndarray, owner: np.ndarray, n: int) -> Dict[int, tuple]:
    """``{slot: (y, x)}``: centre of mass of the pixels a slot owns with heat >= 0.5 (else all it owns)."""
    pos = {}
    for j in range(n):
        m = (owner == j) & (heat >= 0.5)
        if not m.any():
            m = owner == j
        if m.any():
            ys, xs = np.nonzero(m)
            pos[j] = (float(ys.mean()), float(xs.mean()))
    return pos


def overlay_frame(frame: np.ndarray, heat: np.ndarray, owner: np.ndarray, labels: Sequence[str], *,
                  alpha: float = 0.65, floor: float = 0.35, scale: int = 1, boxes: Sequence = ()) -> np.ndarray:
    """One mCAM picture: uint8 [H*scale, W*scale, 3] (module docstring); ``boxes`` (x0, y0, x1, y1)
    in frame pixels are outlined in green (the true action regions)."""
    from PIL import Image, ImageDraw

    frame, heat, owner = _upscale(np.asarray(frame, np.uint8), np.asarray(heat, np.float32), np.asarray(owner), scale)
    a = (alpha * np.clip((heat - floor) / max(1e-6, 1 - floor), 0, 1))[..., None]
    out = ((1 - a) * frame.astype(np.float32) + a * RED).round().clip(0, 255).astype(np.uint8)
    owned = (owner >= 0) & (heat >= floor)
    b = np.zeros(owner.shape, bool)
    dx = (owner[:, 1:] != owner[:, :-1]) & owned[:, 1:] & owned[:, :-1]
    dy = (owner[1:, :] != owner[:-1, :]) & owned[1:, :] & owned[:-1, :]
    b[:, 1:] |= dx
    b[1:, :] |= dy
    out[b] = BLUE
    img = Image.fromarray(out)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=GREEN, width=max(1, scale // 2))
    font = _font(max(10, out.shape[0] // 16))
    for j, (y, x) in label_positions(heat, owner, len(labels)).items():
        text = labels[j]
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        tw, th = x1 - x0, y1 - y0
        px = int(min(max(x - tw / 2, 1), out.shape[1] - tw - 2))
        py = int(min(max(y - th / 2, 1), out.shape[0] - th - 2))
        draw.rectangle([px - 1, py - 1, px + tw + 1, py + th + 2], fill=(0, 0, 0))
        draw.text((px - x0, py - y0), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def clip_strip(frames: np.ndarray, heat: np.ndarray, owner: np.ndarray, labels: Sequence[str], *,
               max_frames: int = 8, scale: int = 2, gap: int = 2, cols: int = 4) -> np.ndarray:
    """Per-frame overlays (``max_frames`` evenly spaced frames) in rows of ``cols``: uint8 [h, w, 3].
    Rows of 4 keep a strip of 112-px frames at scale 2 under 910 px wide, so a page shows it at
    its own size and the labels stay legible."""
    T = frames.shape[0]
    picks = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
    tiles = [overlay_frame(frames[t], heat[t], owner[t], labels, scale=scale) for t in picks]
    return tile_grid(tiles, cols=min(cols, len(tiles)), gap=gap)


def comparison_strip(frames: np.ndarray, rows: Sequence[tuple], boxes: Optional[np.ndarray] = None, *,
                     max_frames: int = 4, scale: int = 2, gap: int = 3) -> np.ndarray:
    """Rows of per-frame overlays of one clip, one row per ``(title, heat [T, H, W], owner [T, H, W],
    labels)``, each row headed by its title; ``boxes`` [A, T, 4] outlined in every tile."""
    from PIL import Image, ImageDraw

    T = frames.shape[0]
    picks = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
    font = _font(max(12, frames.shape[1] * scale // 14))
    out = []
    for title, heat, owner, labels in rows:
        tiles = [overlay_frame(frames[t], heat[t], owner[t], labels, scale=scale,
                               boxes=[] if boxes is None else [b for b in boxes[:, t] if b[2] > b[0]]) for t in picks]
        strip = tile_grid(tiles, cols=len(tiles), gap=gap)
        head = Image.new("RGB", (strip.shape[1], font.size + 8), (255, 255, 255))
        ImageDraw.Draw(head).text((2, 3), title, fill=(0, 0, 0), font=font)
        out.append(np.concatenate([np.asarray(head), strip], axis=0))
    return tile_grid(out, cols=1, gap=gap) if len({o.shape for o in out}) == 1 else np.concatenate(out, axis=0)


def tile_grid(tiles: Sequence[np.ndarray], cols: int, gap: int = 2, fill: int = 255) -> np.ndarray:
    """Tiles (same size, uint8 [h, w, 3]) in a grid with ``gap`` pixels between them."""
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), fill, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = t
    return out


def save_png(path: str, image: np.ndarray) -> str:
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
    return path


def save_gif(path: str, images: Sequence[np.ndarray], fps: float = 4.0) -> str:
    from PIL import Image

    ims = [Image.fromarray(np.asarray(i, np.uint8)) for i in images]
    with atomic_path(path, suffix=".gif") as tmp:
        ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)
    return path


def mask_overlay(image: np.ndarray, mask: np.ndarray, dim: float = 0.35) -> np.ndarray:
    """Fig. 10 style: the image kept inside ``mask`` (bool [H, W]), dimmed outside, mask edge in red."""
    img = np.asarray(image, np.float32)
    out = np.where(mask[..., None], img, img * dim)
    e = np.zeros_like(mask)
    e[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    e[1:, :] |= mask[1:, :] != mask[:-1, :]
    out[e] = RED
    return out.clip(0, 255).astype(np.uint8)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _text(s: str) -> str:
    """A string from data as matplotlib text: ``$`` escaped so it is never read as mathtext."""
    return str(s).replace("$", r"\$")


def bar_chart(path: str, names: Sequence[str], values: Sequence[float], *, title: str, ylabel: str,
              colors: Optional[Sequence[str]] = None, legend: Optional[Dict[str, str]] = None) -> str:
    """A bar chart PNG (Fig. 9: units per concept); ``legend`` {label: colour} when bars are coloured
    by category."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 1.5), 3.8), dpi=110)
    ax.bar(range(len(names)), values, color=colors or "#3b6fb6")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([_text(n) for n in names], rotation=70, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(_text(title), fontsize=10)
    if legend:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, label=_text(k)) for k, c in legend.items()], fontsize=8, title="category",
                  title_fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def grouped_bar_chart(path: str, groups: Sequence[str], series: Dict[str, Sequence[float]], *, title: str,
                      ylabel: str, colors: Optional[Dict[str, str]] = None) -> str:
    """Bars per group and series (Fig. 7: interpretable units per block and category); ``colors``
    {series: colour} (default :data:`CATEGORY_COLORS`, grey for other names)."""
    plt = _plt()
    colors = CATEGORY_COLORS if colors is None else colors
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2), 3.8), dpi=110)
    k = max(1, len(series))
    width = 0.8 / k
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(np.arange(len(groups)) + (i - (k - 1) / 2) * width, vals, width, label=_text(name),
               color=colors.get(name, "#777777"))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([_text(g) for g in groups])
    ax.set_ylabel(ylabel)
    ax.set_title(_text(title), fontsize=10)
    ax.legend(fontsize=8, title="category", title_fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


_CSS = ("body{font-family:sans-serif;margin:20px;max-width:1400px}img{max-width:100%;image-rendering:pixelated}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
        ".card{margin:12px 0;padding:8px;border:1px solid #ddd}")


def html_page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def write_gallery(path: str, entries: Sequence[Dict], *, title: str, note: str = "") -> str:
    """The mCAM gallery: per clip its picture, predicted labels with scores, true labels, GIF link.
    ``entries``: dicts with ``key``, ``png``, ``gif`` (paths relative to the page), ``pred``
    (list of (label, score)), ``truth`` (list of str)."""
    rows: List[str] = [f"<p>{html.escape(note)}</p>" if note else ""]
    for e in entries:
        pred = ", ".join(f"{html.escape(c)} {s:.2f}" for c, s in e["pred"])
        truth = ", ".join(html.escape(t) for t in e.get("truth") or []) or "&mdash;"
        gif = f" &middot; <a href='{html.escape(e['gif'])}'>animation</a>" if e.get("gif") else ""
        rows.append(f"<div class='card'><b>{html.escape(e['key'])}</b> &middot; predicted: {pred} &middot; "
                    f"truth: {truth}{gif}<br><img src='{html.escape(e['png'])}' alt='{html.escape(e['key'])}'></div>")
    atomic_write_text(path, html_page(title, "\n".join(rows)))
    return path


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
