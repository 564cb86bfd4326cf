"""Training throughput: optimiser steps/s and clips/s, with the real loader vs in-memory tensors.

One process, one step = forward + wLSEP (min_ratio weights) + backward + SGD step.

* CPU (default without CUDA): the demo's model (I3D-R18, width 16, 1x7x7 stem, 8x96 clips,
  batch 16) on a small synthetic dataset generated on the fly (or ``--data``).
* GPU (default with CUDA, or ``--mode gpu``): the paper's I3D-R50 (width 64) at 16x224,
  batch 8 per GPU, bf16 autocast, channels_last_3d; the loader uses DALI when installed
  (``backend=auto``). The synthetic dataset is generated at 256 px unless ``--data`` is given.

"in-memory" feeds one fixed batch already on the device (the model's ceiling); "loader"
decodes every batch from the shards (what training gets). Results go to
``benchmarks/results/train_<mode>.json`` and ``.md`` with the machine named.

    python benchmarks/bench_train.py                  # CPU, ~2-4 minutes on 2 cores
    python benchmarks/bench_train.py --mode gpu       # on a CUDA machine
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

MODES = {
    "cpu": dict(model=dict(depth=18, width=16, conv1_t=1), frames=8, stride=4, crop=96, batch=16, amp=None,
                channels_last=False, data=dict(num_videos=48, size=112, seconds=2.0), steps=8, warmup=2),
    "gpu": dict(model=dict(depth=50, width=64), frames=16, stride=5, crop=224, batch=8, amp=torch.bfloat16,
                channels_last=True, data=dict(num_videos=256, size=256, seconds=3.0), steps=50, warmup=10),
}


from _machine import cpu_model  # noqa: E402  (benchmarks/_machine.py)

def machine() -> dict:
    cpu = cpu_model()
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def run(mode: str, data: str, steps: int, warmup: int, batch: int, device: torch.device, backend: str,
        workers: int) -> list:
    from mmit_fast.data import ClipSpec, make_loader
    from mmit_fast.losses import class_weights, get_loss
    from mmit_fast.models import create_model
    from mmit_fast.shards import load_manifest

    p = MODES[mode]
    man = load_manifest(data)
    C = man.num_classes
    w = torch.as_tensor(np.asarray(class_weights(man.class_counts("train"), scheme="min_ratio")), dtype=torch.float32,
                        device=device)
    crit = get_loss("wlsep", weights=w)
    clip = ClipSpec(mode="consecutive", frames=p["frames"], stride=p["stride"], crop=p["crop"])
    results = []
    variants = [("in-memory", p["model"]), ("loader", p["model"])]
    if mode == "cpu":  # the paper's 5x7x7 stem, whose weight gradient oneDNN computes slowly on CPU
        variants.append(("in-memory", dict(p["model"], conv1_t=5)))
    for source, model_kw in variants:
        torch.manual_seed(0)
        model = create_model("i3d", num_classes=C, **model_kw).to(device)
        if p["channels_last"]:
            model = model.to(memory_format=torch.channels_last_3d)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        loader = make_loader(data, "train", clip=clip, batch_size=batch, train=True, backend=backend,
                             device=str(device), num_workers=workers, seed=0)
        fixed = None
        if source == "in-memory":
            b = next(iter(loader))
            fixed = (b.video.to(device), b.targets.to(device))

        def batches():
            epoch = 0
            while True:
                if fixed is not None:
                    yield fixed
                    continue
                loader.set_epoch(epoch)
                for b in loader:
                    yield b.video, b.targets
                epoch += 1

        ctx = torch.autocast(device.type, dtype=p["amp"]) if p["amp"] is not None else torch.autocast(device.type, enabled=False)
        it = batches()
        clips = 0
        t0 = None
        for i in range(warmup + steps):
            if i == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0, clips = time.perf_counter(), 0
            v, y = next(it)
            if p["channels_last"]:
                v = v.contiguous(memory_format=torch.channels_last_3d)
            with ctx:
                logits = model(v)
            loss = crit(logits.float(), y.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            clips += v.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        r = {"mode": mode, "source": source, "backend": getattr(loader, "backend", backend) if source == "loader" else "-",
             "model": f"I3D-R{p['model']['depth']} w{p['model']['width']}"
                      + (f" stem {model_kw['conv1_t']}x7x7" if "conv1_t" in model_kw else ""), "clip": f"{p['frames']}x{p['crop']}",
             "batch": batch, "steps": steps, "seconds": dt, "steps_per_s": steps / dt, "clips_per_s": clips / dt,
             "amp": "bf16" if p["amp"] is not None else "off", "final_loss": loss.item()}
        if device.type == "cuda":
            r["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        print(f"{r['model']} {r['clip']} batch {batch} {source:9s} ({r['backend']}): {r['steps_per_s']:.3f} steps/s, "
              f"{r['clips_per_s']:.2f} clips/s", flush=True)
        results.append(r)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--data", help="packed dataset (default: generate a small synthetic one)")
    ap.add_argument("--steps", type=int, help="timed steps per source")
    ap.add_argument("--warmup", type=int, help="untimed steps first")
    ap.add_argument("--batch", type=int, help="clips per step")
    ap.add_argument("--backend", default="auto", help="loader backend: auto | dali | pyav")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: 1 on CPU, 8 on GPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args(argv)
    mode = a.mode if a.mode != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    if mode == "gpu" and not torch.cuda.is_available():
        sys.exit("--mode gpu needs a CUDA device")
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    if mode == "gpu":
        torch.backends.cudnn.benchmark = True
    p = MODES[mode]
    tmp = None
    data = a.data
    if not data:
        from mmit_fast.pack.synth import generate_dataset

        tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
        data = tmp.name
        t = time.time()
        generate_dataset(data, workers=max(1, (os.cpu_count() or 2)), progress=False, **p["data"])
        print(f"generated {p['data']} in {time.time() - t:.0f}s", flush=True)
    res = run(mode, data, a.steps or p["steps"], a.warmup if a.warmup is not None else p["warmup"], a.batch or p["batch"],
              device, a.backend, a.workers if a.workers is not None else (8 if mode == "gpu" else 1))
    info = machine()
    os.makedirs(a.out, exist_ok=True)
    doc = {"benchmark": "train", "machine": info, "results": res}
    from mmit_fast._io import atomic_write_json, atomic_write_text

    atomic_write_json(os.path.join(a.out, f"train_{mode}.json"), doc)
    where = info.get("gpu") or f"{info['cpu']} ({info['cores']} cores)"
    lines = [f"# Training throughput ({mode})", "",
             f"Machine: {where}; torch {info['torch']}; {info['threads']} CPU threads"
             + (f"; 1-minute load average {info['load_avg_1m']:.1f}" if "load_avg_1m" in info else "") + ".", "",
             "| model | clip | batch | amp | data | backend | steps/s | clips/s |", "|---|---|---|---|---|---|---|---|"]
    for r in res:
        lines.append(f"| {r['model']} | {r['clip']} | {r['batch']} | {r['amp']} | {r['source']} | {r['backend']} | "
                     f"{r['steps_per_s']:.3f} | {r['clips_per_s']:.2f} |")
    atomic_write_text(os.path.join(a.out, f"train_{mode}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
