"""``mmit demo``: the main job end to end on the synthetic Multi-Moving-Shapes dataset.

1. generate and pack the dataset (:func:`mmit_fast.pack.synth.generate_dataset`, its default
   size; ``--quick``: fewer, smaller videos) into ``out/data`` (reused when it exists with the
   same parameters);
2. train a small I3D (ResNet-18 depth, 16 base channels, 8 frames at 96 px, 1x7x7 stem) with
   wLSEP and ``tempered`` class weights (``auto``: the loss study's choice), one process on CPU,
   one process per GPU under ``torchrun`` when there are several (GPU: bf16 autocast, DALI decoding when installed);
3. evaluate the best checkpoint on val and test (centre clip) and print the Table 1-style
   rows next to the chance level (random scores on the same videos);
4. explain the model: mCAM pictures of a few validation clips (``out/cam``), and Network
   Dissection on test frames exported in the Broden layout (``out/broden`` -> ``out/dissect``);
5. write the report page ``out/report.html`` (:mod:`mmit_fast.report`).

Outputs under ``out`` (default ``runs/demo``; ``--quick``: ``runs/demo-quick``, so a smoke
run never replaces the full demo's dataset): ``data/`` (shards), ``train/`` (checkpoints,
metrics.csv, TensorBoard, summary.json), ``train/eval/`` (metrics JSON, per-class AP CSV,
table rows, scores), ``cam/``, ``broden/``, ``dissect/``, ``report.html``,
``demo_report.md`` and ``demo_summary.json``.

The demo's training settings are :data:`DEMO_CONFIG` (also in the shipped config ``demo_cpu``, ``mmit_fast/mmit_fast/configs/demo_cpu.yaml``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, Optional, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see mmit_fast.train

#: training settings of the full demo (the same keys as mmit_fast/configs/demo_cpu.yaml)
DEMO_CONFIG: Dict[str, Any] = {
    "model": "i3d", "depth": 18, "width": 16, "model_args": {"conv1_t": 1},
    "clip_mode": "uniform", "frames": 8, "stride": 1, "crop": 96, "flip": False,
    "loss": "wlsep", "class_weights": "auto",
    "optimizer": "adamw", "lr": 0.002, "weight_decay": 0.05,
    "schedule": "cosine", "warmup_epochs": 1.0,
    "epochs": 6, "batch_size": 16, "accum_steps": 1,
    "num_workers": 1, "backend": "auto", "amp": "auto",
    "eval_every": 1, "ckpt_every": 10, "best_metric": "micro_map", "seed": 0,
}
#: the dataset of the full demo: generate_dataset's defaults, packed with the preset matched to the
#: model's sampling (8 frames per clip, all of them used: nothing decoded is thrown away)
DEMO_DATA: Dict[str, Any] = {"preset": "tsm8"}
#: --quick: a ~1-minute smoke run
QUICK_DATA: Dict[str, Any] = {"num_videos": 160, "size": 64, "seconds": 1.0, "preset": "tsm8"}
QUICK_CONFIG: Dict[str, Any] = {"epochs": 6, "frames": 8, "stride": 1, "crop": 56, "width": 16, "batch_size": 8,
                                "warmup_epochs": 0.5, "ckpt_every": 0}
#: output folders: --quick has its own, so a smoke run never replaces the full demo's dataset
FULL_OUT, QUICK_OUT = "runs/demo", "runs/demo-quick"
#: interpretation: validation clips drawn with mCAM; test videos exported for dissection
CAM_CLIPS, QUICK_CAM_CLIPS = 8, 3
BRODEN_VIDEOS, QUICK_BRODEN_VIDEOS = 30, 8


def _log(msg: str) -> None:
    print(f"[mmit demo] {msg}", flush=True)


def _dataset_params(quick: bool, seed: int) -> Dict[str, Any]:
    p = dict(QUICK_DATA if quick else DEMO_DATA)
    p["seed"] = seed
    return p


def _existing_matches(data_dir: str, params: Dict[str, Any]) -> bool:
    from .shards import load_manifest

    try:
        man = load_manifest(data_dir)
    except Exception:
        return False
    src = man.source or {}
    cfg = src.get("config") or (src.get("splits", {}).get("train") or {}).get("config") or {}
    if not all(split in man.splits for split in ("train", "val", "test")):
        return False
    from .pack.synth import generate_dataset
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(generate_dataset).parameters.items()
                if v.default is not inspect.Parameter.empty}
    want = dict(defaults, **params)
    if (man.video or {}).get("preset", "full") != (want.get("preset") or "full"):
        return False
    keys = ("num_videos", "seed", "size", "seconds") + (() if want.get("preset") else ("fps",))
    return all(cfg.get(k) == want.get(k) for k in keys)


def prepare_data(data_dir: str, quick: bool, seed: int, regenerate: bool, progress: bool) -> Any:
    from .pack.synth import generate_dataset
    from .shards import load_manifest

    params = _dataset_params(quick, seed)
    if not regenerate and _existing_matches(data_dir, params):
        _log(f"reusing the dataset in {data_dir}")
        return load_manifest(data_dir)
    if os.path.isfile(os.path.join(data_dir, "manifest.json")):
        why = "--regenerate" if regenerate else "it was made with other parameters"
        _log(f"replacing the dataset in {data_dir} ({why})")
    _log(f"generating the synthetic dataset into {data_dir} ({params or 'default size'})")
    return generate_dataset(data_dir, overwrite=True, progress=progress, **params)


def demo_config(out: str, data_dir: str, quick: bool, seed: int, epochs: Optional[int], device: str,
                sets: Sequence[str] = ()):
    from .config import TrainConfig, apply_overrides, parse_set

    d = dict(DEMO_CONFIG)
    if quick:
        d.update(QUICK_CONFIG)
    d.update({"data": data_dir, "out": os.path.join(out, "train"), "seed": seed, "device": device})
    if epochs:
        d["epochs"] = epochs
    cfg = apply_overrides(TrainConfig(), d, where="demo defaults")
    apply_overrides(cfg, parse_set(sets), where="--set")
    return cfg.validate()


def _gpu_count(device: str) -> int:
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


def _train_multi(cfg, nproc: int) -> Dict[str, Any]:
    """Train with ``nproc`` processes under torchrun (one per GPU)."""
    cfg_path = os.path.join(cfg.out, "demo_train_config.yaml")
    os.makedirs(cfg.out, exist_ok=True)
    cfg.save(cfg_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "mmit_fast.train", "--config", cfg_path]
    _log("running " + " ".join(cmd))
    rc = subprocess.call(cmd)
    if rc != 0:
        raise RuntimeError(f"training under torchrun failed (exit code {rc}); see the output above")
    with open(os.path.join(cfg.out, "summary.json")) as f:
        return json.load(f)


def _train(cfg, device: str, nproc: Optional[int]) -> Dict[str, Any]:
    """Train with the demo config: one process on CPU or one GPU, torchrun for several GPUs."""
    import torch

    from .train import train

    gpus = _gpu_count(device)
    if torch.cuda.is_available() and device != "cpu":
        cfg.num_workers = max(cfg.num_workers, 2)
    n = nproc if nproc is not None else max(1, gpus)
    if n > 1 and gpus == 0:
        cfg.device = "cpu"
    _log(f"training {cfg.model}-R{cfg.depth} width {cfg.width}, {cfg.frames}x{cfg.crop}px clips, loss {cfg.loss}, "
         f"{cfg.epochs} epochs, {n} process(es) on {'GPU' if gpus else 'CPU'}")
    if n > 1 and "WORLD_SIZE" not in os.environ:
        return _train_multi(cfg, n)
    if gpus == 0 and cfg.threads == 0:
        cfg.threads = max(1, min(2, os.cpu_count() or 1))
    return train(cfg)


def _evaluate(ck: str, data_dir: str, cfg, device: str, progress: bool):
    from .evaluate import evaluate_checkpoint

    results: Dict[str, Any] = {}
    rows = []
    for split in ("val", "test"):
        m = evaluate_checkpoint(ck, data_dir, split, out=os.path.join(cfg.out, "eval"), device=device,
                                progress=progress, num_workers=cfg.num_workers)
        results[split] = {k: m[k] for k in ("top1", "top5", "micro_map", "macro_map", "pooled_ap", "num_videos")}
        results[split]["chance"] = m.get("chance")
        results[split]["files"] = m["files"]
        rows.append((split, m["table_row"], m.get("chance") or {}))
    return results, rows


def interpret(ck: str, data_dir: str, out: str, quick: bool, device: str) -> Dict[str, Any]:
    """mCAM pictures of a few validation clips (``out/cam``) and a dissection of the model on
    the test split exported in the Broden layout (``out/broden`` -> ``out/dissect``)."""
    try:
        from .interpret import run_cam, run_dissect
    except ImportError as e:  # the interpretation package is optional at this stage of the pipeline
        _log(f"interpretation skipped: {e}")
        return {"skipped": str(e)}
    from .pack.synth import export_broden

    t0 = time.time()
    cam = run_cam(ck, f"{data_dir}:val", os.path.join(out, "cam"), top_k=3, limit=QUICK_CAM_CLIPS if quick else CAM_CLIPS,
                  device=device)
    t1 = time.time()
    _log(f"mCAM pictures: {os.path.abspath(cam)} ({t1 - t0:.0f}s)")
    broden = export_broden(data_dir, os.path.join(out, "broden"), split="test",
                           max_videos=QUICK_BRODEN_VIDEOS if quick else BRODEN_VIDEOS)
    summary = run_dissect(ck, broden, os.path.join(out, "dissect"), device=device)
    t2 = time.time()
    _log(f"dissection: {os.path.abspath(os.path.join(out, 'dissect', 'report.html'))} ({t2 - t1:.0f}s)")
    return {"cam_index": os.path.abspath(cam), "dissect_dir": os.path.abspath(os.path.join(out, "dissect")),
            "cam_s": t1 - t0, "dissect_s": t2 - t1,
            "dissect_summary": {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}}


def _markdown(out_data: str, num_classes: int, ck: str, rows, times: Dict[str, float], summary) -> str:
    from .evaluate import TABLE_HEADER

    lines = ["# mmit demo", "", f"Dataset: {out_data} ({num_classes} classes). Checkpoint: {ck}.", "",
             TABLE_HEADER.replace("| model |", "| split | model |").replace("|---|", "|---|---|", 1)]
    for split, row, chance in rows:
        lines.append(f"| {split} " + row)
        if chance:
            lines.append(f"| {split} | chance | (random scores) | " + " | ".join(
                f"{100 * chance.get(k, float('nan')):.1f}" for k in ("top1", "top5", "micro_map", "macro_map")) + " |")
    lines += ["", f"Time: {times['total']:.0f}s total (data {times['data']:.0f}s, training {times['train']:.0f}s, "
              f"{summary.get('steps')} steps, {summary.get('clips_per_s') or 0:.1f} clips/s; evaluation "
              f"{times['eval']:.0f}s; interpretation {times['interpret']:.0f}s)."]
    return "\n".join(lines) + "\n"


def run_demo(out: Optional[str] = None, quick: bool = False, seed: int = 0, epochs: Optional[int] = None,
             device: str = "auto", nproc: Optional[int] = None, regenerate: bool = False, sets: Sequence[str] = (),
             progress: bool = True, interpretation: bool = True) -> Dict[str, Any]:
    """Run the demo into ``out`` (default ``runs/demo``; ``--quick``: ``runs/demo-quick``);
    returns (and writes to ``out/demo_summary.json``) its summary."""
    from ._io import atomic_write_json, atomic_write_text
    from .report import build_report

    out = out or (QUICK_OUT if quick else FULL_OUT)
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    _log(f"output folder: {os.path.abspath(out)}")
    data_dir = os.path.join(out, "data")
    man = prepare_data(data_dir, quick, seed, regenerate, progress)
    times = {"data": time.time() - t0}
    _log(f"dataset: {man.num_samples('train')} train / {man.num_samples('val')} val / {man.num_samples('test')} test "
         f"videos, {man.num_classes} classes ({times['data']:.0f}s)")
    cfg = demo_config(out, data_dir, quick, seed, epochs, device, sets)
    if not progress:
        cfg.progress = False
    t1 = time.time()
    summary = _train(cfg, device, nproc)
    times["train"] = time.time() - t1
    ck = summary.get("best_checkpoint") or summary["last_checkpoint"]
    t2 = time.time()
    results, rows = _evaluate(ck, data_dir, cfg, device, progress)
    times["eval"] = time.time() - t2
    t3 = time.time()
    interp = interpret(ck, data_dir, out, quick, device) if interpretation else {"skipped": "interpretation=False"}
    times["interpret"] = time.time() - t3
    page = build_report(out)
    times["total"] = time.time() - t0
    report = _markdown(data_dir, man.num_classes, ck, rows, times, summary)
    atomic_write_text(os.path.join(out, "demo_report.md"), report)
    result = {"out": os.path.abspath(out), "data": os.path.abspath(data_dir), "checkpoint": ck, "results": results,
              "elapsed_s": times["total"], "data_s": times["data"], "train_s": times["train"], "times": times,
              "train": summary, "quick": quick, "interpret": interp, "report": os.path.abspath(page)}
    atomic_write_json(os.path.join(out, "demo_summary.json"), result)
    print()
    print(report)
    _log(f"everything is in {os.path.abspath(out)}:")
    _log(f"  report page (open in a browser): {os.path.abspath(page)}")
    _log(f"  table: {os.path.abspath(os.path.join(out, 'demo_report.md'))}; metrics, per-class AP, scores: "
         f"{os.path.abspath(os.path.join(cfg.out, 'eval'))}")
    if "cam_index" in interp:
        _log(f"  mCAM gallery: {interp['cam_index']}; dissection: {interp['dissect_dir']}")
    _log(f"  training curves: tensorboard --logdir {os.path.abspath(os.path.join(cfg.out, 'tb'))}")
    return result
