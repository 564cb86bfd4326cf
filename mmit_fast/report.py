"""``mmit report RUN_DIR``: one self-contained HTML page that gathers a run.

``RUN_DIR`` is a training run (``config.yaml``, ``metrics.csv``, ``val_metrics.csv``,
``summary.json``, ``eval/``, ``checkpoints/``) or a demo folder holding one in ``train/``.
The page (default ``RUN_DIR/report.html``) has, in order:

1. the configuration (``config.yaml``) and the run summary (``summary.json``);
2. training and validation curves (PNG from ``metrics.csv`` / ``val_metrics.csv``);
3. the Table 1 row of every evaluation in ``eval/*_metrics.json`` next to its chance level;
4. per-class AP of one split (``eval/<split>_per_class_ap.csv``) as a sorted bar chart, each
   class with its training count (from the dataset's manifest, when found) and its positives
   in the split;
5. the worst-confused classes (from ``eval/<split>_scores.npz``): for each labelled class b and
   unlabelled class a, the number of videos labelled b (not a) whose top-1 prediction is a;
   with incomplete labels some of these are right answers the annotation missed;
6. the mCAM gallery (``cam/cams.json`` + its PNGs; first few clips) and
7. the dissection summary (``dissect/summary.json``) when present. Missing parts are named
   on the page (never silently left out).

Every picture is embedded as a ``data:`` URI, so the HTML file alone opens from disk with no
server; links to the full mCAM gallery and dissection report are relative.

A run folder may come from someone else, and the page is meant to be mailed: it is data. A
picture is embedded only when its path resolves (symlinks followed) inside the folder that
names it (``cam/`` for ``cams.json`` entries, ``dissect/`` for its figures) and the file starts
with the magic bytes of a PNG, JPEG or GIF; any other is named on the page and skipped. Every
string read from the folder is HTML-escaped; plots escape ``$`` so names are never mathtext.
"""
from __future__ import annotations

import base64
import csv
import glob
import html
import json
import os
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from ._io import atomic_write_text

METRICS = ("top1", "top5", "micro_map", "macro_map")
CAM_DIRS = ("cam", "interpret/cam", "mcam")
DISSECT_DIRS = ("dissect", "interpret/dissect", "dissection")


@dataclass
class RunFiles:
    root: str            # the folder given
    train: str           # the training run folder (root or root/train)
    eval: str            # train/eval
    cam: Optional[str]   # folder with cams.json / index.html
    dissect: Optional[str]


def _first_dir(bases: List[str], names, marker: str) -> Optional[str]:
    for b in bases:
        for n in names:
            d = os.path.join(b, n)
            if os.path.isfile(os.path.join(d, marker)):
                return d
    return None


def find_run(run_dir: str) -> RunFiles:
    """Locate the parts of a run; ``ValueError`` (one line) when ``run_dir`` holds no run."""
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir}: not a folder")
    marks = ("metrics.csv", "summary.json", "config.yaml")
    train = None
    for cand in (run_dir, os.path.join(run_dir, "train")):
        if any(os.path.isfile(os.path.join(cand, m)) for m in marks):
            train = cand
            break
    if train is None:
        raise ValueError(f"{run_dir}: no training run here or in {os.path.join(run_dir, 'train')} "
                         f"(none of {', '.join(marks)})")
    bases = [run_dir, train] if train != run_dir else [run_dir]
    parent = os.path.dirname(os.path.abspath(run_dir))
    if train == run_dir and os.path.isfile(os.path.join(parent, "demo_summary.json")):
        bases.append(parent)   # the train/ folder of a demo: its mCAM and dissection sit beside it
    return RunFiles(root=run_dir, train=train, eval=os.path.join(train, "eval"),
                    cam=_first_dir(bases, CAM_DIRS, "cams.json"),
                    dissect=_first_dir(bases, DISSECT_DIRS, "summary.json"))


# --------------------------------------------------------------------------- reading
def read_csv(path: str) -> List[Dict[str, str]]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows


def read_json(path: str) -> Optional[Any]:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_config(train_dir: str) -> Dict[str, Any]:
    path = os.path.join(train_dir, "config.yaml")
    if not os.path.isfile(path):
        return {}
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a mapping of config keys")
    return d


def train_counts(cfg: Dict[str, Any], classes: List[str]) -> Optional[np.ndarray]:
    """Per-class training counts from the run's dataset manifest, if it is still there and
    has the same vocabulary."""
    data = cfg.get("data")
    if not data or not os.path.isfile(os.path.join(str(data), "manifest.json")):
        return None
    from .shards import load_manifest

    man = load_manifest(str(data))
    if list(man.classes) != list(classes) or "train" not in man.splits:
        return None
    return np.asarray(man.class_counts("train"), dtype=np.int64)


def eval_tags(eval_dir: str) -> List[str]:
    """Tags of ``eval/<tag>_metrics.json`` files: val first, then test, then the others."""
    tags = [os.path.basename(p)[:-len("_metrics.json")] for p in glob.glob(os.path.join(eval_dir, "*_metrics.json"))]
    return sorted(tags, key=lambda t: ({"val": 0, "test": 1}.get(t, 2), t))


# --------------------------------------------------------------------------- analysis
def worst_confusions(scores: np.ndarray, targets: np.ndarray, classes: List[str], top: int = 10) -> List[Dict[str, Any]]:
    """Pairs (labelled b, predicted a): videos labelled b but not a whose top-1 class is a.

    Returns at most ``top`` pairs with ``count`` and ``share`` (count / videos labelled b),
    the largest counts first (ties: larger share, then class order)."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(targets) > 0.5
    pred = np.argmax(scores, axis=1)
    wrong = ~y[np.arange(len(pred)), pred]
    counts = np.zeros((y.shape[1], y.shape[1]), np.int64)   # [labelled b, predicted a]
    for i in np.flatnonzero(wrong):
        counts[y[i], pred[i]] += 1
    per_class = y.sum(0)
    pairs = [(int(counts[b, a]), counts[b, a] / max(1, per_class[b]), b, a)
             for b, a in zip(*np.nonzero(counts))]
    pairs.sort(key=lambda t: (-t[0], -t[1], t[2], t[3]))
    return [{"labelled": classes[b], "predicted": classes[a], "count": c, "share": float(s),
             "labelled_videos": int(per_class[b])} for c, s, b, a in pairs[:top]]


# --------------------------------------------------------------------------- html pieces
def _e(x: Any) -> str:
    return html.escape(str(x))


IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"))


def image_type(data: bytes) -> Optional[str]:
    """The MIME type of a PNG, JPEG or GIF file from its first bytes; None for anything else."""
    return next((mime for magic, mime in IMAGE_MAGIC if data.startswith(magic)), None)


def read_image(folder: str, name: str) -> tuple:
    """``(bytes, None)`` for an image file ``name`` inside ``folder``, else ``(None, why)``: the path
    must resolve (symlinks followed) inside ``folder`` and the file must start with image magic bytes."""
    base = os.path.realpath(folder)
    try:
        path = os.path.realpath(os.path.join(folder, name))
    except (ValueError, OSError):   # e.g. an embedded NUL byte
        return None, f"{name!r}: not a usable file name, not embedded"
    if os.path.commonpath([base, path]) != base:
        return None, f"{name}: outside {folder}, not embedded"
    if not os.path.isfile(path):
        return None, f"{os.path.join(folder, name)} (no such file)"
    with open(path, "rb") as f:
        data = f.read()
    if image_type(data) is None:
        return None, f"{os.path.join(folder, name)}: not a PNG, JPEG or GIF image, not embedded"
    return data, None


def _img(data: bytes, alt: str, cls: str = "") -> str:
    c = f' class="{_e(cls)}"' if cls else ""
    mime = image_type(data) or "image/png"
    return f'<img alt="{_e(alt)}"{c} src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _missing(what: str) -> str:
    return f'<p class="missing">Not present: {_e(what)}.</p>'


def _pct(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    return "-" if not np.isfinite(f) else f"{100 * f:.1f}"


def section_config(cfg: Dict[str, Any], summary: Optional[Dict[str, Any]], path: str) -> str:
    if not cfg:
        return "<h2>Configuration</h2>" + _missing(os.path.join(path, "config.yaml"))
    main = ("model", "depth", "width", "frames", "stride", "crop", "loss", "class_weights", "optimizer", "lr",
            "epochs", "batch_size", "seed", "data")
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(cfg[k])}</td></tr>" for k in main if k in cfg)
    out = f"<h2>Configuration</h2><table class='kv'>{rows}</table>"
    import yaml

    out += f"<details><summary>all {len(cfg)} keys (config.yaml)</summary><pre>{_e(yaml.safe_dump(cfg, sort_keys=False))}</pre></details>"
    if summary:
        keys = ("steps", "epochs_done", "elapsed_s", "clips_per_s", "device", "amp", "best_checkpoint")
        srow = "".join(f"<tr><th>{_e(k)}</th><td>{_e(round(summary[k], 2) if isinstance(summary[k], float) else summary[k])}</td></tr>"
                       for k in keys if summary.get(k) is not None)
        out += f"<h3>Run summary</h3><table class='kv'>{srow}</table>"
    return out


def section_curves(train_dir: str, chance: Optional[Dict[str, float]]) -> str:
    from .report_plots import curves_png

    tr = read_csv(os.path.join(train_dir, "metrics.csv"))
    va = read_csv(os.path.join(train_dir, "val_metrics.csv"))
    if not tr and not va:
        return "<h2>Training curves</h2>" + _missing("metrics.csv and val_metrics.csv")
    note = "" if va else _missing("val_metrics.csv (no validation during training)")
    return "<h2>Training curves</h2>" + _img(curves_png(tr, va, chance), "training and validation curves") + note


def section_table(eval_dir: str) -> str:
    tags = eval_tags(eval_dir)
    if not tags:
        return "<h2>Results (Table 1)</h2>" + _missing(f"{eval_dir}/*_metrics.json (run mmit eval)")
    head = "<tr><th>split</th><th>model</th><th>loss</th><th>videos</th>" + "".join(
        f"<th>{n}</th>" for n in ("top-1", "top-5", "micro mAP", "macro mAP")) + "</tr>"
    rows = []
    for tag in tags:
        m = read_json(os.path.join(eval_dir, f"{tag}_metrics.json"))
        m = m if isinstance(m, dict) else {}
        rows.append(f"<tr><td>{_e(tag)}</td><td>{_e(m.get('model', '?'))}</td><td>{_e(m.get('loss', '?'))}</td>"
                    f"<td>{_e(m.get('num_videos', '-'))}</td>" + "".join(f"<td>{_pct(m.get(k))}</td>" for k in METRICS) + "</tr>")
        ch = m.get("chance")
        if isinstance(ch, dict) and ch:
            rows.append(f"<tr class='chance'><td>{_e(tag)}</td><td>chance</td><td>(random scores)</td><td></td>"
                        + "".join(f"<td>{_pct(ch.get(k))}</td>" for k in METRICS) + "</tr>")
    return "<h2>Results (Table 1 rows, in %)</h2><table class='grid'>" + head + "".join(rows) + "</table>"


def section_per_class(eval_dir: str, tag: Optional[str], cfg: Dict[str, Any]) -> str:
    from .report_plots import per_class_ap_png

    path = os.path.join(eval_dir, f"{tag}_per_class_ap.csv") if tag else ""
    rows = read_csv(path) if tag else []
    if not rows:
        return "<h2>Per-class AP</h2>" + _missing(path or "eval/<split>_per_class_ap.csv")
    try:
        names = [r["class"] for r in rows]
        ap = [float(r["ap"]) if r["ap"] != "" else float("nan") for r in rows]
        pos = [int(r["positives"]) for r in rows]
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: malformed per-class AP row ({e})") from None
    tc = train_counts(cfg, names)
    counts = tc if tc is not None and len(tc) == len(names) else None
    note = "" if counts is not None else "<p class='note'>Training counts unknown (the run's dataset manifest is not found).</p>"
    return (f"<h2>Per-class AP ({_e(tag)})</h2>" + _img(per_class_ap_png(names, ap, pos, counts), "per-class AP") + note)


def section_confusions(eval_dir: str, tag: Optional[str], top: int = 10) -> str:
    path = os.path.join(eval_dir, f"{tag}_scores.npz") if tag else ""
    if not tag or not os.path.isfile(path):
        return "<h2>Worst-confused classes</h2>" + _missing(path or "eval/<split>_scores.npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            scores, targets = np.asarray(z["scores"]), np.asarray(z["targets"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: unreadable scores file ({type(e).__name__}: {e})") from None
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"{path}: scores {scores.shape} and targets {targets.shape} must be the same N x C shape")
    names = [r["class"] for r in read_csv(os.path.join(eval_dir, f"{tag}_per_class_ap.csv"))]
    if len(names) != scores.shape[1]:
        names = [str(i) for i in range(scores.shape[1])]
    pairs = worst_confusions(scores, targets, names, top)
    if not pairs:
        return "<h2>Worst-confused classes</h2><p>No top-1 error on this split.</p>"
    body = "".join(f"<tr><td>{_e(p['labelled'])}</td><td>{_e(p['predicted'])}</td><td>{p['count']}</td>"
                   f"<td>{100 * p['share']:.0f}% of {p['labelled_videos']}</td></tr>" for p in pairs)
    return (f"<h2>Worst-confused classes ({_e(tag)})</h2><p class='note'>Videos labelled with the first class "
            "(and not the second) whose top-1 prediction is the second. Labels may be incomplete: some of these "
            "predictions can be actions that are present but unlabelled.</p><table class='grid'><tr><th>labelled</th>"
            f"<th>top-1 predicted</th><th>videos</th><th>share</th></tr>{body}</table>")


def section_cam(cam_dir: Optional[str], out_dir: str, limit: int) -> str:
    if not cam_dir:
        return "<h2>mCAM gallery</h2>" + _missing("cam/cams.json (run mmit cam, or mmit demo)")
    data = read_json(os.path.join(cam_dir, "cams.json")) or {}
    cells = []
    records = data.get("records") if isinstance(data, dict) else None
    for rec in (records if isinstance(records, list) else [])[:limit]:
        rec = rec if isinstance(rec, dict) else {}
        pic, why = read_image(cam_dir, str(rec.get("png") or "")) if rec.get("png") else (None, "an entry without png")
        if pic is None:
            cells.append(f"<div class='cam'>{_missing(why)}</div>")
            continue
        pred = ", ".join(f"{_e(n)} {_e(_score(s))}" for n, s in _pairs(rec.get("pred")))
        cells.append(f"<div class='cam'>{_img(pic, str(rec.get('key', '')), 'wide')}<p><b>{_e(rec.get('key', ''))}</b>"
                     f"<br>labels: {_e(', '.join(map(str, rec.get('truth') or [])))}<br>predicted: {pred}</p></div>")
    link = os.path.relpath(os.path.join(cam_dir, "index.html"), out_dir)
    more = f"<p><a href='{_e(link)}'>the whole gallery</a></p>" if os.path.isfile(os.path.join(cam_dir, "index.html")) else ""
    return "<h2>mCAM gallery</h2>" + "".join(cells) + more


def _score(v: Any) -> str:
    try:
        return f"{float(v):.2f}"
    except (TypeError, ValueError):
        return str(v)


def _pairs(v: Any) -> List[tuple]:
    """``[(name, score), ...]`` from a cams.json ``pred`` value; anything else is skipped."""
    return [tuple(p) for p in v if isinstance(p, (list, tuple)) and len(p) == 2] if isinstance(v, list) else []


def _layer_rows(layers: Dict[str, Any]) -> str:
    """One table row per dissected layer: units, interpretable units (with / without the
    action concepts), distinct concepts, units per category, the most frequent concepts."""
    rows = []
    for name, d in layers.items():
        if not isinstance(d, dict):
            continue
        cats = ", ".join(f"{_e(k)} {_e(v)}" for k, v in _items(d.get("per_category")))
        top = sorted(_items(d.get("units_per_concept")), key=lambda kv: -_num(kv[1]))[:4]
        rows.append(f"<tr><td>{_e(name)}</td><td>{_e(d.get('units', '-'))}</td><td>{_e(d.get('interpretable', '-'))}</td>"
                    f"<td>{_e(d.get('interpretable_without_actions', '-'))}</td><td>{_e(d.get('unique_concepts', '-'))}</td>"
                    f"<td>{cats}</td><td>{', '.join(f'{_e(k)} ({_e(v)})' for k, v in top)}</td></tr>")
    return ("<table class='grid'><tr><th>layer</th><th>units</th><th>interpretable</th><th>without action concepts</th>"
            "<th>distinct concepts</th><th>units per category</th><th>most frequent concepts (units)</th></tr>"
            + "".join(rows) + "</table>")


def section_dissect(dissect_dir: Optional[str], out_dir: str) -> str:
    if not dissect_dir:
        return "<h2>Network dissection</h2>" + _missing("dissect/summary.json (run mmit dissect, or mmit demo)")
    s = read_json(os.path.join(dissect_dir, "summary.json")) or {}
    flat = {k: v for k, v in s.items() if isinstance(v, (str, int, float, bool)) and k not in ("checkpoint", "concepts_dir")}
    out = "<h2>Network dissection</h2>"
    if isinstance(s.get("layers"), dict):
        out += _layer_rows(s["layers"])
    out += "<table class='kv'>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in flat.items()) + "</table>"
    figs = sorted(glob.glob(os.path.join(dissect_dir, "fig7*.png")))[:1] + sorted(glob.glob(os.path.join(dissect_dir, "fig9*.png")))[-1:]
    for fig in figs:
        pic, why = read_image(dissect_dir, os.path.basename(fig))
        out += _img(pic, os.path.basename(fig), "fig") if pic is not None else _missing(why)
    rep = os.path.join(dissect_dir, "report.html")
    if os.path.isfile(rep):
        out += f"<p><a href='{_e(os.path.relpath(rep, out_dir))}'>the dissection report</a></p>"
    return out


def _items(v: Any) -> List[tuple]:
    return list(v.items()) if isinstance(v, dict) else []


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


CSS = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:14px}td,th{padding:3px 9px;text-align:left}
table.grid td,table.grid th{border:1px solid #ddd}tr.chance{color:#888}
table.kv th{color:#555;font-weight:normal}.missing{color:#b03a2e}.note{color:#666;font-size:13px}
.cam{display:block;margin:10px 0;font-size:13px}img{max-width:100%}img.fig{display:block;margin:8px 0}
pre{background:#f6f6f6;padding:8px;font-size:12px}"""


def build_report(run_dir: str, out: Optional[str] = None, *, split: Optional[str] = None, gallery: int = 4) -> str:
    """Write the report page of ``run_dir``; returns its path (default ``run_dir/report.html``)."""
    f = find_run(run_dir)
    out = out or os.path.join(run_dir, "report.html")
    out_dir = os.path.dirname(os.path.abspath(out))
    cfg = read_config(f.train)
    summary = read_json(os.path.join(f.train, "summary.json"))
    tags = eval_tags(f.eval)
    if split and split not in tags:
        raise ValueError(f"{f.eval}: no evaluation '{split}' (found: {', '.join(tags) or 'none'})")
    tag = split or next((t for t in tags if os.path.isfile(os.path.join(f.eval, f"{t}_per_class_ap.csv"))), None)
    first = read_json(os.path.join(f.eval, f"{tag}_metrics.json")) if tag else None
    parts = [f"<h1>mmit report</h1><p class='note'>{_e(os.path.abspath(run_dir))}</p>",
             section_config(cfg, summary, f.train),
             section_curves(f.train, (first or {}).get("chance")),
             section_table(f.eval),
             section_per_class(f.eval, tag, cfg),
             section_confusions(f.eval, tag),
             section_cam(f.cam, out_dir, gallery),
             section_dissect(f.dissect, out_dir)]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>mmit report: {_e(os.path.basename(os.path.abspath(run_dir)))}"
            f"</title><style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    atomic_write_text(out, page)
    return out
