"""The paper's loss comparison (Tables 1 and 3) at CPU scale, done fairly: the loss form and
the class-weight scheme as separate axes, each arm's learning rate tuned on a validation
split, and two label shapes per task.

* Tasks (``benchmarks/_repro.py``): ``video`` -- Multi-Moving-Shapes clips, 20 visual classes,
  label dropout 0.3 on the training (and validation) labels, complete ground truth on the test
  set, I3D-R18; ``digits`` -- 32x32 grids of scikit-learn's handwritten digits, ResNet-18 2D.
* Label shapes: ``head`` -- today's Zipf tail 1.0 (head-heavy: median/mean of the training
  counts ~0.5); ``mmit`` -- M-MiT's shape, the Zipf exponent fitted so that the training counts
  have M-MiT's median/mean 5478/6432 = 0.852 (``benchmarks/_label_shape.py`` says how).
* Arms: BCE, weighted BCE (min_ratio), WARP, LSEP (the paper's eqs. 1-3 as printed), and
  wLSEP (eq. 4) x each weight scheme of ``mmit_fast.losses.weights``: none, min_ratio (the
  authors'), tempered (power 0.5), effective_number (beta 0.99).
* Protocol: per task and arm, train with the selection seed at each rate of ``--lr-grid``
  (AdamW; default 2e-3, 6e-3, 1.8e-2) and keep the rate with the best micro mAP on the
  validation split; the selection sees only the training and validation arrays
  (:func:`selection_view`). Then the final seeds (default 1, 2, 3) at that rate, evaluated on
  the test set: mean, sample std, min-max, and paired per-seed verdicts.
* The class-weight default for ``--loss wlsep`` follows :func:`_repro_report.decide_default`.

    python benchmarks/repro_losses.py --quick            # the whole grid on tiny tasks (CI, seconds)
    nice -n 10 python benchmarks/repro_losses.py --save  # the committed study

Finished runs are kept in ``benchmarks/results/tmp/repro_losses_runs/`` and reused when the
grid is run again (``--fresh`` re-runs them), so an interrupted study resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _label_shape as LS  # noqa: E402
import _repro as R  # noqa: E402
import _repro_report as REP  # noqa: E402
from _machine import SCRATCH, add_output_args, cpu_model, load_average, results_dir  # noqa: E402

FULL = {
    "video": R.TaskSpec("video", num_train=640, num_val=200, num_eval=360, tail=1.0, label_dropout=0.3, size=40,
                        epochs=8, batch=16),
    "digits": R.TaskSpec("digits", num_train=1600, num_val=600, num_eval=1200, tail=1.0, epochs=8, batch=64),
}
QUICK = {
    "video": R.TaskSpec("video", num_train=24, num_val=12, num_eval=12, tail=1.0, label_dropout=0.3, size=32,
                        epochs=1, batch=8, width=4),
    "digits": R.TaskSpec("digits", num_train=64, num_val=32, num_eval=32, tail=1.0, epochs=1, batch=32, width=4),
}
REFERENCE = "wlsep:min_ratio"
SCHEME_ARMS = ("wlsep:none", REFERENCE, "wlsep:tempered", "wlsep:effective_number:0.99")
ARMS = ("bce", "wbce", "warp", "lsep") + SCHEME_ARMS
LR_GRID = (2e-3, 6e-3, 1.8e-2)
SELECT_SEED = 0
SHAPES = ("mmit", "head")      # M-MiT-shaped first: the default is decided on them
SELECTION_KEYS = ("x_train", "y_train", "x_val", "y_val", "classes")
_NEW = [0]   # runs trained (not reused) by this process


def _log(msg: str) -> None:
    print(f"[repro_losses] {msg}", flush=True)


def task_specs(base: Dict[str, R.TaskSpec], kinds: Sequence[str], shapes: Sequence[str] = SHAPES) -> Dict[str, R.TaskSpec]:
    """``{"video/mmit": spec, "digits/mmit": spec, "digits/head": ..., "video/head": ...}``: ``head``
    is the base spec (tail 1.0), ``mmit`` the same spec with the Zipf exponent fitted to M-MiT's
    median/mean. The kind order alternates per shape, so that ``--jobs 2`` (every other task to a
    worker) gives each worker one task of each kind."""
    out = {}
    for i, shape in enumerate(shapes):
        for kind in (kinds if i % 2 == 0 else list(reversed(kinds))):
            spec = base[kind]
            out[f"{kind}/{shape}"] = replace(spec, tail=LS.fit_tail(spec)) if shape == "mmit" else spec
    return out


def selection_view(task: Dict[str, Any]) -> Dict[str, Any]:
    """What learning-rate selection may read: the training and validation arrays, nothing of
    the test set."""
    missing = [k for k in ("x_val", "y_val") if k not in task]
    if missing:
        raise ValueError(f"the task has no validation split ({missing}): give its spec num_val > 0")
    return {k: task[k] for k in SELECTION_KEYS}


def choose_lr(val: Dict[float, Dict[str, float]], metric: str = REP.PRIMARY) -> float:
    """The rate with the best validation ``metric``; a tie goes to the smaller rate."""
    return min(val, key=lambda lr: (-val[lr][metric], lr))


def _cached(path: str, fresh: bool, make: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    if os.path.exists(path) and not fresh:
        with open(path) as f:
            return json.load(f)
    rec = make()
    rec["load_avg"] = load_average()
    _NEW[0] += 1
    with open(path + ".tmp", "w") as f:
        json.dump(rec, f)
    os.replace(path + ".tmp", path)
    return rec


def _run_path(runs_dir: str, name: str, spec: R.TaskSpec, arm: str, split: str, seed: int, lr: float) -> str:
    arm_s = arm.replace(":", "_")
    return os.path.join(runs_dir, f"{name.replace('/', '-')}-{arm_s}-{split}-s{seed}-lr{lr:g}-{spec.key()}.json")


def tune(name: str, spec: R.TaskSpec, view: Dict[str, Any], arm: str, grid: Sequence[float], seed: int,
         runs_dir: str, fresh: bool = False, log=None) -> Dict[str, Any]:
    """Train ``arm`` at each rate of ``grid`` with ``seed`` on ``view`` (a :func:`selection_view`),
    score each on the validation split; ``{"lr": chosen, "val": {lr: metrics}}``."""
    val = {}
    for lr in grid:
        def make(lr=lr):
            if log:
                log(f"{name} {R.arm_label(arm)} lr {lr:g} (selection, seed {seed}; load {load_average()})")
            return R.run_one(spec, view, arm, seed, lr=lr, split="val")
        val[lr] = _cached(_run_path(runs_dir, name, spec, arm, "val", seed, lr), fresh, make)["metrics"]
    return {"lr": choose_lr(val), "val": {str(lr): m[REP.PRIMARY] for lr, m in val.items()}}


def final_runs(name: str, spec: R.TaskSpec, task: Dict[str, Any], arm: str, lr: float, seeds: Sequence[int],
               runs_dir: str, fresh: bool = False, log=None) -> List[Dict[str, Any]]:
    out = []
    for seed in seeds:
        def make(seed=seed):
            rec = R.run_one(spec, task, arm, seed, lr=lr)
            if log:
                m = rec["metrics"]
                log(f"{name} {R.arm_label(arm)} lr {lr:g} seed {seed}: top1 {m['top1']:.3f} micro {m['micro_map']:.3f} "
                    f"macro {m['macro_map']:.3f} ({rec['train_s']:.0f}s, load {load_average()})")
            return rec
        rec = _cached(_run_path(runs_dir, name, spec, arm, "eval", seed, lr), fresh, make)
        rec["task"] = name
        out.append(rec)
    return out


def run_grid(specs: Dict[str, R.TaskSpec], arms, grid, seeds, runs_dir: str, fresh: bool = False, log=None):
    """Per task (in ``specs``' order) and arm: select the rate, then the final seeds.
    Returns ``(records, selection, tasks)``."""
    os.makedirs(runs_dir, exist_ok=True)
    records, selection, tasks = [], {}, {}
    for name, spec in specs.items():
        task = tasks[name] = R.make_task(spec, os.path.join(SCRATCH, "cache"))
        view = selection_view(task)
        selection[name] = {}
        for arm in arms:
            sel = selection[name][arm] = tune(name, spec, view, arm, grid, SELECT_SEED, runs_dir, fresh, log)
            records += final_runs(name, spec, task, arm, sel["lr"], seeds, runs_dir, fresh, log)
    return records, selection, tasks


def _worker(specs, arms, grid, seeds, runs_dir, fresh, threads) -> int:
    import torch

    torch.set_num_threads(threads)
    run_grid(specs, arms, grid, seeds, runs_dir, fresh, _log)
    return _NEW[0]


def run_parallel(specs: Dict[str, R.TaskSpec], arms, grid, seeds, runs_dir: str, jobs: int, fresh: bool, threads: int):
    """Every other task to each of ``jobs`` worker processes (``threads`` torch threads each),
    then the finished runs are read back in order. On a loaded 2-core machine two 1-thread
    workers train faster than one 2-thread process (no OpenMP barrier waits on a busy core)."""
    if jobs <= 1:
        return run_grid(specs, arms, grid, seeds, runs_dir, fresh, _log)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    names = list(specs)
    parts = [{n: specs[n] for n in names[j::jobs]} for j in range(jobs)]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(_worker, part, arms, grid, seeds, runs_dir, fresh, threads) for part in parts if part]
        _NEW[0] += sum(f.result() for f in futs)
    return run_grid(specs, arms, grid, seeds, runs_dir, False, None)


def baselines(task: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """The trivial answers and the ceiling on the test set: random scores; the training
    frequency prior (every video gets the classes ranked by their training count); a perfect
    ranking (the ground truth itself)."""
    import numpy as np
    from mmit_fast.evaluate import chance_metrics

    y = task["y_eval"]
    counts = task["y_train"].sum(0).astype(np.float64)
    prior = np.broadcast_to(counts + 1e-3 * np.arange(counts.size)[::-1], y.shape).astype(np.float32)
    return {"chance (random scores)": chance_metrics(y),
            "frequency prior (training counts)": R.evaluate_scores(prior, y),
            "ceiling (perfect ranking)": R.evaluate_scores(y.astype(np.float32), y)}


def shapes(specs, tasks) -> Dict[str, Any]:
    out = {}
    for name, spec in specs.items():
        t = tasks[name]
        out[name] = {"tail": spec.tail, "train": R.shape_figures(t["y_train"].sum(0)),
                     "test": R.shape_figures(t["y_eval"].sum(0)),
                     "sizes": f"{len(t['y_train'])} / {len(t['y_val'])} / {len(t['y_eval'])}"}
    return out


def spec_text(spec: R.TaskSpec) -> str:
    width = spec.width or (8 if spec.kind == "video" else 16)
    drop = f", label dropout {spec.label_dropout}" if spec.kind == "video" else ", no missing labels"
    px = f", {spec.size} px frames ({spec.size - 4} px crops)" if spec.kind == "video" else ""
    return (f"{spec.num_train} train / {spec.num_val} val / {spec.num_eval} test generated, Zipf tail {spec.tail:.2f}"
            f"{drop}{px}, width {width}, {spec.epochs} epochs, batch {spec.batch}")


def summarise_study(specs, arms, grid, seeds, records, selection, tasks, meta) -> Dict[str, Any]:
    agg = REP.aggregate(records, arms)
    mmit = [t for t in specs if t.endswith("/mmit")]
    schemes = [a for a in arms if a in SCHEME_ARMS]
    return {"meta": meta, "specs": {t: s.__dict__ for t, s in specs.items()},
            "specs_text": {t: spec_text(s) for t, s in specs.items()}, "losses": list(arms), "lr_grid": list(grid),
            "select_seed": SELECT_SEED, "runs": records, "selection": selection, "summary": agg,
            "verdict": REP.verdicts(agg, records), "baselines": {t: baselines(tasks[t]) for t in specs},
            "shapes": shapes(specs, tasks), "mmit_reference": LS.mmit_power_law(),
            "scheme_effects": REP.scheme_effects(records, list(specs), schemes, REFERENCE),
            "decision": REP.decide_default(agg, records, schemes, mmit, REFERENCE)}


def write(res: Dict[str, Any], out: str, tag: str) -> str:
    notes_path = os.path.join(out, f"{tag}_notes.md")
    notes = open(notes_path).read() if os.path.exists(notes_path) else ""
    md = REP.markdown(res, notes)
    with open(os.path.join(out, f"{tag}.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out, f"{tag}.md"), "w") as f:
        f.write(md)
    REP.plot(res["summary"], res["losses"], os.path.join(out, f"{tag}.png"), res["runs"], res["meta"], res["baselines"])
    return md


def rewrite(path: str) -> Dict[str, Any]:
    """Rebuild the markdown, the plot (and the derived parts of the JSON: summary, verdicts,
    scheme effects, decision, from its runs) of a saved ``repro_losses*.json``, with its notes."""
    with open(path) as f:
        res = json.load(f)
    records, arms = res["runs"], res["losses"]
    agg = REP.aggregate(records, arms)
    schemes = [a for a in arms if a in SCHEME_ARMS]
    res.update(summary=agg, verdict=REP.verdicts(agg, records),
               scheme_effects=REP.scheme_effects(records, list(agg), schemes, REFERENCE),
               decision=REP.decide_default(agg, records, schemes, [t for t in agg if t.endswith("/mmit")], REFERENCE))
    out, tag = os.path.dirname(os.path.abspath(path)), os.path.splitext(os.path.basename(path))[0]
    print(write(res, out, tag))
    return res


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the whole grid on tiny tasks (CI: seconds), 2 final seeds")
    p.add_argument("--seeds", type=int, default=None, help="number of final seeds (default 3; --quick 2)")
    p.add_argument("--losses", default=",".join(ARMS), help="comma list of arms: a short name "
                   f"({', '.join(sorted(R.LOSSES))}) or loss:scheme[:param], e.g. wlsep:tempered:0.25")
    p.add_argument("--tasks", default="video,digits", help="comma list of video, digits")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma list of label shapes: mmit, head")
    p.add_argument("--lr-grid", default=",".join(f"{g:g}" for g in LR_GRID), help="comma list of AdamW learning rates")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: 2, or 1 with --jobs > 1)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, each given every jobs-th task (default 1)")
    p.add_argument("--fresh", action="store_true", help="re-run finished runs instead of reusing them")
    p.add_argument("--from-json", metavar="FILE", help="only rewrite the table and plot of a saved result (next to FILE)")
    add_output_args(p)
    return p.parse_args(argv)


def main(argv=None) -> Dict[str, Any]:
    args = _args(argv)
    if args.from_json:
        return rewrite(args.from_json)
    import torch

    threads = args.threads or (1 if args.jobs > 1 else 2)
    torch.set_num_threads(threads)
    arms = [x for x in args.losses.split(",") if x]
    for arm in arms:
        try:
            R.parse_arm(arm)
        except ValueError as e:
            raise SystemExit(f"repro_losses: {e}")
    grid = sorted(float(g) for g in args.lr_grid.split(",") if g)
    specs = task_specs(QUICK if args.quick else FULL, [t for t in args.tasks.split(",") if t],
                       [s for s in args.shapes.split(",") if s])
    seeds = list(range(1, 1 + (args.seeds or (2 if args.quick else 3))))
    tag = "repro_losses_quick" if args.quick else "repro_losses"
    runs_dir = os.path.join(SCRATCH, f"{tag}_runs")
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "threads": threads, "jobs": args.jobs,
            "load_start": load_average(), "seeds": seeds}
    t0, new0 = time.time(), _NEW[0]
    records, selection, tasks = run_parallel(specs, arms, grid, seeds, runs_dir, args.jobs, args.fresh, threads)
    meta.update(elapsed_s=time.time() - t0, load_end=load_average(), runs=len(specs) * len(arms) * (len(grid) + len(seeds)),
                runs_new=_NEW[0] - new0)
    res = summarise_study(specs, arms, grid, seeds, records, selection, tasks, meta)
    out = results_dir(args)
    print(write(res, out, tag))
    _log(f"wrote {os.path.join(out, tag)}.{{json,md,png}}")
    return res


if __name__ == "__main__":
    main()
