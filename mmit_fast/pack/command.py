"""The packing verbs: ``mmit synth``, ``mmit pack``, ``mmit inspect`` (flags and the call; the
work is in :mod:`mmit_fast.pack`)."""
from __future__ import annotations

import sys


def preset_names():
    from .presets import NAMES

    return NAMES


def add_synth(sub, help=None):
    p = sub.add_parser(
        "synth", help=help,
        description="Render Multi-Moving-Shapes: short videos where 1-4 actors each perform one of 20 visual "
                    "actions (and 4 auditory classes live in the audio track), with per-frame ground truth "
                    "(boxes, actor/object/colour/texture masks) in <key>.gt.npz. Written through the packer: "
                    "train/val/test shards + manifest.json. Deterministic from --seed. "
                    "Example: mmit synth data/synth (600 videos, 112 px, 2 s, about a minute on 2 cores).")
    p.add_argument("out", help="output dataset folder (manifest.json + shards)")
    p.add_argument("--num-videos", type=int, default=600, help="videos in all splits (default 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=112, help="frame side in pixels, square frames (default 112)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    p.add_argument("--preset", choices=preset_names(), default=None,
                   help="packing preset: frame rate + keyframe spacing matched to a model (README: Packing presets)")
    p.add_argument("--seconds", type=float, default=2.0, help="clip length in seconds (default 2)")
    p.add_argument("--codec", default="vp9", choices=["vp9", "h264", "mjpeg"], help="video codec (default vp9)")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes (default 2)")
    p.add_argument("--shard-samples", type=int, default=200, help="samples per shard (default 200)")
    p.add_argument("--splits", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)")
    p.add_argument("--tail", type=float, default=0.8, help="Zipf exponent of class frequencies, 0 = uniform (default 0.8)")
    p.add_argument("--label-dropout", type=float, default=0.0, help="probability of leaving a present action unlabelled (default 0)")
    p.add_argument("--no-audio-prob", type=float, default=0.3,
                   help="probability that a video without auditory action has no audio track (default 0.3)")
    p.add_argument("--distractors", type=int, default=0, help="max static actors without action per video (default 0)")
    p.add_argument("--layout", choices=["centre", "anywhere", "close"], default="centre",
                   help="where actors stand: centre (default; U(0.3, 0.7) of the frame), anywhere (uniform over "
                        "the frame, whole trajectory visible, actors of a clip apart: for localisation benchmarks) "
                        "or close (as anywhere, but the actors of a clip side by side, touching or overlapping in part)")
    p.add_argument("--broden", metavar="DIR", help="also export the test split in the Broden layout (for dissection) to DIR")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards in OUT")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args):
    from .synth import generate_dataset

    try:
        splits = tuple(float(x) for x in args.splits.split(","))
        man = generate_dataset(args.out, num_videos=args.num_videos, seed=args.seed, size=args.size, fps=args.fps,
                               seconds=args.seconds, codec=args.codec, workers=args.workers,
                               shard_samples=args.shard_samples, splits=splits, tail=args.tail,
                               label_dropout=args.label_dropout, no_audio_prob=args.no_audio_prob,
                               distractors=args.distractors, resume=args.resume, overwrite=args.overwrite,
                               broden=args.broden, preset=args.preset, layout=args.layout)
    except (ValueError, FileExistsError) as e:
        raise SystemExit(f"mmit synth: {e}") from None
    from ..storage import redact

    print(f"{redact(args.out)}: {man.num_classes} classes; " + ", ".join(
        f"{s} {man.splits[s]['samples']} videos" for s in man.splits))
    if args.broden:
        print(f"Broden export: {args.broden}")
    return 0


def add_pack(sub, help=None):
    p = sub.add_parser(
        "pack", help=help,
        description="Transcode the videos listed in an annotation file (M-MiT CSV rows path,label,label,... "
                    "or JSONL {\"path\":...,\"labels\":[...]}) to a fixed short side, frame rate and length, "
                    "and write WebDataset shards (<key>.mp4/.json/.ids/.flac + DALI .idx) and manifest.json. "
                    "Unreadable, empty or truncated inputs are rejected and listed in the manifest. "
                    "Example: mmit pack --videos videos/ --annotations trainingSet.csv --categories "
                    "moments_categories.txt --out data/mmit --split train --workers 8. "
                    "Several machines: run with --part i/N on each, then mmit pack --merge --out DIR.")
    p.add_argument("--videos", help="video root (annotation paths are relative to it)")
    p.add_argument("--annotations", help="annotation file: CSV (path,label,...) or JSONL")
    p.add_argument("--categories", help="categories file, one class name per line")
    p.add_argument("--out", required=True, help="output dataset folder, or its URL (s3://bucket/prefix, gs://...; "
                                                "shards are uploaded as they finish, the manifest last)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"], help="split these rows go to (default train)")
    p.add_argument("--codec", default="vp9", choices=["vp9", "h264", "mjpeg"],
                   help="video codec: vp9 (DALI CPU+GPU, default), h264 (DALI GPU only), mjpeg")
    p.add_argument("--short-side", type=int, default=None, help="short side in pixels (default 256, or the preset's)")
    p.add_argument("--preset", choices=preset_names(), default=None,
                   help="frame rate + keyframe spacing matched to a model: full (25 fps, the default), paper-i3d "
                        "(16 frames per clip, for uniform 16-frame I3D clips), tsm8 (8 frames per clip, for TSM); "
                        "paper-i3d-128, tsm8-128: the same at short side 128, the size 112-px crops are resized to; "
                        "full-bframes: full with non-reference B-frames (H.264), which the loader skips when unneeded")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default 25, or the preset's)")
    p.add_argument("--seconds", type=float, default=3.0, help="max clip length; shorter clips keep theirs (default 3)")
    p.add_argument("--gop", type=int, default=None, help="frames between keyframes (default fps/2, or the preset's)")
    p.add_argument("--crf", type=int, default=None, help="quality (vp9 default 32, h264 23; mjpeg q:v 3)")
    p.add_argument("--audio-format", default="flac", choices=["flac", "wav"], help="audio member format (default flac)")
    p.add_argument("--workers", type=int, default=2, help="parallel transcoding processes (default 2)")
    p.add_argument("--shard-samples", type=int, default=1000, help="max samples per shard (default 1000)")
    p.add_argument("--shard-mb", type=float, default=1024, help="max shard size in MB (default 1024)")
    p.add_argument("--drop-unknown", action="store_true", help="drop labels not in the vocabulary instead of failing")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (no sample lost or repeated)")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards of this split")
    p.add_argument("--part", metavar="i/N|auto",
                   help="pack only part i of N disjoint slices of the rows (cluster runs); auto: this Slurm array "
                        "task's (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT)")
    p.add_argument("--merge", action="store_true", help="merge the part manifests in --out into manifest.json and exit")
    p.set_defaults(func=cmd_pack)


def cmd_pack(args):
    from . import ShardWriteError, merge_parts, pack_videos, split_report
    from ..storage import redact

    if args.merge:
        try:
            man = merge_parts(args.out)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"mmit pack --merge: {e}") from None
        print(f"{redact(args.out)}/manifest.json: merged {man.source['merged_parts']} parts; " + ", ".join(
            f"{s} {st['samples']} samples" for s, st in man.splits.items()))
        return 0
    missing = [f for f in ("videos", "annotations", "categories") if not getattr(args, f)]
    if missing:
        raise SystemExit("mmit pack: needs " + ", ".join("--" + m for m in missing) + " (or --merge)")
    try:
        man = pack_videos(args.videos, args.annotations, args.categories, args.out, split=args.split,
                          codec=args.codec, short_side=args.short_side, fps=args.fps, seconds=args.seconds,
                          gop=args.gop, crf=args.crf, audio_format=args.audio_format, workers=args.workers,
                          shard_samples=args.shard_samples, shard_bytes=int(args.shard_mb * 2 ** 20),
                          resume=args.resume, overwrite=args.overwrite, part=args.part,
                          drop_unknown=args.drop_unknown, preset=args.preset)
    except ShardWriteError as e:  # disk full, file-size limit: one line naming the shard and the cause
        print(f"mmit pack: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError, FileNotFoundError) as e:  # bad input: the message names it
        print(f"mmit pack: {e}", file=sys.stderr)
        return 2
    lines, failure = split_report(man, args.split)
    print("\n".join(lines))
    if failure:
        print(f"mmit pack: {failure}", file=sys.stderr)
        return 1
    return 0


def add_inspect(sub, help=None):
    p = sub.add_parser(
        "inspect", help=help,
        description="Print each sample of a shard (key, labels, frames, size, audio) and validate it: DALI "
                    ".idx matches the tar, members present, labels consistent with the manifest, video and "
                    "audio decode in full with the declared frame/sample counts, every member matches the "
                    "digest recorded at packing. Given a dataset folder, "
                    "checks every shard of its manifest. Exit status 1 when anything is wrong. "
                    "Example: mmit inspect data/synth/train-000000.tar")
    p.add_argument("shard", nargs="+", help="shard .tar file(s), or a dataset folder")
    p.add_argument("--limit", type=int, default=None, help="print/check at most this many samples per shard")
    p.add_argument("--no-decode", action="store_true", help="skip decoding video/audio (structure and digest checks only)")
    p.add_argument("--fix-index", action="store_true",
                   help="rewrite a missing, stale or foreign .idx from the tar's own member list")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args):
    import os

    from . import inspect_shard
    from ..shards import load_manifest

    from ..storage import is_url, join

    paths = []
    for s in args.shard:
        if os.path.isdir(s) or (is_url(s) and not s.endswith(".tar")):   # a dataset folder (or its URL)
            man = load_manifest(s)
            paths.extend(join(man.root, i.path) for i in man.shards)
        else:
            paths.append(s)
    bad = 0
    for p in paths:
        rep = inspect_shard(p, decode=not args.no_decode, limit=args.limit, fix_index=args.fix_index)
        bad += len(rep["errors"])
        for e in rep["errors"]:
            print("ERROR", e)
    return 1 if bad else 0

