"""``mmit``: the command line. A thin layer: each verb parses its flags, calls one
function of a module, and prints. No logic lives here.

Each verb is two small functions, ``_add_<verb>(sub)`` (its flags) and
``_cmd_<verb>(args)`` (the call), registered in ``VERBS``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional, Tuple

from ._version import __version__


def _todo(verb: str):
    def run(args):  # pragma: no cover - replaced as each capability lands
        raise SystemExit(f"mmit {verb}: not implemented yet")

    return run


# --------------------------------------------------------------------------- synth
def _add_synth(sub):
    p = sub.add_parser("synth", help="generate the Multi-Moving-Shapes synthetic dataset and pack it into shards")
    p.set_defaults(func=_todo("synth"))


# --------------------------------------------------------------------------- pack
def _add_pack(sub):
    p = sub.add_parser("pack", help="transcode videos + annotations into WebDataset shards")
    p.set_defaults(func=_todo("pack"))


# --------------------------------------------------------------------------- inspect
def _add_inspect(sub):
    p = sub.add_parser("inspect", help="print the samples of a shard and validate it")
    p.set_defaults(func=_todo("inspect"))


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
    from .train import run_cli

    return run_cli(args)


# --------------------------------------------------------------------------- finetune
def _add_finetune(sub):
    from .config import add_config_args

    p = sub.add_parser(
        "finetune", help="load a trained backbone, replace the classifier, train on another dataset",
        description="Transfer (the paper's Table 4): build the model of --from CHECKPOINT, load its weights, "
                    "replace the classifier with one for the vocabulary of --data, and train (all layers, or "
                    "only the classifier with --freeze-backbone). Takes every `mmit train` flag. Example: "
                    "mmit finetune --from runs/demo/train/checkpoints/best.pt --data data/other --out runs/ft "
                    "--epochs 3 --lr 0.01")
    p.add_argument("--from", dest="finetune_from", required=True, metavar="CHECKPOINT",
                   help="checkpoint of the trained model (e.g. runs/demo/train/checkpoints/best.pt)")
    add_config_args(p, skip=("init_from",))
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args):
    from .config import TrainConfig
    from .train import run_cli

    args.init_from = args.finetune_from
    if args.replace_classifier is None:
        args.replace_classifier = True
    return run_cli(args, base=TrainConfig(out="runs/finetune", replace_classifier=True))


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
                    "print the Table 1-style rows next to the chance level. About 5 minutes on 2 CPU cores; "
                    "--quick takes about 1 minute.")
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
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
