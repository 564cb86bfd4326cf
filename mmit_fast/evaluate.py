"""Evaluation of a trained checkpoint: ``mmit eval`` (one process, or several under torchrun).

The checkpoint carries its model spec, vocabulary and clip settings, so ``evaluate_checkpoint``
rebuilds the model and runs the loader in eval mode on a split: the centre clip, or with
``views=V`` the loader's V temporal x spatial crops per video, whose scores (logits) are
averaged: ``s(video) = 1/V sum_v f(clip_v)``. Scores are gathered across ranks and the padding
repeats of the distributed loader dropped (same sample key), then
:func:`mmit_fast.metrics.evaluate` gives top-1, top-5, micro mAP (per-video AP averaged over
videos), macro mAP (per-class AP averaged over classes with a positive), pooled AP and the
per-class AP.

Table 2 of the paper evaluates on a class subset (``classes=`` a file with one class name
per line, or integer ids) and with single-label ground truth (``single_label=True``); both
are passed to ``metrics.evaluate``.

Files written to ``out`` (tag = split, plus ``-subset-<name>`` / ``-single``):
``<tag>_metrics.json``, ``<tag>_per_class_ap.csv`` (class id, name, positives, AP),
``<tag>_table.md`` (a Table 1-style markdown row), ``<tag>_scores.npz`` (keys, scores, targets,
and ``classes``: the class names in score-column order). Rows are sorted by sample key, so the
files of an N-process evaluation equal the single-process ones (the chance level included).
"""
from __future__ import annotations

import csv
import io
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import storage
from ._io import atomic_path, atomic_write_json, atomic_write_text

MODEL_LABELS = {"i3d": "I3D", "tsm": "TSM", "soundnet": "SoundNet", "fusion": "Fusion"}
LOSS_LABELS = {"bce": "BCE", "warp": "WARP", "lsep": "LSEP", "wlsep": "wLSEP"}
TABLE_HEADER = "| model | loss | top-1 | top-5 | micro mAP | macro mAP |\n|---|---|---|---|---|---|"


def read_class_subset(path: str, classes: Sequence[str]) -> List[int]:
    """Class ids from a file of class names (or integer ids), one per line; ``#`` comments
    and blank lines are ignored. Unknown names raise ``ValueError`` naming file and line."""
    index = {c: i for i, c in enumerate(classes)}
    ids: List[int] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            if name in index:
                ids.append(index[name])
            elif name.lstrip("-").isdigit() and 0 <= int(name) < len(classes):
                ids.append(int(name))
            else:
                raise ValueError(f"{path}:{n}: {name!r} is not a class of this model's vocabulary ({len(classes)} classes)")
    if not ids:
        raise ValueError(f"{path}: no classes listed")
    return sorted(set(ids))


def model_label(ck: Dict[str, Any]) -> str:
    spec = ck.get("model_spec", {})
    name = spec.get("name", "?")
    kw = spec.get("kwargs", {})
    label = MODEL_LABELS.get(name, name)
    if name in ("i3d", "tsm", "fusion") and kw.get("depth"):
        label += f"-R{kw['depth']}"
        if kw.get("width") and kw["width"] != 64:
            label += f"w{kw['width']}"
    return label


def loss_label(ck: Dict[str, Any]) -> str:
    """``wLSEP``, ``LSEP``...; a loss trained with class weights other than the paper's (none
    for BCE/WARP/LSEP, the authors' min_ratio for wLSEP) is marked, e.g. ``LSEP (min_ratio
    weights)``, ``wLSEP (tempered weights)``; the scheme is the one the run recorded."""
    from .config import checkpoint_weight_scheme

    cfg = ck.get("config") or {}
    name = cfg.get("loss")
    if not name:
        return "-"
    label = LOSS_LABELS.get(name, name)
    scheme = checkpoint_weight_scheme(ck)
    if name == "wlsep" and scheme == "none":
        label += " (no weights)"
    elif scheme != "none" and (name != "wlsep" or scheme != "min_ratio"):
        label += f" ({scheme} weights)"
    return label


def table_row(model: str, loss: str, m: Dict[str, Any]) -> str:
    """``| model | loss | top-1 | top-5 | micro mAP | macro mAP |`` in percent, one decimal."""
    from .metrics import format_table_row

    return format_table_row(model, loss, m)


def chance_metrics(targets: np.ndarray, trials: int = 5, seed: int = 0, **eval_kw) -> Dict[str, float]:
    """Metrics of random scores (i.i.d. uniform, averaged over ``trials``) on ``targets``:
    the chance level the trained model must beat."""
    from .metrics import evaluate

    rng = np.random.default_rng(seed)
    acc: Dict[str, List[float]] = {}
    for _ in range(trials):
        m = evaluate(rng.random(targets.shape).astype(np.float32), targets, **eval_kw)
        for k in ("top1", "top5", "micro_map", "macro_map", "pooled_ap"):
            if k in m:
                acc.setdefault(k, []).append(float(m[k]))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def write_outputs(out: str, tag: str, m: Dict[str, Any], classes: Sequence[str], targets: np.ndarray,
                  keys: Sequence[str], scores: np.ndarray, row: str, extra: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    os.makedirs(out, exist_ok=True)
    paths = {
        "metrics": os.path.join(out, f"{tag}_metrics.json"),
        "per_class_ap": os.path.join(out, f"{tag}_per_class_ap.csv"),
        "table": os.path.join(out, f"{tag}_table.md"),
        "scores": os.path.join(out, f"{tag}_scores.npz"),
    }
    scalars = {k: float(v) for k, v in m.items() if isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, bool)}
    atomic_write_json(paths["metrics"], dict(scalars, **(extra or {})))
    pc = np.asarray(m.get("per_class_ap", []), dtype=np.float64).reshape(-1)
    cols = np.asarray(m.get("class_indices", np.arange(len(pc))), dtype=np.int64).reshape(-1)
    npos = np.asarray(m.get("num_positives", np.zeros(len(cols))), dtype=np.int64).reshape(-1)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["class_id", "class", "positives", "ap"])
    for j, i in enumerate(cols):  # the evaluated classes (all, or the subset); AP empty without a positive
        ap = pc[j] if j < len(pc) else float("nan")
        w.writerow([int(i), classes[int(i)], int(npos[j]) if j < len(npos) else 0, f"{ap:.6f}" if np.isfinite(ap) else ""])
    atomic_write_text(paths["per_class_ap"], buf.getvalue())
    atomic_write_text(paths["table"], TABLE_HEADER + "\n" + row + "\n")
    with atomic_path(paths["scores"], suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, keys=np.asarray(list(keys)), scores=scores, targets=targets,
                                classes=np.asarray(list(classes)))
    return paths


def _output_tag(split: str, classes_file: Optional[str], single_label: bool, views: int) -> str:
    tag = split
    if classes_file:
        tag += "-subset-" + os.path.splitext(os.path.basename(classes_file))[0]
    if single_label:
        tag += "-single"
    if views > 1:
        tag += f"-{views}views"
    return tag


def default_out(checkpoint: str) -> str:
    """Where ``mmit eval`` writes without ``--out``: ``<run>/eval`` for a training run's
    checkpoint (``<run>/checkpoints/best.pt``); for any other file, a folder beside it named
    after it (``models/mmit_r3d50.pt`` -> ``models/mmit_r3d50-eval``), so that an imported model
    never writes into the folder above its own, nor shares its results with another one."""
    path = os.path.abspath(checkpoint)
    folder = os.path.dirname(path)
    if os.path.basename(folder) == "checkpoints":
        return os.path.join(os.path.dirname(folder), "eval")
    return os.path.splitext(path)[0] + "-eval"


def evaluate_checkpoint(checkpoint: str, data: Optional[str] = None, split: str = "val", *, views: int = 1,
                        classes_file: Optional[str] = None, single_label: bool = False, out: Optional[str] = None,
                        batch_size: Optional[int] = None, num_workers: Optional[int] = None,
                        backend: Optional[str] = None, device: str = "auto", amp: str = "auto",
                        progress: bool = True, chance: bool = True) -> Optional[Dict[str, Any]]:
    """Evaluate ``checkpoint`` (any file :func:`~mmit_fast.models.checkpoint.read_checkpoint`
    accepts) on ``split`` of ``data`` (default: the dataset it was trained on). Returns the
    metrics (plus ``table_row``, ``files``, ``chance``) on rank 0, None elsewhere."""
    from .inference import evaluate_model
    from .models.checkpoint import from_checkpoint, read_checkpoint
    from .shards import load_manifest
    from .recipes import checkpoint_config, make_loader_for
    from .distributed import dist_env, init_distributed, resolve_device, shutdown

    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    ck = read_checkpoint(checkpoint)
    cfg = checkpoint_config(ck)
    data = data or cfg.data
    if not data:
        raise ValueError(f"{checkpoint} records no training dataset: give the packed dataset with --data DIR")
    if backend:
        cfg.backend = backend
    if num_workers is not None:
        cfg.num_workers = num_workers
    manifest = load_manifest(data)
    classes = list(ck.get("classes") or manifest.classes)
    if list(manifest.classes) != classes:
        raise ValueError(f"dataset {data} has a different vocabulary ({manifest.num_classes} classes) from the "
                         f"checkpoint {checkpoint} ({len(classes)} classes): fine-tune it first (mmit finetune)")
    subset = read_class_subset(classes_file, classes) if classes_file else None
    eval_kw: Dict[str, Any] = {}
    if subset is not None:
        eval_kw["class_subset"] = subset
    if single_label:
        eval_kw["single_label"] = True

    dev = resolve_device(device, dist_env()[2])
    rank, world = init_distributed(dev)
    try:
        model = from_checkpoint(checkpoint).to(dev)
        modality = getattr(model, "modality", "video")
        with_audio = cfg.with_audio if cfg.with_audio is not None else modality != "video"
        loader = make_loader_for(cfg, split, train=False, rank=rank, world=world, device=dev, with_audio=with_audio,
                                 views=views, batch_size=batch_size or cfg.batch_size, data=data, modality=modality)
        bar = progress and rank == 0 and sys.stdout.isatty()  # no carriage-return bars in log files
        m = evaluate_model(model, loader, dev, amp=amp, views=views, progress=bar,
                           desc=f"eval {split}", **eval_kw)
        if m is None:
            return None
        keys, scores, targets = m.pop("keys"), m.pop("scores"), m.pop("targets")
        tag = _output_tag(split, classes_file, single_label, views)
        row = table_row(model_label(ck), loss_label(ck), m)
        extra: Dict[str, Any] = {"checkpoint": os.path.abspath(checkpoint), "data": storage.absolute(data), "split": split,
                                 "views": views, "single_label": single_label, "class_subset": subset,
                                 "model": model_label(ck), "loss": loss_label(ck), "step": ck.get("step"),
                                 "world_size": world, "skipped_samples": getattr(loader, "skipped", 0)}
        if chance and len(targets):
            m["chance"] = chance_metrics(targets, **eval_kw)
            extra["chance"] = m["chance"]
        out = out or default_out(checkpoint)
        m["files"] = write_outputs(out, tag, m, classes, targets, keys, scores, row, extra)
        m["table_row"], m["tag"] = row, tag
        return m
    finally:
        shutdown()


def format_report(m: Dict[str, Any], split: str) -> str:
    lines = [f"{split}: {int(m.get('num_videos', 0))} videos", TABLE_HEADER, m["table_row"]]
    if m.get("chance"):
        c = m["chance"]
        lines.append("| chance (random scores) | - | " + " | ".join(
            f"{100 * c.get(k, float('nan')):.1f}" for k in ("top1", "top5", "micro_map", "macro_map")) + " |")
    lines.append(f"files: {', '.join(m['files'].values())}")
    return "\n".join(lines)
