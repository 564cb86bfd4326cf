"""``mmit cam`` and ``mmit predict``: mCAM pictures and top-k labels for a checkpoint and a source.

:func:`run_cam` writes, for every clip of the source, ``<key>.png`` (a strip of per-frame
mCAM overlays, or one time-averaged overlay), ``<key>.gif`` (the overlays animated; per-frame
mode), and one ``index.html`` gallery plus ``cams.json`` (keys, predicted labels and scores,
true labels, skipped samples). :func:`predict` returns the top-k labels with scores per clip
and (with ``out_dir``) the same pictures. Fusion models are run on video alone (audio
features zero): their maps come from the video half of the classifier.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from .._io import atomic_write_json, claim_output_dir
from . import render
from .cam import mcam
from .source import ClipItem, iter_clips, load_model, to_input

__all__ = ["run_cam", "predict", "batched"]


def batched(items: Iterator[ClipItem], n: int) -> Iterator[List[ClipItem]]:
    buf: List[ClipItem] = []
    for it in items:
        buf.append(it)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def _safe(key: str) -> str:
    """A sample key or video name as a file name (letters, digits, - and _)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in key)


def _pictures(out_dir: str, item: ClipItem, heat: np.ndarray, owner: np.ndarray, labels: List[str],
              per_frame: bool) -> Dict[str, Optional[str]]:
    safe = _safe(item.key)
    png = os.path.join(out_dir, safe + ".png")
    if per_frame:
        render.save_png(png, render.clip_strip(item.frames, heat, owner, labels))
        scale = max(1, 256 // item.frames.shape[1])
        frames = [render.overlay_frame(item.frames[t], heat[t], owner[t], labels, scale=scale)
                  for t in range(item.frames.shape[0])]
        gif = render.save_gif(os.path.join(out_dir, safe + ".gif"), frames)
    else:
        mid = item.frames[item.frames.shape[0] // 2]
        render.save_png(png, render.overlay_frame(mid, heat, owner, labels, scale=max(1, 256 // mid.shape[0])))
        gif = None
    return {"png": os.path.basename(png), "gif": os.path.basename(gif) if gif else None}


def _cam_records(checkpoint, source, out_dir, *, top_k, threshold, limit, device, per_frame, batch_size,
                 pictures=True, report_k=0) -> Dict[str, Any]:
    """One pass over the clips of ``source``: mCAM of each clip's ``top_k`` classes (pictures
    in ``out_dir`` when ``pictures``), and with ``report_k`` its top ``report_k`` labels by
    score (``"top"``). Returns ``{"records", "skipped", "notes"}``."""
    model, spec, mean, std = load_model(checkpoint, device)
    names = list(model.class_names)
    dev = next(model.parameters()).device
    counter: Dict[str, Any] = {}
    records = []
    for batch in batched(iter_clips(source, spec, names, limit=limit, counter=counter), batch_size):
        x = to_input(np.stack([it.frames for it in batch]), mean, std, dev)
        res = mcam(model, x, top_k=top_k, threshold=threshold, per_frame=per_frame)
        heat, owner = res.heat.cpu().numpy(), res.owner.cpu().numpy()
        top = torch.sigmoid(res.logits.float()).topk(min(report_k, len(names)), dim=1) if report_k else None
        for b, item in enumerate(batch):
            slots = [j for j in range(res.class_ids.shape[1]) if bool(res.valid[b, j])]
            labels = [names[int(res.class_ids[b, j])] if j in slots else "" for j in range(res.class_ids.shape[1])]
            own = np.where(np.isin(owner[b], slots), owner[b], -1)
            rec = {"key": item.key, "truth": item.labels,
                   "pred": [(labels[j], float(res.scores[b, j])) for j in slots]}
            if top is not None:
                rec["top"] = [(names[int(i)], float(v)) for v, i in zip(top.values[b], top.indices[b])]
            if pictures:
                rec.update(_pictures(out_dir, item, heat[b], own, labels, per_frame))
            records.append(rec)
    if not records:
        raise ValueError(f"{source}: no clip could be read" + (
            f" ({len(counter['skipped'])} skipped: {counter['skipped'][0]})" if counter.get("skipped") else ""))
    return {"records": records, "skipped": counter.get("skipped", []), "notes": counter.get("notes", [])}


def _gallery(checkpoint: str, source: str, out_dir: str, res: Dict[str, Any], sel: str, per_frame: bool) -> str:
    """``cams.json`` and ``index.html`` of the records ``res``; returns the index path."""
    note = (f"checkpoint {checkpoint}; source {source}; {sel}"
            + ("; per-frame maps (strip of frames; the GIF animates every frame)" if per_frame else "; time-averaged maps")
            + (f"; {len(res['skipped'])} samples skipped (see cams.json)" if res["skipped"] else "")
            + "".join(f"; {n}" for n in res["notes"]))
    atomic_write_json(os.path.join(out_dir, "cams.json"), {"checkpoint": os.path.abspath(checkpoint),
                                                          "source": os.path.abspath(source), **res})
    return render.write_gallery(os.path.join(out_dir, "index.html"), res["records"], title="mCAM gallery", note=note)


def run_cam(checkpoint: str, source: str, out_dir: str, *, top_k: int = 3, threshold: Optional[float] = None,
            limit: Optional[int] = None, device: str = "auto", per_frame: bool = True, batch_size: int = 8,
            notes: Optional[List[str]] = None) -> str:
    """mCAM pictures of every clip of ``source`` (a video file, a ``.tar`` shard, a dataset folder
    or ``FOLDER:SPLIT``) in ``out_dir``; returns the path of ``out_dir/index.html``. ``out_dir``
    must be new, empty or an earlier gallery's (:func:`~mmit_fast._io.claim_output_dir`): a
    folder of the user's own is refused before anything is written. ``notes`` (a list) gets
    the lines worth telling the user (e.g. a vocabulary matched by name)."""
    claim_output_dir(out_dir, "cam")
    res = _cam_records(checkpoint, source, out_dir, top_k=top_k, threshold=threshold, limit=limit, device=device,
                       per_frame=per_frame, batch_size=batch_size)
    if notes is not None:
        notes.extend(res["notes"])
    sel = f"classes with score >= {threshold} (at most {top_k})" if threshold is not None else f"top-{top_k} classes"
    return _gallery(checkpoint, source, out_dir, res, sel, per_frame)


def predict(checkpoint: str, source: str, *, top_k: int = 5, out_dir: Optional[str] = None,
            limit: Optional[int] = None, device: str = "auto", cam_top_k: int = 3,
            notes: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Top-``top_k`` labels with scores (sigmoid of the logits) for each clip of ``source``; with
    ``out_dir`` also each clip's mCAM picture (of its top ``cam_top_k`` classes) and ``index.html``,
    from the same single pass over the clips (each decoded once). Returns ``[{"key", "top":
    [(label, score), ...], "truth", "png"?, "index"?}]``; ``notes`` as in :func:`run_cam`."""
    if out_dir:
        claim_output_dir(out_dir, "cam")
    with torch.no_grad():
        res = _cam_records(checkpoint, source, out_dir or "", top_k=cam_top_k, threshold=None, limit=limit,
                           device=device, per_frame=True, batch_size=4, pictures=bool(out_dir), report_k=top_k)
    if notes is not None:
        notes.extend(res["notes"])
    out = [{"key": r["key"], "top": r["top"], "truth": r["truth"]} for r in res["records"]]
    if out_dir:
        index = _gallery(checkpoint, source, out_dir, res, f"top-{cam_top_k} classes", True)
        for r in out:
            r["png"] = os.path.join(out_dir, _safe(r["key"]) + ".png")
            r["index"] = index
    return out
