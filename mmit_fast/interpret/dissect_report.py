"""The dissection's outputs: per-unit CSVs, the Table 5 summary, Figs. 7, 9, 10, unit-to-class
links (section 7.2.2) and one HTML report, from the raw tallies of :func:`.dissect_run.dissect_model`.

Unit-to-class (for the layer that feeds the classifier): set the pooled unit ``k`` to 1, all
other units and the bias to 0; the logits are then ``W[:, k]``, and the unit's top classes are
the largest entries of that column.
"""
from __future__ import annotations

import csv
import html
import io
import os
from collections import Counter
from typing import Any, Dict, List

import numpy as np
import torch

from .._io import atomic_write_json, atomic_write_text
from . import render
from .cam import video_weight
from .dissect import assign_labels

__all__ = ["summarise", "write_report", "unit_classes"]

_CAT_COLORS = render.CATEGORY_COLORS


def unit_classes(model, top: int = 3) -> List[List[int]]:
    """Top classes of every pooled unit: ``argsort(-W[:, k])[:top]`` (bias 0, other units 0)."""
    W = video_weight(model).detach().float().cpu()
    return W.t().topk(min(top, W.shape[0]), dim=1).indices.tolist()


def _layer_summary(model, broden, raw, name: str, iou_threshold: float, union: str, last: bool) -> Dict[str, Any]:
    L = raw["layers"][name]
    iou = L["iou"].iou(union).cpu()
    concepts = raw["concepts"]
    cat_of = [broden.concepts[c].category for c in concepts]
    keep = torch.tensor([c != "action" for c in cat_of])
    full = assign_labels(iou, None, iou_threshold)
    noact = assign_labels(iou, keep, iou_threshold)
    classes = unit_classes(model) if last and video_weight(model).shape[1] == iou.shape[0] else None
    top3 = iou.topk(min(3, iou.shape[1]), dim=1)
    units = []
    for k in range(iou.shape[0]):
        c, c2 = int(full["concept"][k]), int(noact["concept"][k])
        units.append({
            "unit": k, "concept": broden.concepts[concepts[c]].name, "category": cat_of[c],
            "iou": round(float(full["iou"][k]), 5), "interpretable": bool(full["interpretable"][k]),
            "concept_without_actions": broden.concepts[concepts[c2]].name, "category_without_actions": cat_of[c2],
            "iou_without_actions": round(float(noact["iou"][k]), 5),
            "interpretable_without_actions": bool(noact["interpretable"][k]),
            "threshold": float(L["thresholds"][k]),
            "top_concepts": ";".join(f"{broden.concepts[concepts[int(j)]].name}:{float(v):.3f}"
                                     for v, j in zip(top3.values[k], top3.indices[k])),
            "top_classes": ";".join(model.class_names[i] for i in classes[k]) if classes else "",
        })
    interp = [u for u in units if u["interpretable"]]
    return {"units": len(units), "interpretable": len(interp),
            "interpretable_without_actions": sum(u["interpretable_without_actions"] for u in units),
            "unique_concepts": len({u["concept"] for u in interp}),
            "per_category": dict(Counter(u["category"] for u in interp)),
            "units_per_concept": dict(Counter(u["concept"] for u in interp).most_common()),
            "unit_rows": units}


def summarise(model, broden, raw, *, iou_threshold: float, union: str, quantile: float) -> Dict[str, Any]:
    names = list(raw["layers"])
    from .dissect_inputs import stage_layers

    last = stage_layers(model)[-1] if stage_layers(model) else None
    layers = {n: _layer_summary(model, broden, raw, n, iou_threshold, union, n == last) for n in names}
    tally = raw["layers"][names[-1]]["iou"]
    seen = [c for j, c in enumerate(raw["concepts"]) if float(tally.label[j]) > 0]
    per_cat = Counter(broden.concepts[c].category for c in seen)
    return {"layers": layers, "images": raw["images"], "skipped": raw["skipped"], "quantile": quantile,
            "iou_threshold": iou_threshold, "union": union, "categories": raw["categories"],
            "concepts_per_category": dict(per_cat), "concepts": len(seen), "mask_cache": raw.get("mask_cache")}


def _table5(summary: Dict[str, Any]) -> str:
    cats = [c for c in summary["categories"]]
    cpc = summary["concepts_per_category"]
    head = "| concept set | layer | " + " | ".join(cats) + " | interpretable units |\n|" + "---|" * (len(cats) + 3)
    rows = [head]
    for name, L in summary["layers"].items():
        na = [str(cpc.get(c, 0)) if c != "action" else "-" for c in cats]
        rows.append(f"| without actions | {name} | " + " | ".join(na)
                    + f" | {L['interpretable_without_actions']} / {L['units']} |")
        rows.append(f"| with actions | {name} | " + " | ".join(str(cpc.get(c, 0)) for c in cats)
                    + f" | {L['interpretable']} / {L['units']} |")
    return "\n".join(rows) + "\n"


def _units_csv(path: str, rows: List[Dict[str, Any]]) -> None:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=list(rows[0]))
    wr.writeheader()
    wr.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _fig10(path, model, spec, mean, std, broden, raw, name, units, n_units: int = 8):
    """Top images of the best interpretable units, each with the unit's thresholded mask."""
    from .dissect_inputs import layer_activations, prep_image, static_clip
    from .dissect import binarise_upsampled
    from .layers import resolve_layers
    from PIL import Image, ImageDraw

    best = sorted([u for u in units if u["interpretable"]], key=lambda u: -u["iou"])[:n_units]
    if not best:
        return None
    L = raw["layers"][name]
    mods = resolve_layers(model, [name])
    dev = next(model.parameters()).device
    rows = []
    for u in best:
        ids = [i for i in L["top_images"][u["unit"]]]
        imgs = [broden.image(i) for i in ids]
        x = static_clip(np.stack([prep_image(im, spec.crop) for im in imgs]), spec, mean, std, dev, True)
        a = layer_activations(model, mods, x)[name][:, u["unit"]:u["unit"] + 1]
        tiles = []
        for b, i in enumerate(ids):
            r = broden.rows[i]
            m = binarise_upsampled(a[b:b + 1], (r.sh, r.sw), L["thresholds"][u["unit"]:u["unit"] + 1])[0, 0]
            img = np.asarray(Image.fromarray(imgs[b]).resize((r.sw, r.sh), Image.BILINEAR))
            tiles.append(np.asarray(Image.fromarray(render.mask_overlay(img, m.cpu().numpy())).resize((96, 96))))
        strip = render.tile_grid(tiles, cols=len(tiles))
        cap = Image.new("RGB", (strip.shape[1], 14), (255, 255, 255))
        ImageDraw.Draw(cap).text((2, 1), f"unit {u['unit']}: {u['concept']} ({u['category']}) IoU {u['iou']:.2f}",
                                 fill=(0, 0, 0))
        rows.append(np.concatenate([np.asarray(cap), strip], axis=0))
    return render.save_png(path, render.tile_grid(rows, cols=1, gap=6))


def write_report(out_dir, model, spec, mean, std, broden, raw, summary) -> Dict[str, Any]:
    os.makedirs(out_dir, exist_ok=True)
    files: Dict[str, Any] = {}
    names = list(summary["layers"])
    for name in names:
        L = summary["layers"][name]
        tag = name.replace(".", "_")
        files[f"units_{tag}"] = p = os.path.join(out_dir, f"units_{tag}.csv")
        _units_csv(p, L["unit_rows"])
        upc = L["units_per_concept"]
        if upc:
            cat = {u["concept"]: u["category"] for u in L["unit_rows"]}
            files[f"fig9_{tag}"] = render.bar_chart(
                os.path.join(out_dir, f"fig9_units_per_concept_{tag}.png"), list(upc), list(upc.values()),
                title=f"{name}: interpretable units per concept (IoU > {summary['iou_threshold']})",
                ylabel="units", colors=[_CAT_COLORS.get(cat[c], "#777") for c in upc],
                legend={k: v for k, v in _CAT_COLORS.items() if k in set(cat[c] for c in upc)})
    cats = [c for c in summary["categories"] if summary["concepts_per_category"].get(c)]
    files["fig7"] = render.grouped_bar_chart(
        os.path.join(out_dir, "fig7_blockwise.png"), names,
        {c: [summary["layers"][n]["per_category"].get(c, 0) for n in names] for c in cats},
        title="interpretable units per layer and category", ylabel="units")
    last = names[-1]
    f10 = _fig10(os.path.join(out_dir, f"fig10_top_images_{last.replace('.', '_')}.png"), model, spec, mean, std,
                 broden, raw, last, summary["layers"][last]["unit_rows"])
    if f10:
        files["fig10"] = f10
    files["table5"] = os.path.join(out_dir, "table5.md")
    atomic_write_text(files["table5"], _table5(summary))
    summary["files"] = files
    compact = {**summary, "layers": {n: {k: v for k, v in L.items() if k != "unit_rows"}
                                     for n, L in summary["layers"].items()}}
    files["summary"] = os.path.join(out_dir, "summary.json")
    files["report"] = os.path.join(out_dir, "report.html")
    atomic_write_json(files["summary"], compact)
    atomic_write_text(files["report"], _html(compact, out_dir))
    return compact


def _html(s: Dict[str, Any], out_dir: str) -> str:
    rel = lambda p: html.escape(os.path.relpath(p, out_dir))  # noqa: E731
    f = s["files"]
    parts = [f"<p>{s['images']} images ({len(s['skipped'])} skipped), {s['concepts']} concepts; threshold = top "
             f"{s['quantile']} quantile per unit; interpretable when IoU &gt; {s['iou_threshold']}; "
             f"union over {html.escape(s['union'])}-annotated images.</p>",
             "<h2>Summary (Table 5)</h2>" + _md_table_html(open(f["table5"], encoding="utf-8").read()),
             f"<h2>Block-wise interpretability (Fig. 7)</h2><img src='{rel(f['fig7'])}'>"]
    for n, L in s["layers"].items():
        tag = n.replace(".", "_")
        parts.append(f"<h2>{html.escape(n)}</h2><p>{L['interpretable']} of {L['units']} units interpretable "
                     f"({L['interpretable_without_actions']} without action concepts), {L['unique_concepts']} "
                     f"unique concepts; <a href='{rel(f['units_' + tag])}'>per-unit CSV</a>; thresholds exact "
                     "(NetDissect's np.percentile).</p>")
        if f.get("fig9_" + tag):
            parts.append(f"<img src='{rel(f['fig9_' + tag])}'>")
    if f.get("fig10"):
        parts.append(f"<h2>Top images per unit (Fig. 10)</h2><img src='{rel(f['fig10'])}'>")
    return render.html_page("Action Network Dissection", "\n".join(parts))


def _md_table_html(md: str) -> str:
    lines = [ln for ln in md.strip().splitlines() if not set(ln) <= set("|-")]
    rows = ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in ln.strip("|").split("|")) + "</tr>"
            for ln in lines]
    return "<table>" + "".join(rows) + "</table>"
