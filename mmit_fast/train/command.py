"""The command line of training: ``mmit train``, ``python -m mmit_fast.train`` and
``torchrun -m mmit_fast.train`` (same flags). Errors propagate to :func:`mmit_fast.cli.main`,
which maps them to the exit codes (0 done, 2 bad input or usage, 1 unexpected failure)."""
from __future__ import annotations

import argparse
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
