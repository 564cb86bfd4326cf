"""The loss study's arithmetic and its report: aggregation over seeds, paired per-seed
differences, verdicts, the class-weight default the evidence picks, the markdown and the plot.
Arrays and dicts in, dicts and text out (``repro_losses.py`` runs the grid).

A record is one finished run on the held-out set: ``{"task": "video/mmit", "loss": arm,
"seed": s, "lr": lr, "metrics": {...}}``; ``task`` names a task and its label shape.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import _repro as R

PRIMARY = "micro_map"   # the paper's "mAP over all videos"; also `mmit train`'s best_metric
NAMES = {"top1": "top-1", "top5": "top-5", "micro_map": "micro mAP", "macro_map": "macro mAP"}


def _by_seed(records, task: str, arm: str) -> Dict[int, Dict[str, float]]:
    return {r["seed"]: r["metrics"] for r in records if r["task"] == task and r["loss"] == arm}


def paired(records, task: str, a: str, b: str) -> Dict[str, Dict[str, float]]:
    """Per metric, the summary of ``a - b`` over the seeds both arms ran (same seed = same
    initialisation and batch order); ``{}`` when they share no seed."""
    ma, mb = _by_seed(records, task, a), _by_seed(records, task, b)
    common = sorted(set(ma) & set(mb))
    if not common:
        return {}
    return {k: R.summarise([ma[s][k] - mb[s][k] for s in common]) for k in R.METRICS}


def aggregate(records, arms: Sequence[str]) -> Dict[str, Any]:
    """Per task (in the records' order) and arm: mean / sample std / min / max of each metric
    over seeds, the seeds and the learning rate(s) the runs used."""
    out: Dict[str, Any] = {}
    for task in dict.fromkeys(r["task"] for r in records):
        rows = {}
        for arm in arms:
            rs = sorted((r for r in records if r["task"] == task and r["loss"] == arm), key=lambda r: r["seed"])
            if rs:
                rows[arm] = {k: R.summarise([r["metrics"][k] for r in rs]) for k in R.METRICS}
                rows[arm]["seeds"] = [r["seed"] for r in rs]
                rows[arm]["lr"] = sorted({r.get("lr") for r in rs if r.get("lr") is not None})
        out[task] = {"losses": rows}
    return out


def verdicts(agg: Dict[str, Any], records) -> Dict[str, Dict[str, str]]:
    """Per task and metric: the arm with the best mean, and whether it beats the runner-up in
    every seed ('wins'), only on average ('best mean, within noise'), or ties it (|mean
    difference| < 0.05 pt)."""
    out: Dict[str, Dict[str, str]] = {}
    for task, a in agg.items():
        rows, out[task] = a["losses"], {}
        if len(rows) < 2:
            continue
        for k in R.METRICS:
            ranked = sorted(rows, key=lambda arm: -rows[arm][k]["mean"])
            best, runner = ranked[0], ranked[1]
            d = paired(records, task, best, runner)[k]
            span = f"per-seed {100 * d['min']:+.1f}..{100 * d['max']:+.1f}"
            if abs(d["mean"]) < 5e-4:
                out[task][k] = f"{R.arm_label(best)} ties with {R.arm_label(runner)} ({span})"
            else:
                tag = "wins" if d["min"] > 0 else "best mean, within noise"
                out[task][k] = f"{R.arm_label(best)} {tag} (+{100 * d['mean']:.1f} pt over {R.arm_label(runner)}, {span})"
    return out


def scheme_effects(records, tasks, schemes: Sequence[str], reference: str) -> Dict[str, Dict[str, Any]]:
    """``{task: {scheme arm: paired(scheme - reference)}}`` for the wLSEP weight schemes."""
    return {t: {s: paired(records, t, s, reference) for s in schemes if s != reference} for t in tasks}


def decide_default(agg, records, schemes: Sequence[str], tasks: Sequence[str], reference: str,
                   metric: str = PRIMARY) -> Dict[str, Any]:
    """The class-weight scheme ``class_weights: auto`` should give wLSEP, by the rule fixed
    before the study: on the M-MiT-shaped ``tasks``, the scheme with the highest ``metric``
    averaged over the tasks (means over seeds), provided it is ahead of ``reference`` (the
    authors' min_ratio) on every one of them; otherwise ``reference`` stays."""
    present = [s for s in schemes if all(s in agg.get(t, {}).get("losses", {}) for t in tasks)]
    if reference not in present or not tasks:
        return {"scheme": reference, "reason": "the reference arm did not run on every M-MiT-shaped task", "score": {}}
    score = {s: sum(agg[t]["losses"][s][metric]["mean"] for t in tasks) / len(tasks) for s in present}
    ahead = {s: [agg[t]["losses"][s][metric]["mean"] > agg[t]["losses"][reference][metric]["mean"] for t in tasks]
             for s in present}
    ok = [s for s in present if s == reference or all(ahead[s])]
    best = max(ok, key=lambda s: score[s])
    effects = {s: {t: paired(records, t, s, reference).get(metric) for t in tasks} for s in present if s != reference}
    return {"scheme": best, "metric": metric, "tasks": list(tasks), "score": score, "ahead_on_every_task": ahead,
            "paired_vs_reference": effects, "reference": reference}


# --------------------------------------------------------------------------- markdown
def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _cell(s: Dict[str, float]) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} ({100 * s['min']:.1f}-{100 * s['max']:.1f})"


def _lr(v: float) -> str:
    return f"{v:.2g}"


def shapes_table(shapes: Dict[str, Dict[str, Any]], reference: Dict[str, Any]) -> List[str]:
    lines = ["| task / shape | Zipf exponent | classes | train / val / test videos | training label counts (sorted) | "
             "median/mean | max/min | top-5 share (train) | top-5 share (test positives) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, s in shapes.items():
        f = s["train"]
        lines.append(f"| {task} | {s['tail']:.2f} | {f['classes']} | {s['sizes']} | {', '.join(map(str, f['counts']))} | "
                     f"{f['median_over_mean']:.2f} | {f['max_over_min']:.1f} | {f['top5_share']:.2f} | "
                     f"{s['test']['top5_share']:.2f} |")
    r = reference
    lines.append(f"| M-MiT (paper: mean 6,432, median 5,478; power-law fit) | {r['exponent']:.2f} | {r['classes']} | "
                 f"~1.02 M / 10 K / 10 K | - | {r['median'] / r['mean']:.2f} | {r['max_over_min']:.1f} | "
                 f"{r['top5_share']:.2f} | - |")
    return lines


def selection_table(selection: Dict[str, Any], arms: Sequence[str], grid: Sequence[float]) -> List[str]:
    lines = ["| arm | " + " | ".join(f"val {NAMES[PRIMARY]} at lr {_lr(g)}" for g in grid) + " | chosen lr |",
             "|---|" + "---|" * (len(grid) + 1)]
    for arm in arms:
        sel = selection.get(arm)
        if not sel:
            continue
        vals = {float(k): v for k, v in sel["val"].items()}
        edge = " (grid edge)" if sel["lr"] in (min(grid), max(grid)) else ""
        lines.append(f"| {R.arm_label(arm)} | " + " | ".join(_pct(vals.get(g)) for g in grid) + f" | {_lr(sel['lr'])}{edge} |")
    return lines


def result_table(rows: Dict[str, Any], baselines: Dict[str, Dict[str, float]]) -> List[str]:
    lines = ["| arm | lr | top-1 | top-5 | micro mAP | macro mAP |", "|---|---|---|---|---|---|"]
    for arm, row in rows.items():
        lr = ", ".join(_lr(v) for v in row["lr"])
        lines.append(f"| {R.arm_label(arm)} | {lr} | " + " | ".join(_cell(row[k]) for k in R.METRICS) + " |")
    for name, m in baselines.items():
        lines.append(f"| {name} | - | " + " | ".join(_pct(m.get(k)) for k in R.METRICS) + " |")
    return lines


def effects_table(effects: Dict[str, Dict[str, Any]]) -> List[str]:
    lines = ["| task / shape | scheme | " + " | ".join(NAMES[k] for k in R.METRICS) + " |",
             "|---|---|" + "---|" * len(R.METRICS)]
    for task, per in effects.items():
        for arm, d in per.items():
            if not d:
                continue
            cells = [f"{100 * d[k]['mean']:+.1f} ({100 * d[k]['min']:+.1f}..{100 * d[k]['max']:+.1f})" for k in R.METRICS]
            lines.append(f"| {task} | {R.arm_label(arm)} | " + " | ".join(cells) + " |")
    return lines


def decision_text(dec: Dict[str, Any]) -> List[str]:
    if not dec.get("score"):
        return [f"Default unchanged ({dec['scheme']}): {dec.get('reason', '')}."]
    ranked = sorted(dec["score"], key=lambda s: -dec["score"][s])
    lines = [f"Rule (fixed before the runs): on {' and '.join(dec['tasks'])}, the wLSEP scheme with the highest "
             f"{NAMES[dec['metric']]} averaged over both (means over seeds), if it is ahead of "
             f"{R.arm_label(dec['reference'])} on each; else {R.arm_label(dec['reference'])} stays.", ""]
    for s in ranked:
        ahead = "" if s == dec["reference"] else (" -- ahead on every task" if all(dec["ahead_on_every_task"][s])
                                                  else " -- not ahead on every task")
        lines.append(f"- {R.arm_label(s)}: {_pct(dec['score'][s])}{ahead}")
    lines += ["", f"**Chosen: {R.arm_label(dec['scheme'])}.**"]
    return lines


def markdown(res: Dict[str, Any], notes: str = "") -> str:
    meta = res["meta"]
    lines = [f"# Loss comparison with tuned learning rates, weight schemes and two label shapes ({meta['when']})", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']} ({meta.get('jobs', 1)} worker "
             f"process(es) x {meta['threads']} torch thread(s)), "
             f"run under `nice`; load average (1/5/15 min) at start {R.fmt_load(meta['load_start'])}, at end "
             f"{R.fmt_load(meta['load_end'])} (the machine was shared with other work). Wall time "
             f"{_duration(meta['elapsed_s'])} for {meta['runs']} training runs ({meta['runs_new']} new this time).", "",
             f"Protocol: each arm's learning rate is chosen from {', '.join(_lr(g) for g in res['lr_grid'])} (AdamW) by "
             f"{NAMES[PRIMARY]} on the validation split (labels missing as in training) with selection seed "
             f"{res['select_seed']}; the test set is not read. Then seeds {meta['seeds']} at the chosen rate, "
             "evaluated on the held-out test set (video: complete ground truth). Cells: mean ± sample std "
             "(min-max) over seeds, %.", "", "## Label shapes", ""]
    lines += shapes_table(res["shapes"], res["mmit_reference"])
    for task, a in res["summary"].items():
        lines += ["", f"## {task}: {res['specs_text'][task]}", "", "Learning-rate selection (validation split):", ""]
        lines += selection_table(res["selection"].get(task, {}), res["losses"], res["lr_grid"])
        lines += ["", "Test set:", ""]
        lines += result_table(a["losses"], res["baselines"].get(task, {}))
        lines += [""] + [f"- {NAMES[k]}: {v}" for k, v in res["verdict"].get(task, {}).items()]
    lines += ["", "## Weight schemes against the authors' min_ratio (wLSEP, paired per seed; mean (min..max), pt)", ""]
    lines += effects_table(res["scheme_effects"])
    lines += ["", "## The default (`--loss wlsep`, `class_weights: auto`)", ""] + decision_text(res["decision"])
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot
def plot(agg, arms, path: str, records, meta=None, baselines=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(agg)
    fig, axes = plt.subplots(len(tasks), len(R.METRICS), figsize=(3.6 * len(R.METRICS), 2.9 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        rows = agg[task]["losses"]
        ls = [a for a in arms if a in rows]
        for j, k in enumerate(R.METRICS):
            ax = axes[i][j]
            mean = [100 * rows[a][k]["mean"] for a in ls]
            lo = [100 * (rows[a][k]["mean"] - rows[a][k]["min"]) for a in ls]
            hi = [100 * (rows[a][k]["max"] - rows[a][k]["mean"]) for a in ls]
            colors = ["#c0392b" if a.startswith("wlsep") else "#7f8c8d" for a in ls]
            ax.bar(range(len(ls)), mean, yerr=[lo, hi], color=colors, alpha=0.8, capsize=2)
            for x, a in enumerate(ls):
                pts = [100 * r["metrics"][k] for r in records if r["task"] == task and r["loss"] == a]
                ax.scatter([x] * len(pts), pts, s=6, color="black", zorder=3)
            ax.set_xticks(range(len(ls)))
            ax.set_xticklabels([R.arm_label(a).replace(" (", "\n(") for a in ls], fontsize=5.5, rotation=90)
            ymin = min(100 * rows[a][k]["min"] for a in ls)
            ax.set_ylim(max(0, ymin - 4), min(100.5, max(m + h for m, h in zip(mean, hi)) + 2))
            ch = ((baselines or {}).get(task, {}).get("chance (random scores)") or {}).get(k)
            ax.set_title(f"{task}: {NAMES[k]}" + (f" (chance {100 * ch:.1f})" if ch is not None else ""), fontsize=8)
    where = ""
    if meta:
        load = meta.get("load_start") or [float("nan")]
        where = f" -- {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}, shared (load avg {load[0]:.1f} at start)"
    fig.suptitle("test set, mean over seeds at each arm's chosen lr; bars = min-max, dots = seeds" + where, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
