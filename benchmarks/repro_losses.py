"""The paper's loss comparison (Tables 1 and 3) reproduced at CPU scale.

The same model, data and schedule trained with each loss, several seeds each, on two
long-tailed multi-label tasks (see ``benchmarks/_repro.py``):

* ``video``: Multi-Moving-Shapes clips (20 visual classes, Zipf tail 1.0, label dropout 0.3 on
  the training labels: an absent label is unknown, as in M-MiT), I3D-R18 width 8;
* ``digits``: 32x32 grids of scikit-learn's handwritten digits, labels = digits present
  (Zipf tail 1.0), ResNet-18 2D width 16.

Losses: ``bce``, ``warp``, ``lsep`` (the paper's eqs. 1-3, unweighted), ``wlsep`` (eq. 4 with
the authors' ``min_ratio`` class weights) and ``wbce`` (eq. 1 with the same weights: it
separates the effect of the weights from the effect of the ranking loss); ``wwarp`` on request.
Reported: top-1, top-5, micro and macro mAP on the held-out set as mean, sample std and
min-max over seeds, and wLSEP's paired difference (same seed = same initialisation and
batch order) to every other loss.

    python benchmarks/repro_losses.py --quick            # CI-sized smoke run (< 1 minute)
    nice -n 10 python benchmarks/repro_losses.py --save  # the committed grid (about 30 min on 2 idle cores)

Runs already finished are kept in ``benchmarks/results/tmp/repro_losses_runs/`` and skipped
when the grid is run again (``--fresh`` re-runs them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _repro as R  # noqa: E402
from _machine import SCRATCH, add_output_args, cpu_model, load_average, results_dir  # noqa: E402

FULL = {
    "video": R.TaskSpec("video", num_train=1200, num_eval=400, tail=1.0, label_dropout=0.3, size=52, epochs=12,
                        batch=32),
    "digits": R.TaskSpec("digits", num_train=4000, num_eval=2000, tail=1.0, epochs=8, batch=64),
}
QUICK = {
    "video": R.TaskSpec("video", num_train=48, num_eval=24, tail=1.0, label_dropout=0.3, size=36, epochs=2, batch=8),
    "digits": R.TaskSpec("digits", num_train=128, num_eval=64, tail=1.0, epochs=2, batch=32),
}
DEFAULT_LOSSES = ("bce", "wbce", "warp", "lsep", "wlsep")


def _log(msg: str) -> None:
    print(f"[repro_losses] {msg}", flush=True)


def run_grid(specs: Dict[str, R.TaskSpec], losses, seeds, runs_dir: str, fresh: bool = False,
             verbose: bool = False) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    """Train and evaluate every (seed, task, loss), seed-major so a partial grid is balanced.
    Each finished run is saved as ``runs_dir/<task>-<loss>-s<seed>-<spec hash>.json``."""
    import torch

    os.makedirs(runs_dir, exist_ok=True)
    tasks = {name: R.make_task(spec, os.path.join(SCRATCH, "cache")) for name, spec in specs.items()}
    records = []
    for seed in seeds:
        for name, spec in specs.items():
            for loss in losses:
                path = os.path.join(runs_dir, f"{name}-{loss}-s{seed}-{spec.key()}.json")
                if os.path.exists(path) and not fresh:
                    with open(path) as f:
                        records.append(json.load(f))
                    continue
                _log(f"{name} {loss} seed {seed} (threads {torch.get_num_threads()}, load {load_average()})")
                rec = R.run_one(spec, tasks[name], loss, seed, log=_log if verbose else None)
                rec["load_avg"] = load_average()
                m = rec["metrics"]
                _log(f"  -> top1 {m['top1']:.3f} top5 {m['top5']:.3f} micro {m['micro_map']:.3f} "
                     f"macro {m['macro_map']:.3f} ({rec['train_s']:.0f}s)")
                with open(path + ".tmp", "w") as f:
                    json.dump(rec, f)
                os.replace(path + ".tmp", path)
                records.append(rec)
    return records, tasks


def aggregate(records, losses) -> Dict[str, Any]:
    """Per task and loss: mean/std/min/max of each metric; wLSEP's paired differences."""
    out: Dict[str, Any] = {}
    for task in sorted({r["task"] for r in records}):
        rows = {}
        for loss in losses:
            rs = sorted((r for r in records if r["task"] == task and r["loss"] == loss), key=lambda r: r["seed"])
            if rs:
                rows[loss] = {k: R.summarise([r["metrics"][k] for r in rs]) for k in R.METRICS}
                rows[loss]["seeds"] = [r["seed"] for r in rs]
        diffs = {}
        ours = {r["seed"]: r["metrics"] for r in records if r["task"] == task and r["loss"] == "wlsep"}
        for loss in losses:
            if loss == "wlsep" or not ours:
                continue
            other = {r["seed"]: r["metrics"] for r in records if r["task"] == task and r["loss"] == loss}
            common = sorted(set(ours) & set(other))
            if common:
                diffs[loss] = {k: R.summarise([ours[s][k] - other[s][k] for s in common]) for k in R.METRICS}
        out[task] = {"losses": rows, "wlsep_minus": diffs}
    return out


def verdicts(agg: Dict[str, Any]) -> Dict[str, Dict[str, str]]:
    """Per task and metric: 'wins' when wLSEP has the best mean and beats the runner-up in every
    seed (paired), 'best mean, within noise' when its mean is best but some seed disagrees,
    else 'loses to <loss>' (naming the best mean)."""
    out: Dict[str, Dict[str, str]] = {}
    for task, a in agg.items():
        out[task] = {}
        rows = a["losses"]
        if "wlsep" not in rows:
            continue
        for k in R.METRICS:
            best = max(rows, key=lambda loss: rows[loss][k]["mean"])
            if best != "wlsep":
                d = a["wlsep_minus"][best][k]
                if abs(d["mean"]) < 5e-4:
                    out[task][k] = f"ties with {R.LABELS[best]} (per-seed {100 * d['min']:+.1f}..{100 * d['max']:+.1f} pt)"
                    continue
                noise = " (within noise)" if d["max"] > 0 else ""
                out[task][k] = f"loses to {R.LABELS[best]} by {-100 * d['mean']:.1f} pt{noise}"
                continue
            others = [loss for loss in rows if loss != "wlsep"]
            if not others:
                out[task][k] = "only loss run"
                continue
            runner = max(others, key=lambda loss: rows[loss][k]["mean"])
            d = a["wlsep_minus"][runner][k]
            tag = "wins" if d["min"] > 0 else "best mean, within noise"
            out[task][k] = f"{tag} (+{100 * d['mean']:.1f} pt over {R.LABELS[runner]}, per-seed {100 * d['min']:+.1f}..{100 * d['max']:+.1f})"
    return out


def _cell(s: Dict[str, float]) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} ({100 * s['min']:.1f}-{100 * s['max']:.1f})"


def markdown(agg, verdict, chance, specs, meta) -> str:
    lines = [f"# Loss comparison (Tables 1/3 style), {meta['when']}", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']} ({meta['threads']} threads); "
             f"load average (1/5/15 min) at start {R.fmt_load(meta['load_start'])}, at end {R.fmt_load(meta['load_end'])} "
             "(the machine was shared with other work). "
             f"Seeds: {meta['seeds']}. Total {meta['elapsed_s'] / 60:.0f} min.", "",
             "Cells: mean ± sample std (min-max) over seeds, in percent, on the held-out set "
             "(video: complete ground truth).", ""]
    for task, a in agg.items():
        spec = specs[task]
        lines += [f"## {task}: {spec.num_train} train / {spec.num_eval} eval, tail {spec.tail}, "
                  f"label dropout {spec.label_dropout}, {spec.epochs} epochs, batch {spec.batch}", "",
                  "| loss | top-1 | top-5 | micro mAP | macro mAP |", "|---|---|---|---|---|"]
        for loss, row in a["losses"].items():
            lines.append(f"| {R.LABELS[loss]} | " + " | ".join(_cell(row[k]) for k in R.METRICS) + " |")
        ch = chance.get(task) or {}
        lines.append("| chance (random scores) | " + " | ".join(f"{100 * ch.get(k, float('nan')):.1f}" for k in R.METRICS) + " |")
        lines += ["", "wLSEP: " + "; ".join(f"{k}: {v}" for k, v in verdict.get(task, {}).items()), ""]
    return "\n".join(lines) + "\n"


def plot(agg, losses, path: str, records, meta=None, chance=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(agg)
    fig, axes = plt.subplots(len(tasks), len(R.METRICS), figsize=(3.2 * len(R.METRICS), 2.8 * len(tasks)), squeeze=False)
    names = {"top1": "top-1", "top5": "top-5", "micro_map": "micro mAP", "macro_map": "macro mAP"}
    for i, task in enumerate(tasks):
        rows = agg[task]["losses"]
        ls = [loss for loss in losses if loss in rows]
        for j, k in enumerate(R.METRICS):
            ax = axes[i][j]
            mean = [100 * rows[loss][k]["mean"] for loss in ls]
            lo = [100 * (rows[loss][k]["mean"] - rows[loss][k]["min"]) for loss in ls]
            hi = [100 * (rows[loss][k]["max"] - rows[loss][k]["mean"]) for loss in ls]
            colors = ["#c0392b" if loss == "wlsep" else "#7f8c8d" for loss in ls]
            ax.bar(range(len(ls)), mean, yerr=[lo, hi], color=colors, alpha=0.8, capsize=3)
            for x, loss in enumerate(ls):
                pts = [100 * r["metrics"][k] for r in records if r["task"] == task and r["loss"] == loss]
                ax.scatter([x] * len(pts), pts, s=8, color="black", zorder=3)
            ax.set_xticks(range(len(ls)))
            ax.set_xticklabels([R.LABELS[loss].replace(" (weighted)", "\n(w)") for loss in ls], fontsize=7)
            ymin = min(100 * rows[loss][k]["min"] for loss in ls)
            ax.set_ylim(max(0, ymin - 4), min(100.5, max(mean) + max(hi) + 2))
            ch = (chance or {}).get(task, {}).get(k)
            ax.set_title(f"{task}: {names[k]}" + (f" (chance {100 * ch:.1f})" if ch is not None else ""), fontsize=9)
    where = ""
    if meta:
        load = meta.get("load_start") or [float("nan")]
        where = f" -- {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}, shared (load avg {load[0]:.1f} at start)"
    fig.suptitle("held-out set, mean over seeds, bars = min-max, dots = seeds" + where, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rewrite(path: str) -> Dict[str, Any]:
    """Rebuild the markdown table and the plot of a saved ``repro_losses*.json``."""
    with open(path) as f:
        res = json.load(f)
    specs = {t: R.TaskSpec(**s) for t, s in res["specs"].items()}
    base = os.path.splitext(path)[0]
    md = markdown(res["summary"], res["verdict"], res["chance"], specs, res["meta"])
    with open(base + ".md", "w") as f:
        f.write(md)
    plot(res["summary"], res["losses"], base + ".png", res["runs"], res["meta"], res["chance"])
    print(md)
    return res


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI-sized smoke run (tiny tasks, 2 epochs, 2 seeds)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; --quick 2)")
    p.add_argument("--losses", default=",".join(DEFAULT_LOSSES), help=f"comma list of {sorted(R.LOSSES)}")
    p.add_argument("--tasks", default="video,digits", help="comma list of video, digits")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--fresh", action="store_true", help="re-run finished runs instead of reusing them")
    p.add_argument("--verbose", action="store_true", help="one line per epoch")
    p.add_argument("--from-json", metavar="FILE", help="only rewrite the table and plot of a saved result (next to FILE)")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.from_json:
        return rewrite(args.from_json)
    import torch

    torch.set_num_threads(args.threads)
    losses = [x for x in args.losses.split(",") if x]
    bad = [x for x in losses if x not in R.LOSSES]
    if bad:
        raise SystemExit(f"repro_losses: unknown loss(es) {bad}; choose from {sorted(R.LOSSES)}")
    base = QUICK if args.quick else FULL
    specs = {t: base[t] for t in args.tasks.split(",") if t}
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    out = results_dir(args)
    tag = "repro_losses_quick" if args.quick else "repro_losses"
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "load_start": load_average(), "seeds": seeds}
    t0 = time.time()
    records, tasks = run_grid(specs, losses, seeds, os.path.join(SCRATCH, f"{tag}_runs"), args.fresh, args.verbose)
    meta.update(elapsed_s=time.time() - t0, load_end=load_average())
    from mmit_fast.evaluate import chance_metrics

    chance = {t: chance_metrics(tasks[t]["y_eval"]) for t in specs}
    agg = aggregate(records, losses)
    verdict = verdicts(agg)
    result = {"meta": meta, "specs": {t: s.__dict__ for t, s in specs.items()}, "losses": losses, "runs": records,
              "summary": agg, "verdict": verdict, "chance": chance}
    with open(os.path.join(out, f"{tag}.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(agg, verdict, chance, specs, meta)
    with open(os.path.join(out, f"{tag}.md"), "w") as f:
        f.write(md)
    plot(agg, losses, os.path.join(out, f"{tag}.png"), records, meta, chance)
    print(md)
    _log(f"wrote {os.path.join(out, tag)}.{{json,md,png}}")
    return result


if __name__ == "__main__":
    main()
