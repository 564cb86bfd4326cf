"""Training throughput: optimiser steps/s and clips/s of mmit's training step against a plain
PyTorch loop, on in-memory tensors and through the real loader.

One step = forward + wLSEP (min_ratio weights) + backward + SGD step. Rows:

* ``plain torch``: what a user writes without mmit-fast (the baseline): ``logits = model(v);
  loss = crit(logits, y.float()); zero_grad; backward; step``, no host read;
* ``mmit step``: :func:`mmit_fast.train.step.micro_step` + ``optimizer_step`` (bool targets,
  running statistics on the device, the scheduled lr, the grad norm and the one host read on
  log steps, every 10 steps as in a run with ``log_every: 10``);

each on one fixed batch already on the device (``in-memory``: the model's ceiling) and on
batches decoded from the shards (``loader``: what training gets). Repetitions are interleaved
(rep 1 of every row, then rep 2, ...; the machine is shared) and rows report the median
steps/s with the min-max over repetitions.

* CPU (default without CUDA): the demo's model (I3D-R18, width 16, 1x7x7 stem, 8x96 clips,
  batch 16) on a small synthetic dataset generated on the fly (or ``--data``); plus the
  paper's 5x7x7 stem in-memory.
* GPU (``--mode gpu``): the paper's I3D-R50 (width 64) at 16x224, batch 8, bf16 autocast,
  channels_last_3d; the loader uses DALI when installed (``backend=auto``).

    python benchmarks/bench_train.py                  # CPU, a few minutes on 2 cores
    python benchmarks/bench_train.py --save           # update benchmarks/results/train_<mode>.{json,md}
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _machine import add_output_args, cpu_model, load_average, results_dir  # noqa: E402  (benchmarks/_machine.py)

MODES = {
    "cpu": dict(model=dict(depth=18, width=16, conv1_t=1), frames=8, stride=4, crop=96, batch=16, amp=None,
                channels_last=False, data=dict(num_videos=48, size=112, seconds=2.0), steps=6, warmup=2, reps=3),
    "gpu": dict(model=dict(depth=50, width=64), frames=16, stride=5, crop=224, batch=8, amp=torch.bfloat16,
                channels_last=True, data=dict(num_videos=256, size=256, seconds=3.0), steps=30, warmup=10, reps=3),
}
LOG_EVERY = 10


def machine() -> dict:
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "shared_machine": True}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    la = load_average()
    if la:
        info["load_avg_1m"] = la[0]
    return info


def batches(loader, fixed):
    """Endless batches: the fixed one, or the loader's epoch after epoch."""
    epoch = 0
    while True:
        if fixed is not None:
            yield fixed
            continue
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


class Row:
    """One (engine, source, model) combination: its model, optimiser, batch stream and step."""

    def __init__(self, engine, source, model_kw, p, data, crit, device, backend, workers, batch):
        from mmit_fast.data import Batch, ClipSpec, make_loader
        from mmit_fast.models import create_model
        from mmit_fast.train.schedule import Schedule
        from mmit_fast.train.step import RunningStats

        torch.manual_seed(0)
        self.engine, self.source, self.p, self.device = engine, source, p, device
        self.model = create_model("i3d", num_classes=crit.weights.numel(), **model_kw).to(device)
        if p["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        clip = ClipSpec(mode="consecutive", frames=p["frames"], stride=p["stride"], crop=p["crop"])
        self.loader = make_loader(data, "train", clip=clip, batch_size=batch, train=True, backend=backend,
                                  device=str(device), num_workers=workers, seed=0)
        fixed = None
        if source == "in-memory":
            b = next(iter(self.loader))
            fixed = Batch(b.video.to(device), None, b.has_audio, b.targets.to(device), b.keys)
        self.it = batches(self.loader, fixed)
        self.crit = crit
        self.ctx = (torch.autocast(device.type, dtype=p["amp"]) if p["amp"] is not None
                    else torch.autocast(device.type, enabled=False))
        self.run = SimpleNamespace(
            cfg=SimpleNamespace(skip_nonfinite=False, grad_clip=0.0), world=1, ddp=self.model, net=self.model,
            autocast=self.ctx, modality="video", criterion=crit, scaler=None, stats=RunningStats(device), step=0,
            params=[q for q in self.model.parameters() if q.requires_grad], optimizer=self.opt,
            schedule=Schedule(0.01, 0.0, "cosine", 0, 10 ** 6))
        self.label = (f"I3D-R{model_kw['depth']} w{model_kw['width']}"
                      + (f" stem {model_kw['conv1_t']}x7x7" if "conv1_t" in model_kw else ""))
        self.backend = getattr(self.loader, "backend", backend) if source == "loader" else "-"
        self.rates, self.clips = [], 0

    def step(self):
        b = next(self.it)
        if self.engine == "plain torch":
            v = b.video.contiguous(memory_format=torch.channels_last_3d) if self.p["channels_last"] else b.video
            with self.ctx:
                logits = self.model(v)
            loss = self.crit(logits.float(), b.targets.float())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        else:
            from mmit_fast.train.step import micro_step, optimizer_step

            log_now = (self.run.step + 1) % LOG_EVERY == 0
            micro_step(self.run, b, 1, True)
            out = optimizer_step(self.run, 1, log_now)
            if log_now:
                self.run.stats.read(reset_interval=True, grad_norm=out["grad_norm"])
        return int(b.targets.shape[0])

    def timed(self, steps, warmup):
        for _ in range(warmup):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0, clips = time.perf_counter(), 0
        for _ in range(steps):
            clips += self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.rates.append((steps / dt, clips / dt))


def run(mode, data, steps, warmup, reps, batch, device, backend, workers):
    from mmit_fast.losses import class_weights, get_loss
    from mmit_fast.shards import load_manifest

    p = MODES[mode]
    man = load_manifest(data)
    w = torch.as_tensor(np.asarray(class_weights(man.class_counts("train"), scheme="min_ratio")), dtype=torch.float32,
                        device=device)
    crit = get_loss("wlsep", weights=w)
    combos = [(e, s, p["model"]) for s in ("in-memory", "loader") for e in ("plain torch", "mmit step")]
    if mode == "cpu":  # the paper's 5x7x7 stem, whose weight gradient oneDNN computes slowly on CPU
        combos += [(e, "in-memory", dict(p["model"], conv1_t=5)) for e in ("plain torch", "mmit step")]
    rows = [Row(e, s, kw, p, data, crit, device, backend, workers, batch) for e, s, kw in combos]
    for r in range(reps):
        order = rows if r % 2 == 0 else rows[::-1]
        for row in order:
            row.timed(steps, warmup if r == 0 else 1)
        print(f"repetition {r + 1}/{reps} done", flush=True)
    out = []
    for row in rows:
        sps = np.array([a for a, _ in row.rates])
        cps = np.array([b for _, b in row.rates])
        out.append({"mode": mode, "engine": row.engine, "source": row.source, "backend": row.backend,
                    "model": row.label, "clip": f"{p['frames']}x{p['crop']}", "batch": batch, "steps": steps,
                    "reps": reps, "steps_per_s": float(np.median(sps)), "steps_per_s_min": float(sps.min()),
                    "steps_per_s_max": float(sps.max()), "clips_per_s": float(np.median(cps)),
                    "amp": "bf16" if p["amp"] is not None else "off"})
    return out


def write(outdir, mode, info, res, la_end):
    from mmit_fast._io import atomic_write_json, atomic_write_text

    atomic_write_json(os.path.join(outdir, f"train_{mode}.json"),
                      {"benchmark": "train", "machine": info, "load_avg_end": la_end, "results": res})
    where = info.get("gpu") or f"{info['cpu']} ({info['cores']} cores)"
    lines = [f"# Training throughput ({mode})", "",
             f"Machine: {where}; torch {info['torch']}; {info['threads']} CPU threads; shared with other work "
             f"(1-minute load average {info.get('load_avg_1m', float('nan')):.1f} at the start, "
             f"{la_end if la_end is not None else float('nan'):.1f} at the end). Repetitions interleaved; "
             "median steps/s (min-max).", "",
             "| model | clip | batch | amp | data | backend | engine | steps/s | clips/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res:
        lines.append(f"| {r['model']} | {r['clip']} | {r['batch']} | {r['amp']} | {r['source']} | {r['backend']} | "
                     f"{r['engine']} | {r['steps_per_s']:.3f} ({r['steps_per_s_min']:.3f}-{r['steps_per_s_max']:.3f}) | "
                     f"{r['clips_per_s']:.2f} |")
    atomic_write_text(os.path.join(outdir, f"train_{mode}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--data", help="packed dataset (default: generate a small synthetic one)")
    ap.add_argument("--steps", type=int, help="timed steps per row and repetition")
    ap.add_argument("--warmup", type=int, help="untimed steps before the first repetition")
    ap.add_argument("--reps", type=int, help="interleaved repetitions")
    ap.add_argument("--batch", type=int, help="clips per step")
    ap.add_argument("--backend", default="auto", help="loader backend: auto | dali | pyav")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: 1 on CPU, 8 on GPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    add_output_args(ap)
    a = ap.parse_args(argv)
    mode = a.mode if a.mode != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    if mode == "gpu" and not torch.cuda.is_available():
        print("--mode gpu: no CUDA device here; skipped", file=sys.stderr)
        return 0
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    if mode == "gpu":
        torch.backends.cudnn.benchmark = True
    p = MODES[mode]
    outdir = results_dir(a)
    info = machine()
    tmp, data = None, a.data
    if not data:
        from mmit_fast.pack.synth import generate_dataset

        tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
        data = tmp.name
        t = time.time()
        generate_dataset(data, workers=max(1, (os.cpu_count() or 2)), progress=False, **p["data"])
        print(f"generated {p['data']} in {time.time() - t:.0f}s", flush=True)
    res = run(mode, data, a.steps or p["steps"], a.warmup if a.warmup is not None else p["warmup"], a.reps or p["reps"],
              a.batch or p["batch"], device, a.backend, a.workers if a.workers is not None else (8 if mode == "gpu" else 1))
    la = load_average()
    write(outdir, mode, info, res, la[0] if la else None)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
