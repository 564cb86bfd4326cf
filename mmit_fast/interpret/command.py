"""The interpretation verbs: ``mmit cam``, ``mmit predict``, ``mmit dissect`` (flags and the call;
the work is in :mod:`mmit_fast.interpret`)."""
from __future__ import annotations

import os
import sys
from typing import List


def add_cam(sub, help=None):
    p = sub.add_parser(
        "cam", help=help,
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
    p.set_defaults(func=cmd_cam)


def cmd_cam(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .camrun import run_cam

    notes: List[str] = []
    index = run_cam(args.checkpoint, args.source, args.out, top_k=args.top_k, threshold=args.threshold,
                    limit=args.limit, device=args.device, per_frame=not args.time_average, notes=notes)
    for n in notes:
        print(f"mmit cam: note: {n}", file=sys.stderr)
    print(f"mCAM gallery: {index}")
    return 0


def add_predict(sub, help=None):
    p = sub.add_parser(
        "predict", help=help,
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
    p.set_defaults(func=cmd_predict)


def cmd_predict(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .camrun import predict

    notes: List[str] = []
    rows = predict(args.checkpoint, args.source, top_k=args.top_k, out_dir=None if args.no_cam else args.out,
                   limit=args.limit, device=args.device, notes=notes)
    for n in notes:
        print(f"mmit predict: note: {n}", file=sys.stderr)
    for r in rows:
        print(f"{r['key']}: " + ", ".join(f"{c} {s:.3f}" for c, s in r["top"])
              + (f"   (truth: {', '.join(r['truth'])})" if r["truth"] else "") + (f"   -> {r['png']}" if r.get("png") else ""))
    return 0


def add_dissect(sub, help=None):
    p = sub.add_parser(
        "dissect", help=help,
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
    p.set_defaults(func=cmd_dissect)


def cmd_dissect(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .dissect_run import run_dissect

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

