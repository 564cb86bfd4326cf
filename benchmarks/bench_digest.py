"""What checking member digests costs the loader (issue 8).

Every member the loader reads is checked against the CRC-32 recorded at packing
(``zlib.crc32``) before it is decoded. This measures, on shards packed by ``mmit pack``
(16 source clips of 3 s, 640x360 with film-grain noise so the bitrate is realistic, packed
at short side 256, 25 fps, VP9 and H.264):

* ``crc32``: hashing throughput over the members (MB/s);
* ``verify``: CPU time per sample of the loader's whole check (:mod:`mmit_fast.data.verify`:
  the metadata's canonical-JSON digest, the key, CRC-32 of ``.ids``, ``.mp4`` and the audio);
* ``decode``: CPU time of ``decode_clip`` of one evaluation clip per sample (I3D: 16 frames
  spread over the clip, 112 crop; PyAV), the work the digest is compared with;
* ``loader``: whole epochs of ``make_loader(backend="pyav", num_workers=0)`` with
  ``verify_digests=True`` and ``False``, interleaved repetition by repetition; clips/s and
  CPU-ms per clip (``time.process_time``: all work runs in this process, so CPU time is less
  disturbed by other load on a shared machine than wall time), medians with min-max. The
  digest cost is the CPU time per clip with digests over that without, minus 1.

    python benchmarks/bench_digest.py            # ~3 min on 2 busy cores
    python benchmarks/bench_digest.py --save     # into benchmarks/results/

Writes ``digest_<machine>.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from mmit_fast import shards as S  # noqa: E402
from mmit_fast.data import ClipSpec, make_loader  # noqa: E402
from mmit_fast.data import verify  # noqa: E402
from mmit_fast.data.index import SampleRef  # noqa: E402
from mmit_fast.data.pyav import decode_clip  # noqa: E402
from mmit_fast.data.sampling import plan_views  # noqa: E402
from mmit_fast.pack import ffmpeg_exe, pack_videos  # noqa: E402

from _machine import add_output_args, cpu_model, load_average, results_dir  # noqa: E402

CLIP = ClipSpec("uniform", frames=16, crop=112)


def make_dataset(root: str, codec: str, n: int) -> str:
    src = os.path.join(root, "src")
    os.makedirs(src, exist_ok=True)
    rows = []
    for i in range(n):
        path = os.path.join(src, f"v{i:02d}.mp4")
        if not os.path.exists(path):
            subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                            f"testsrc2=size=640x360:rate=30:duration=3", "-vf",
                            f"hue=h={i * 23},noise=alls=12:allf=t", "-c:v", "libx264", "-preset", "ultrafast",
                            "-crf", "18", "-pix_fmt", "yuv420p", path], check=True)
        rows.append(f"v{i:02d}.mp4,c{i % 4}")
    with open(os.path.join(src, "ann.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    with open(os.path.join(src, "cats.txt"), "w") as f:
        f.write("c0\nc1\nc2\nc3\n")
    out = os.path.join(root, codec)
    if not os.path.exists(os.path.join(out, "manifest.json")):
        pack_videos(src, os.path.join(src, "ann.csv"), os.path.join(src, "cats.txt"), out, codec=codec,
                    short_side=256, seconds=3.0, workers=2, progress=False)
    return out


def per_clip(ds: str, reps: int):
    """Median seconds per clip of crc32 over its members and of decoding its clip."""
    man = S.load_manifest(ds)
    samples = []
    for tar in man.shard_paths("train"):
        with tarfile.open(tar) as tf:
            cur = {}
            for ti in tf:
                key, ext = ti.name.split(".", 1)
                cur.setdefault(key, {})[ext] = tf.extractfile(ti).read()
            samples += list(cur.values())
    crc, ver, dec, nbytes = [], [], [], []
    clock = time.process_time
    for _ in range(reps):
        for i, mem in enumerate(samples):
            meta = json.loads(mem["json"])
            t = clock()
            for ext, data in mem.items():
                if ext != "json":
                    zlib.crc32(data)
            crc.append(clock() - t)
            nbytes.append(sum(len(v) for e, v in mem.items() if e != "json"))
            ref = SampleRef(0, meta["key"], {e: (0, len(v)) for e, v in mem.items()})
            t = clock()
            meta = S.parse_sample_meta(mem["json"])
            digests = verify.sample_digests("require", meta, ref, "bench")
            for ext in [e for e in mem if e != "json"]:
                verify.check_member(digests, ext, mem[ext], "bench")
            verify.label_ids(meta, mem["ids"], "bench")
            ver.append(clock() - t)
            plans = plan_views(meta["frames"], meta["height"], meta["width"], meta["fps"], CLIP, train=False,
                               seed=0, epoch=0, sample=i, views=1)
            t = clock()
            decode_clip(mem["mp4"], plans, meta["frames"])
            dec.append(clock() - t)
    return {"crc32_s_per_clip": float(np.median(crc)), "verify_s_per_clip": float(np.median(ver)),
            "decode_s_per_clip": float(np.median(dec)), "bytes_per_clip": float(np.median(nbytes)),
            "crc32_MB_per_s": float(np.sum(nbytes) / np.sum(crc) / 1e6)}


def loader_epochs(ds: str, reps: int):
    """clips/s and CPU-ms per clip of whole epochs with digests checked and not, interleaved."""
    rates, cpu = {True: [], False: []}, {True: [], False: []}
    for r in range(reps):
        for verify in ((True, False) if r % 2 == 0 else (False, True)):
            ld = make_loader(ds, "train", clip=CLIP, batch_size=8, train=False, backend="pyav", num_workers=0,
                             verify_digests=verify)
            t, c = time.perf_counter(), time.process_time()
            n = sum(len(b.keys) for b in ld)
            rates[verify].append(n / (time.perf_counter() - t))
            cpu[verify].append(1e3 * (time.process_time() - c) / n)
    return {"on": rates[True], "off": rates[False], "cpu_ms_on": cpu[True], "cpu_ms_off": cpu[False]}


def _mm(v):
    return f"{np.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--reps", type=int, default=7, help="loader epochs per setting (interleaved)")
    add_output_args(ap)
    args = ap.parse_args()
    out = results_dir(args)
    work = os.path.join(HERE, "results", "tmp", "digest_data")
    load0 = load_average()
    rows = {}
    for codec in ("vp9", "h264"):
        ds = make_dataset(work, codec, args.clips)
        rows[codec] = dict(per_clip(ds, reps=3), loader=loader_epochs(ds, args.reps))
        lo = rows[codec]["loader"]
        rows[codec]["cost_pct"] = float(100 * (np.median(lo["cpu_ms_on"]) / np.median(lo["cpu_ms_off"]) - 1))
        rows[codec]["wall_cost_pct"] = float(100 * (1 - np.median(lo["on"]) / np.median(lo["off"])))
        rows[codec]["verify_over_decode_pct"] = 100 * rows[codec]["verify_s_per_clip"] / rows[codec]["decode_s_per_clip"]
        rows[codec]["verify_over_loader_pct"] = (100 * 1e3 * rows[codec]["verify_s_per_clip"]
                                                 / np.median(lo["cpu_ms_off"]))
        print(codec, json.dumps(rows[codec]), flush=True)
    res = {"machine": cpu_model(), "cpus": os.cpu_count(), "load_average_start": load0,
           "load_average_end": load_average(), "shared_machine": True, "clip": str(CLIP), "rows": rows}
    tag = f"digest_{'_'.join(cpu_model().split()[:2]) or 'cpu'}_{os.cpu_count()}c"
    with open(os.path.join(out, tag + ".json"), "w") as f:
        json.dump(res, f, indent=2)
    lines = [f"# Member digest cost ({cpu_model()}, {os.cpu_count()} cores, shared; load average "
             f"{load0[0]:.1f} -> {load_average()[0]:.1f})", "",
             f"Clip: {CLIP}; shards from `mmit pack` (3 s, short side 256, 25 fps). Loader: PyAV, 0 workers, "
             f"{args.reps} interleaved epochs of {args.clips} clips per setting, median (min-max).", "",
             "CPU times (`time.process_time`). verify = the loader's whole check of one sample; decode = one "
             "clip's decode; loader = whole epochs, CPU-ms per clip with digests checked (on) and not (off), "
             "and wall clips/s.", "",
             "| codec | bytes/clip | crc32 MB/s | verify ms/clip | decode ms/clip | verify/decode | verify/loader "
             "| loader CPU-ms/clip on | off | on/off - 1 | loader clips/s on | off |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for codec, r in rows.items():
        lines.append(f"| {codec} | {r['bytes_per_clip'] / 1e3:.0f} kB | {r['crc32_MB_per_s']:.0f} | "
                     f"{1e3 * r['verify_s_per_clip']:.3f} | {1e3 * r['decode_s_per_clip']:.1f} | "
                     f"{r['verify_over_decode_pct']:.2f}% | {r['verify_over_loader_pct']:.2f}% | "
                     f"{_mm(r['loader']['cpu_ms_on'])} | "
                     f"{_mm(r['loader']['cpu_ms_off'])} | {r['cost_pct']:+.1f}% | {_mm(r['loader']['on'])} | "
                     f"{_mm(r['loader']['off'])} |")
    with open(os.path.join(out, tag + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
