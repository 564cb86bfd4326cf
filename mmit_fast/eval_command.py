"""``mmit eval``: flags and the call (the work is in :mod:`mmit_fast.evaluate`)."""
from __future__ import annotations

import os


def add_eval(sub, help=None):
    p = sub.add_parser(
        "eval", help=help,
        description="Evaluate a checkpoint on packed shards (centre clip, or --views V crops per video with "
                    "averaged scores); writes <split>_metrics.json, <split>_per_class_ap.csv, <split>_table.md "
                    "(a Table 1-style row) and <split>_scores.npz. Runs under torchrun too. Example: "
                    "mmit eval runs/demo/train/checkpoints/best.pt --split val --split test")
    p.add_argument("checkpoint", help="mmit checkpoint: written by mmit train (checkpoints/best.pt or last.pt) or "
                                      "mmit import-weights; read as data only (weights_only)")
    p.add_argument("--data", help="packed dataset folder or its URL (s3://, gs://, https://; default: the one the "
                                  "checkpoint was trained on)")
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
    p.set_defaults(func=cmd_eval)


def cmd_eval(args):
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

