"""The command line of training: ``mmit train``, ``mmit finetune``, ``python -m mmit_fast.train``
and ``torchrun -m mmit_fast.train`` (same flags). Errors propagate to
:func:`mmit_fast._exits.run_verb`, which maps them to the exit codes (0 done, 2 bad input or
usage, 1 unexpected failure)."""
from __future__ import annotations

import argparse
import os
from typing import Optional

from ..config import TrainConfig, add_config_args, config_from_args


def build_parser(prog: str = "mmit train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train a model on packed shards. One process, or one per device under torchrun "
                    "(torchrun --nproc_per_node=N -m mmit_fast.train --config run.yaml). "
                    "Config precedence: defaults < --config YAML < --set key=value < flags.",
    )
    add_config_args(p)
    return p


def run_cli(args: argparse.Namespace, base: Optional[TrainConfig] = None) -> int:
    """Train with the parsed flags (over ``base``); print a one-line summary on rank 0."""
    from ..distributed import dist_env
    from .loop import train

    summary = train(config_from_args(args, base=base))
    if dist_env()[0] == 0:
        best = summary.get("best") or {}
        msg = f"mmit train: {summary['steps_run']} steps in {summary['elapsed_s']:.1f}s (step {summary['steps']})"
        if summary.get("clips_per_s"):
            msg += f" ({summary['clips_per_s']:.1f} clips/s)"
        if best.get("value") is not None:
            msg += f"; best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}"
        print(msg + f"; outputs in {summary['out']}")
    return 0


# --------------------------------------------------------------------------- the `mmit` verbs
def add_train(sub, help=None):
    p = sub.add_parser(
        "train", help=help,
        description="Train a model on packed shards: one process here, or one per device with "
                    "`torchrun --nproc_per_node=N -m mmit_fast.train ...` (same flags). Config precedence: "
                    "defaults < --config YAML < --set key=value < flags. Example: mmit train --config "
                    "demo_cpu --data runs/demo/data --out runs/mine --epochs 3. Outputs in --out: "
                    "checkpoints/{last,best}.pt, metrics.csv, val_metrics.csv, tb/, summary.json. "
                    "Resume after a kill with --resume auto (a changed config is refused unless named in "
                    "--resume-allow KEY,...). Exit codes: 0 done, 2 bad input (config, data, checkpoint, refused "
                    "resume), 1 failure (e.g. a non-finite loss).")
    add_config_args(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    return run_cli(args)  # errors reach main(): 2 bad config/checkpoint/resume, 1 e.g. a non-finite loss


def add_finetune(sub, help=None):
    p = sub.add_parser(
        "finetune", help=help,
        description="Transfer (the paper's Table 4): build the model of --from CHECKPOINT, load its weights, "
                    "replace the classifier with one for the vocabulary of --data, and train (all layers, or "
                    "only the classifier with --freeze-backbone). Starts from the source run's settings (clips, "
                    "loss, optimiser); every `mmit train` flag overrides them. Example: "
                    "mmit finetune --from runs/demo/train/checkpoints/best.pt --data data/other --out runs/ft "
                    "--epochs 3 --lr 0.01")
    p.add_argument("--from", dest="finetune_from", required=True, metavar="CHECKPOINT",
                   help="checkpoint of the trained model (e.g. runs/demo/train/checkpoints/best.pt)")
    add_config_args(p, skip=("init_from",))
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .finetune import finetune_base_config

    args.init_from = args.finetune_from
    base = finetune_base_config(args.finetune_from)  # flags override the source run's settings
    return run_cli(args, base=base)

