"""``mmit``: the command line. A thin layer: each verb parses its flags, calls one
function of a module, and prints. No logic lives here.

Each verb is two small functions, ``_add_<verb>(sub)`` (its flags) and
``_cmd_<verb>(args)`` (the call), registered in ``VERBS``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List, Optional, Tuple

from ._version import __version__


def _todo(verb: str):
    def run(args):  # pragma: no cover - replaced as each capability lands
        raise SystemExit(f"mmit {verb}: not implemented yet")

    return run


# --------------------------------------------------------------------------- synth
def _add_synth(sub):
    p = sub.add_parser(
        "synth", help="generate the Multi-Moving-Shapes synthetic dataset and pack it into shards",
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
    p.add_argument("--broden", metavar="DIR", help="also export the test split in the Broden layout (for dissection) to DIR")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards in OUT")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args):
    from .pack.synth import generate_dataset

    try:
        splits = tuple(float(x) for x in args.splits.split(","))
        man = generate_dataset(args.out, num_videos=args.num_videos, seed=args.seed, size=args.size, fps=args.fps,
                               seconds=args.seconds, codec=args.codec, workers=args.workers,
                               shard_samples=args.shard_samples, splits=splits, tail=args.tail,
                               label_dropout=args.label_dropout, no_audio_prob=args.no_audio_prob,
                               distractors=args.distractors, resume=args.resume, overwrite=args.overwrite,
                               broden=args.broden)
    except (ValueError, FileExistsError) as e:
        raise SystemExit(f"mmit synth: {e}") from None
    print(f"{args.out}: {man.num_classes} classes; " + ", ".join(
        f"{s} {man.splits[s]['samples']} videos" for s in man.splits))
    if args.broden:
        print(f"Broden export: {args.broden}")
    return 0


# --------------------------------------------------------------------------- pack
def _add_pack(sub):
    p = sub.add_parser(
        "pack", help="transcode videos + annotations into WebDataset shards",
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
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--split", default="train", choices=["train", "val", "test"], help="split these rows go to (default train)")
    p.add_argument("--codec", default="vp9", choices=["vp9", "h264", "mjpeg"],
                   help="video codec: vp9 (DALI CPU+GPU, default), h264 (DALI GPU only), mjpeg")
    p.add_argument("--short-side", type=int, default=256, help="short side in pixels (default 256)")
    p.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    p.add_argument("--seconds", type=float, default=3.0, help="max clip length; shorter clips keep theirs (default 3)")
    p.add_argument("--gop", type=int, default=None, help="frames between keyframes (default fps/2)")
    p.add_argument("--crf", type=int, default=None, help="quality (vp9 default 32, h264 23; mjpeg q:v 3)")
    p.add_argument("--audio-format", default="flac", choices=["flac", "wav"], help="audio member format (default flac)")
    p.add_argument("--workers", type=int, default=2, help="parallel transcoding processes (default 2)")
    p.add_argument("--shard-samples", type=int, default=1000, help="max samples per shard (default 1000)")
    p.add_argument("--shard-mb", type=float, default=1024, help="max shard size in MB (default 1024)")
    p.add_argument("--drop-unknown", action="store_true", help="drop labels not in the vocabulary instead of failing")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (no sample lost or repeated)")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards of this split")
    p.add_argument("--part", metavar="i/N", help="pack only part i of N disjoint slices of the rows (cluster runs)")
    p.add_argument("--merge", action="store_true", help="merge the part manifests in --out into manifest.json and exit")
    p.set_defaults(func=_cmd_pack)


def _cmd_pack(args):
    from .pack import merge_parts, pack_videos

    if args.merge:
        try:
            man = merge_parts(args.out)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"mmit pack --merge: {e}") from None
        print(f"{args.out}/manifest.json: merged {man.source['merged_parts']} parts; " + ", ".join(
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
                          drop_unknown=args.drop_unknown)
    except (ValueError, FileExistsError, FileNotFoundError) as e:  # bad input: the message names it
        raise SystemExit(f"mmit pack: {e}") from None
    st = man.splits[args.split]
    rej = [r for r in man.rejected if r.get("split") == args.split]
    print(f"{args.out}: {args.split} {st['samples']} samples in "
          f"{sum(1 for s in man.shards if s.split == args.split)} shards, {len(rej)} rejected")
    for r in rej[:20]:
        print(f"  rejected {r['source']}: {r['reason']}")
    if len(rej) > 20:
        print(f"  ... {len(rej) - 20} more in the manifest")
    return 0


# --------------------------------------------------------------------------- inspect
def _add_inspect(sub):
    p = sub.add_parser(
        "inspect", help="print the samples of a shard and validate it",
        description="Print each sample of a shard (key, labels, frames, size, audio) and validate it: DALI "
                    ".idx matches the tar, members present, labels consistent with the manifest, video and "
                    "audio decode in full with the declared frame/sample counts. Given a dataset folder, "
                    "checks every shard of its manifest. Exit status 1 when anything is wrong. "
                    "Example: mmit inspect data/synth/train-000000.tar")
    p.add_argument("shard", nargs="+", help="shard .tar file(s), or a dataset folder")
    p.add_argument("--limit", type=int, default=None, help="print/check at most this many samples per shard")
    p.add_argument("--no-decode", action="store_true", help="skip decoding video/audio (structure checks only)")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args):
    import os

    from .pack import inspect_shard
    from .shards import load_manifest

    paths = []
    for s in args.shard:
        if os.path.isdir(s):
            man = load_manifest(s)
            paths.extend(os.path.join(man.root, i.path) for i in man.shards)
        else:
            paths.append(s)
    bad = 0
    for p in paths:
        rep = inspect_shard(p, decode=not args.no_decode, limit=args.limit)
        bad += len(rep["errors"])
        for e in rep["errors"]:
            print("ERROR", e)
    return 1 if bad else 0


# --------------------------------------------------------------------------- train
def _add_train(sub):
    from .config import add_config_args

    p = sub.add_parser(
        "train", help="train a model on packed shards (one process; use torchrun -m mmit_fast.train for several)",
        description="Train a model on packed shards: one process here, or one per device with "
                    "`torchrun --nproc_per_node=N -m mmit_fast.train ...` (same flags). Config precedence: "
                    "defaults < --config YAML < --set key=value < flags. Example: mmit train --config "
                    "configs/demo_cpu.yaml --data runs/demo/data --out runs/mine --epochs 3. Outputs in --out: "
                    "checkpoints/{last,best}.pt, metrics.csv, val_metrics.csv, tb/, summary.json. "
                    "Resume after a kill with --resume auto.")
    add_config_args(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .train import run_cli

    return run_cli(args)


# --------------------------------------------------------------------------- finetune
def _add_finetune(sub):
    from .config import add_config_args

    p = sub.add_parser(
        "finetune", help="load a trained backbone, replace the classifier, train on another dataset",
        description="Transfer (the paper's Table 4): build the model of --from CHECKPOINT, load its weights, "
                    "replace the classifier with one for the vocabulary of --data, and train (all layers, or "
                    "only the classifier with --freeze-backbone). Starts from the source run's settings (clips, "
                    "loss, optimiser); every `mmit train` flag overrides them. Example: "
                    "mmit finetune --from runs/demo/train/checkpoints/best.pt --data data/other --out runs/ft "
                    "--epochs 3 --lr 0.01")
    p.add_argument("--from", dest="finetune_from", required=True, metavar="CHECKPOINT",
                   help="checkpoint of the trained model (e.g. runs/demo/train/checkpoints/best.pt)")
    add_config_args(p, skip=("init_from",))
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .train import finetune_base_config, run_cli

    args.init_from = args.finetune_from
    try:
        base = finetune_base_config(args.finetune_from)  # flags override the source run's settings
    except (OSError, ValueError) as e:
        print(f"mmit finetune: {e}", file=sys.stderr)
        return 4
    return run_cli(args, base=base)


# --------------------------------------------------------------------------- eval
def _add_eval(sub):
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint: top-1, top-5, micro/macro mAP",
        description="Evaluate a checkpoint on packed shards (centre clip, or --views V crops per video with "
                    "averaged scores); writes <split>_metrics.json, <split>_per_class_ap.csv, <split>_table.md "
                    "(a Table 1-style row) and <split>_scores.npz. Runs under torchrun too. Example: "
                    "mmit eval runs/demo/train/checkpoints/best.pt --split val --split test")
    p.add_argument("checkpoint", help="checkpoint file written by mmit train (checkpoints/best.pt or last.pt)")
    p.add_argument("--data", help="packed dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", action="append", default=None, help="split to evaluate, repeatable (default: val)")
    p.add_argument("--views", type=int, default=1, help="temporal x spatial views per video, scores averaged (default: 1 = centre clip)")
    p.add_argument("--classes", metavar="FILE", help="evaluate on this class subset only (one class name per line; Table 2)")
    p.add_argument("--single-label", action="store_true", help="single-label ground truth (Table 2)")
    p.add_argument("--out", help="output folder (default: <run>/eval next to the checkpoints folder)")
    p.add_argument("--batch-size", type=int, help="clips per batch (default: the training batch size)")
    p.add_argument("--num-workers", type=int, help="loader workers (default: the training setting)")
    p.add_argument("--backend", help="loader backend: auto | dali | pyav (default: the training setting)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--no-chance", action="store_true", help="do not compute the chance level (random scores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .evaluate import evaluate_checkpoint, format_report

    for split in args.split or ["val"]:
        m = evaluate_checkpoint(args.checkpoint, args.data, split, views=args.views, classes_file=args.classes,
                                single_label=args.single_label, out=args.out, batch_size=args.batch_size,
                                num_workers=args.num_workers, backend=args.backend, device=args.device,
                                progress=not args.no_progress, chance=not args.no_chance)
        if m is not None:
            print(format_report(m, m["tag"]))
    return 0


# --------------------------------------------------------------------------- demo
def _add_demo(sub):
    p = sub.add_parser(
        "demo", help="the main job end to end on the synthetic dataset: synth, pack, train, evaluate",
        description="Generate and pack the synthetic Multi-Moving-Shapes dataset, train a small I3D with wLSEP "
                    "(CPU; GPU where present, one process per GPU under torchrun), evaluate on val and test, and "
                    "print the Table 1-style rows next to the chance level. About 4 minutes on an idle 2-core CPU "
                    "(7 on a busy one); --quick takes under 1 minute.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke run (fewer videos, fewer steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dataset and the training run (default: 0)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the demo config's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--nproc", type=int, help="training processes (default: the number of GPUs, 1 on CPU)")
    p.add_argument("--regenerate", action="store_true", help="regenerate the dataset even if out/data exists")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training config key (repeatable), e.g. --set lr=0.2")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .demo import run_demo

    run_demo(out=args.out, quick=args.quick, seed=args.seed, epochs=args.epochs, device=args.device,
             nproc=args.nproc, regenerate=args.regenerate, sets=args.sets, progress=not args.no_progress)
    return 0


VERBS: List[Callable] = [_add_synth, _add_pack, _add_inspect, _add_train, _add_finetune, _add_eval, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmit",
        description="mmit-fast: multi-label video action recognition (Multi-Moments in Time) at scale.",
    )
    parser.add_argument("--version", action="version", version=f"mmit-fast {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:
        # bad input (a missing file, a malformed manifest/shard/config, a bad flag value):
        # the message names the file or sample; MMIT_DEBUG=1 shows the traceback too
        if os.environ.get("MMIT_DEBUG"):
            raise
        print(f"mmit {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
