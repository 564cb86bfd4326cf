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


def _preset_names():
    from .pack.presets import NAMES

    return NAMES


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
    p.add_argument("--preset", choices=_preset_names(), default=None,
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
                               broden=args.broden, preset=args.preset)
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
    p.add_argument("--short-side", type=int, default=None, help="short side in pixels (default 256, or the preset's)")
    p.add_argument("--preset", choices=_preset_names(), default=None,
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
    p.set_defaults(func=_cmd_pack)


def _cmd_pack(args):
    from .pack import ShardWriteError, merge_parts, pack_videos, split_report

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


# --------------------------------------------------------------------------- inspect
def _add_inspect(sub):
    p = sub.add_parser(
        "inspect", help="print the samples of a shard and validate it",
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
        rep = inspect_shard(p, decode=not args.no_decode, limit=args.limit, fix_index=args.fix_index)
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
                    "Resume after a kill with --resume auto (a changed config is refused unless named in "
                    "--resume-allow KEY,...). Exit codes: 0 done, 2 bad input (config, data, checkpoint, refused "
                    "resume), 1 failure (e.g. a non-finite loss).")
    add_config_args(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .train import run_cli

    return run_cli(args)  # errors reach main(): 2 bad config/checkpoint/resume, 1 e.g. a non-finite loss


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
    base = finetune_base_config(args.finetune_from)  # flags override the source run's settings
    return run_cli(args, base=base)


# --------------------------------------------------------------------------- eval
def _add_eval(sub):
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint: top-1, top-5, micro/macro mAP",
        description="Evaluate a checkpoint on packed shards (centre clip, or --views V crops per video with "
                    "averaged scores); writes <split>_metrics.json, <split>_per_class_ap.csv, <split>_table.md "
                    "(a Table 1-style row) and <split>_scores.npz. Runs under torchrun too. Example: "
                    "mmit eval runs/demo/train/checkpoints/best.pt --split val --split test")
    p.add_argument("checkpoint", help="mmit checkpoint: written by mmit train (checkpoints/best.pt or last.pt) or "
                                      "mmit import-weights; read as data only (weights_only)")
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
        "demo", help="the main job end to end on the synthetic dataset: synth, pack, train, evaluate, explain, report",
        description="Generate and pack the synthetic Multi-Moving-Shapes dataset, train a small I3D with wLSEP "
                    "(CPU; GPU where present, one process per GPU under torchrun), evaluate on val and test, "
                    "print the Table 1-style rows next to the chance level, draw mCAM pictures of validation clips, "
                    "dissect the model on Broden-layout test frames and write OUT/report.html. About 420 "
                    "CPU-seconds: ~4 minutes on 2 idle cores, much longer on a busy machine.")
    p.add_argument("--out", default=None, help="output folder (default: runs/demo; with --quick: runs/demo-quick)")
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke run (fewer videos, fewer steps) in its own folder")
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


# --------------------------------------------------------------------------- report
def _add_report(sub):
    p = sub.add_parser(
        "report", help="one self-contained HTML page gathering a run: config, curves, results, mCAM, dissection",
        description="Write RUN_DIR/report.html: the configuration, training and validation curves, the Table 1 "
                    "rows next to chance, per-class AP (sorted, with class frequencies), the worst-confused "
                    "classes, and the mCAM gallery and dissection summary when present. Pictures are embedded, "
                    "so the file opens from disk. RUN_DIR is a training run (mmit train --out) or a demo "
                    "folder (runs/demo). Example: mmit report runs/demo")
    p.add_argument("run_dir", help="training run folder, or a folder with the run in train/ (e.g. runs/demo)")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--split", help="evaluation whose per-class AP and confusions are shown (default: val, else the first)")
    p.add_argument("--gallery", type=int, default=4, help="mCAM clips shown on the page (default: 4)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args):
    from .report import build_report

    print(build_report(args.run_dir, args.out, split=args.split, gallery=args.gallery))
    return 0


# --------------------------------------------------------------------------- import-weights
def _add_import_weights(sub):
    from .models.importers import FORMATS

    p = sub.add_parser(
        "import-weights", help="turn a released model (Moments / Multi-Moments in Time, torchvision) into an mmit checkpoint",
        description="Read a released model file (tensors only, never executed; nothing is downloaded) and write an "
                    "mmit checkpoint with its vocabulary and preprocessing (16 frames, 224 crop, ImageNet mean/std) "
                    "that eval, finetune, predict, cam, dissect and export accept. Formats: "
                    + "; ".join(f"{k}: {v.what}" for k, v in FORMATS.items()) + ". Example: mmit import-weights "
                    "multi_moments_v2_RGB_imagenet_resnet3d50_segment16.pth.tar --format moments-resnet3d50 "
                    "--categories category_multi_momentsv2.txt --out models/mmit_resnet3d50.pt")
    p.add_argument("src", help="the released weights file (.pth.tar / .pth)")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="layout of SRC")
    p.add_argument("--categories", required=True, metavar="FILE",
                   help="class names, one per line, in the order of the model's outputs")
    p.add_argument("--out", required=True, metavar="CKPT", help="mmit checkpoint to write")
    p.set_defaults(func=_cmd_import_weights)


def _cmd_import_weights(args):
    from .models.importers import import_weights

    ck = import_weights(args.src, args.format, args.categories, args.out)
    spec = ck["model_spec"]
    print(f"{args.out}: {spec['name']} depth {spec['kwargs']['depth']} width {spec['kwargs']['width']}, "
          f"{spec['num_classes']} classes, from {args.src} ({args.format})")
    return 0


# --------------------------------------------------------------------------- export
def _add_export(sub):
    p = sub.add_parser(
        "export", help="export a checkpoint's clip classifier to ONNX or TorchScript, checked against its runtime",
        description="Export the model of an mmit checkpoint (input video [B,3,T,H,W], output logits [B,C]) and write "
                    "FILE.json next to it with the input shape, preprocessing and class names. The exported file is "
                    "run by its own runtime (onnxruntime CPU / torch.jit.load) on random clips and must match PyTorch "
                    "to 1e-4 relative, else nothing is written. Example: mmit export models/mmit_resnet3d50.pt "
                    "--format onnx --out models/resnet3d50.onnx")
    p.add_argument("checkpoint", help="mmit checkpoint (from mmit train or mmit import-weights)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="output format")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (plus FILE.json)")
    p.add_argument("--batch", type=int, default=None, help="fixed batch size (default: dynamic batch)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the checkpoint's)")
    p.add_argument("--crop", type=int, default=None, help="frame side in pixels (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-check", action="store_true", help="skip running the exported file against PyTorch")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args):
    from .export import export_checkpoint, sidecar_path

    side = export_checkpoint(args.checkpoint, args.format, args.out, batch=args.batch, frames=args.frames,
                             crop=args.crop, check=not args.no_check, opset=args.opset)
    chk = side["check"]
    note = (f"matches PyTorch ({chk['runtime']}, max rel diff {chk['max_rel_diff']:.2g} <= {chk['tolerance']:g})"
            if isinstance(chk, dict) else "not checked")
    print(f"{args.out}: input {side['input']['shape']}, {len(side['classes'])} classes, {note}; "
          f"preprocessing in {sidecar_path(args.out)}")
    return 0


# --------------------------------------------------------------------------- interpretation (cam, predict, dissect)
def _add_cam(sub):
    p = sub.add_parser(
        "cam", help="multi-label class activation maps (mCAM) of a checkpoint: PNG/GIF per clip + HTML gallery",
        description="mCAM (paper section 5.1): per-class CAMs of the detected classes, separated, owned pixel-wise "
                    "and smoothed; one PNG (strip of frames) and GIF per clip and OUT/index.html. SOURCE: a video "
                    "file, a .tar shard, a dataset folder (its val split) or FOLDER:SPLIT. Example: mmit cam "
                    "runs/demo/data:test --checkpoint runs/demo/train/checkpoints/best.pt --out runs/demo/cam --limit 8")
    p.add_argument("source", help="video file, shard (.tar), dataset folder, or FOLDER:SPLIT")
    p.add_argument("--checkpoint", required=True, help="mmit checkpoint (.pt)")
    p.add_argument("--out", default="runs/cam", help="output folder (default runs/cam)")
    p.add_argument("--top-k", type=int, default=3, help="classes per clip (default 3)")
    p.add_argument("--threshold", type=float, help="only classes with score >= this (at most --top-k)")
    p.add_argument("--limit", type=int, help="at most this many clips")
    p.add_argument("--time-average", action="store_true", help="one time-averaged map per clip instead of per frame")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.set_defaults(func=_cmd_cam)


def _cmd_cam(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .interpret.camrun import run_cam

    index = run_cam(args.checkpoint, args.source, args.out, top_k=args.top_k, threshold=args.threshold,
                    limit=args.limit, device=args.device, per_frame=not args.time_average)
    print(f"mCAM gallery: {index}")
    return 0


def _add_predict(sub):
    p = sub.add_parser(
        "predict", help="top-k labels with scores for a video (or a shard) and its mCAM picture",
        description="What does my model see here: decode and sample VIDEO_OR_SHARD as evaluation does, print the "
                    "top-k labels with scores (sigmoid), and write each clip's mCAM picture to --out. Example: "
                    "mmit predict my_video.mp4 --checkpoint runs/demo/train/checkpoints/best.pt")
    p.add_argument("source", metavar="VIDEO_OR_SHARD", help="video file, shard (.tar), dataset folder or FOLDER:SPLIT")
    p.add_argument("--checkpoint", required=True, help="mmit checkpoint (.pt)")
    p.add_argument("--top-k", type=int, default=5, help="labels to print (default 5)")
    p.add_argument("--out", default="runs/predict", help="folder of the mCAM pictures (default runs/predict)")
    p.add_argument("--no-cam", action="store_true", help="print labels only, no pictures")
    p.add_argument("--limit", type=int, default=16, help="at most this many clips of a shard/dataset (default 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .interpret.camrun import predict

    for r in predict(args.checkpoint, args.source, top_k=args.top_k, out_dir=None if args.no_cam else args.out,
                     limit=args.limit, device=args.device):
        print(f"{r['key']}: " + ", ".join(f"{c} {s:.3f}" for c, s in r["top"])
              + (f"   (truth: {', '.join(r['truth'])})" if r["truth"] else "") + (f"   -> {r['png']}" if r.get("png") else ""))
    return 0


def _add_dissect(sub):
    p = sub.add_parser(
        "dissect", help="Action Network Dissection of a checkpoint on a Broden-layout concept set",
        description="NetDissect with action concepts (paper section 5.2): per-unit top-quantile thresholds "
                    "(exact, streaming), IoU of upsampled unit masks with concept masks, unit labels, Table 5 summary, "
                    "Figs. 7, 9, 10, unit-to-class links, OUT/report.html. CONCEPTS: a Broden-layout folder "
                    "(mmit synth --broden writes one). Example: mmit dissect runs/demo/broden --checkpoint "
                    "runs/demo/train/checkpoints/best.pt --out runs/demo/dissect")
    p.add_argument("concepts", help="Broden-layout folder (index.csv, label.csv, images/)")
    p.add_argument("--checkpoint", required=True, help="mmit checkpoint (.pt)")
    p.add_argument("--out", default="runs/dissect", help="output folder (default runs/dissect)")
    p.add_argument("--layers", help="comma-separated layer names (default: every ResNet stage, layer1..layer4)")
    p.add_argument("--quantile", type=float, default=0.005, help="top activation quantile per unit (default 0.005)")
    p.add_argument("--iou-threshold", type=float, default=0.04, help="interpretable above this IoU (default 0.04)")
    p.add_argument("--categories", help="comma-separated concept categories to use (default: all in index.csv)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--mask-cache", default="auto", metavar="DIR",
                   help="folder of the packed concept-mask cache, reused by later runs on the same concept set "
                        "(verified by digest; default auto: $MMIT_CACHE_DIR/masks or ~/.cache/mmit-fast/masks; "
                        "off: keep none)")
    p.set_defaults(func=_cmd_dissect)


def _cmd_dissect(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .interpret.dissect_run import run_dissect

    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    s = run_dissect(args.checkpoint, args.concepts, args.out, layers=split(args.layers), quantile=args.quantile,
                    iou_threshold=args.iou_threshold, device=args.device, batch_size=args.batch_size,
                    categories=split(args.categories),
                    mask_cache=None if args.mask_cache == "off" else args.mask_cache)
    for name, L in s["layers"].items():
        print(f"{name}: {L['interpretable']}/{L['units']} units interpretable "
              f"({L['interpretable_without_actions']} without action concepts), {L['unique_concepts']} concepts")
    print(f"concept masks: {s.get('mask_cache')}")
    print(f"report: {s['files']['report']}")
    return 0


VERBS: List[Callable] = [_add_synth, _add_pack, _add_inspect, _add_train, _add_finetune, _add_eval, _add_demo, _add_report, _add_import_weights, _add_export, _add_cam, _add_predict,
                         _add_dissect]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmit",
        description="mmit-fast: multi-label video action recognition (Multi-Moments in Time) at scale.",
    )
    parser.add_argument("--version", action="version", version=f"mmit-fast {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        try:
            add(sub)
        except ImportError as e:  # the verb's extra is not installed: the verb says so when run
            _add_missing_extra(sub, add.__name__[len("_add_"):].replace("_", "-"), e)
    return parser


def _add_missing_extra(sub, verb, exc):
    from ._extras import extra_for

    missing = extra_for(exc)
    if missing is None:
        raise exc
    if verb in sub.choices:  # half-built before the import failed: replace it
        del sub.choices[verb]
        sub._choices_actions[:] = [a for a in sub._choices_actions if a.dest != verb]
    # no option prefix: every word after the verb lands in `rest`, the verb then names its extra
    p = sub.add_parser(verb, help=f"(needs the [{missing.extra}] extra)", add_help=False, prefix_chars="\x01")
    p.add_argument("rest", nargs="*")

    def _cmd(args):
        raise missing

    p.set_defaults(func=_cmd)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return _run_verb(args)


def _run_verb(args) -> int:
    """Exit codes, the same for every verb: 0 success; 2 bad input or usage (a missing or
    malformed file, a bad config or flag value, a refused checkpoint or resume: any
    ``ValueError`` / ``FileNotFoundError``, or ``SystemExit("one line")``); 1 an unexpected
    failure (any other exception, e.g. a diverged training run); 130 interrupted. Errors are one
    line on stderr; ``MMIT_DEBUG=1`` re-raises them with the traceback."""
    debug = bool(os.environ.get("MMIT_DEBUG"))
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if isinstance(e.code, str) and not debug:
            print(e.code, file=sys.stderr)
            return 2
        raise
    except (FileNotFoundError, ValueError) as e:
        # bad input: the message names the file or sample
        if debug:
            raise
        print(f"mmit {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional module missing: name the extra that brings it (_extras.py)
        from ._extras import extra_for

        missing = extra_for(e)
        if missing is None or debug:
            raise
        print(f"mmit {args.verb}: {missing}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"mmit {args.verb}: failed: {type(e).__name__}: {first} (MMIT_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
