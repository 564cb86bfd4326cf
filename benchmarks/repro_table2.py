"""Table 2 of the paper at CPU scale: single- vs multi-label training and evaluation.

Two models, the same architecture, data and schedule (the ``video`` task of
``benchmarks/_repro.py``: Multi-Moving-Shapes, 20 visual classes, long tail, complete labels):

* "single-label training" (the paper's MiT): every training video keeps ONE of its labels,
  drawn at random (seeded), as a single-label dataset would have annotated it;
* "multi-label training" (M-MiT): every training video keeps all its labels.

Both are evaluated on the same evaluation videos with two ground truths: single-label
(one label per video kept at random, the paper's MiT-S) and multi-label (all labels,
M-MiT-S), on the full class set and on a class subset (the paper's "classes shared between
MiT and M-MiT"; here a fixed random half of the classes). As in the paper the video set of
a class set is the videos whose single label lies in it, and the same videos are used for
both ground truths (multi-label targets restricted to the subset's classes).

Losses: wLSEP (min_ratio weights) for both models, as the paper's M-MiT model; ``--loss``
changes it. Cells are mean ± std over seeds.

    python benchmarks/repro_table2.py --quick
    nice -n 10 python benchmarks/repro_table2.py --save   # ~10 min on 2 idle cores
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _repro as R  # noqa: E402
from _machine import SCRATCH, add_output_args, cpu_model, load_average, results_dir  # noqa: E402

FULL = R.TaskSpec("video", num_train=1200, num_eval=400, tail=1.0, label_dropout=0.0, size=52, epochs=12, batch=32)
QUICK = R.TaskSpec("video", num_train=48, num_eval=32, tail=1.0, label_dropout=0.0, size=36, epochs=2, batch=8)


def keep_one_label(y: np.ndarray, seed: int) -> np.ndarray:
    """A copy of multi-hot ``y`` where each row keeps one of its positives, chosen uniformly
    at random (seeded); rows without a positive stay empty."""
    rng = np.random.default_rng([seed, 4242])
    out = np.zeros_like(y, dtype=bool)
    for i, row in enumerate(y):
        pos = np.flatnonzero(row)
        if pos.size:
            out[i, pos[int(rng.integers(pos.size))]] = True
    return out


def class_subset(num_classes: int, seed: int = 0) -> np.ndarray:
    """A fixed random half of the classes (sorted ids)."""
    rng = np.random.default_rng([seed, 777])
    return np.sort(rng.choice(num_classes, size=num_classes // 2, replace=False))


def table2_cells(scores: np.ndarray, y_multi: np.ndarray, y_single: np.ndarray, subset=None) -> Dict[str, Any]:
    """Metrics of ``scores`` with single- and multi-label ground truth on the same videos:
    the videos whose single label is in ``subset`` (all videos with a label when None)."""
    cols = np.arange(y_multi.shape[1]) if subset is None else np.asarray(subset)
    rows = y_single[:, cols].any(1)
    out = {"num_videos": int(rows.sum())}
    for name, y in (("single", y_single), ("multi", y_multi)):
        out[name] = R.evaluate_scores(scores[rows], y[rows], class_subset=cols)
        assert out[name]["num_videos"] == out["num_videos"]   # the same videos for both ground truths
    return out


def run(spec: R.TaskSpec, seeds: List[int], loss: str, log) -> Dict[str, Any]:
    task = R.make_task(spec, os.path.join(SCRATCH, "cache"))
    C = task["y_train"].shape[1]
    subset = class_subset(C)
    y_single_eval = keep_one_label(task["y_eval"], seed=12345)
    runs = []
    for seed in seeds:
        for training in ("single", "multi"):
            t0 = time.time()
            y_train = keep_one_label(task["y_train"], seed) if training == "single" else task["y_train"]
            model = R.train_model(spec, task, loss, seed, y_train=y_train)
            scores = R.predict(model, spec.kind, task["x_eval"], spec.size)
            rec = {"seed": seed, "training": training, "train_s": time.time() - t0, "load_avg": load_average(),
                   "full": table2_cells(scores, task["y_eval"], y_single_eval),
                   "subset": table2_cells(scores, task["y_eval"], y_single_eval, subset)}
            log(f"seed {seed} {training}-label training: full multi micro mAP {rec['full']['multi']['micro_map']:.3f}, "
                f"single {rec['full']['single']['micro_map']:.3f} ({rec['train_s']:.0f}s)")
            runs.append(rec)
    return {"runs": runs, "subset": [task["classes"][i] for i in subset], "classes": task["classes"],
            "labels_per_train_video": float(task["y_train"].sum(1).mean()),
            "labels_per_eval_video": float(task["y_eval"].sum(1).mean())}


def markdown(res: Dict[str, Any], meta: Dict[str, Any], spec: R.TaskSpec) -> str:
    lines = [f"# Table 2 at CPU scale: single- vs multi-label training and evaluation ({meta['when']})", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}; load average at start "
             f"(1/5/15 min) {R.fmt_load(meta['load_start'])}, at end {R.fmt_load(meta['load_end'])} (shared machine). Seeds {meta['seeds']}, loss "
             f"{meta['loss']}, {meta['elapsed_s'] / 60:.0f} min.", "",
             f"Task: Multi-Moving-Shapes video, {spec.num_train} train / {spec.num_eval} eval videos, 20 visual classes, "
             f"tail {spec.tail}, {res['labels_per_train_video']:.2f} labels per training video; I3D-R18 w8, "
             f"{spec.epochs} epochs. Class subset ({len(res['subset'])} classes): {', '.join(res['subset'])}.", "",
             "| class set | training labels | evaluation ground truth | videos | top-1 | top-5 | micro mAP | macro mAP |",
             "|---|---|---|---|---|---|---|---|"]
    for cs in ("full", "subset"):
        for training, gt in (("single", "single"), ("single", "multi"), ("multi", "single"), ("multi", "multi")):
            rs = [r for r in res["runs"] if r["training"] == training]
            if not rs:
                continue
            cells = []
            for k in R.METRICS:
                s = R.summarise([r[cs][gt][k] for r in rs])
                cells.append(f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}")
            tname = "single (MiT-like)" if training == "single" else "all (M-MiT-like)"
            gname = "single (MiT-S)" if gt == "single" else "multi (M-MiT-S)"
            lines.append(f"| {cs} | {tname} | {gname} | {rs[0][cs]['num_videos']} | " + " | ".join(cells) + " |")
    lines += ["", "The paper's rows are (single, single), (single, multi) and (multi, multi) on the subset; "
              "the (multi, single) row is added for completeness."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; --quick 1)")
    p.add_argument("--loss", default="wlsep", choices=sorted(R.LOSSES), help="loss of both models (default wlsep)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    add_output_args(p)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    spec = QUICK if args.quick else FULL
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "load_start": load_average(),
            "seeds": seeds, "loss": args.loss}
    t0 = time.time()
    res = run(spec, seeds, args.loss, lambda m: print(f"[repro_table2] {m}", flush=True))
    meta.update(elapsed_s=time.time() - t0, load_end=load_average())
    out = results_dir(args)
    tag = "table2_quick" if args.quick else "table2"
    with open(os.path.join(out, f"{tag}.json"), "w") as f:
        json.dump({"meta": meta, "spec": spec.__dict__, **res}, f, indent=1)
    md = markdown(res, meta, spec)
    with open(os.path.join(out, f"{tag}.md"), "w") as f:
        f.write(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
