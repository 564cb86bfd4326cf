"""``mmit``: the command line, a thin table. Each verb's flags and call live beside the module
that does its work (``pack/command.py``, ``train/command.py``, ``interpret/command.py``,
``models/command.py``, ``eval_command.py``, ``demo_command.py``, ``report_command.py``,
``export_command.py``): ``add_<verb>(sub, help)`` registers the verb's parser, whose ``func``
runs it. Only the verb being run is imported, so ``mmit --help`` stays fast and a verb whose
extra is missing says which one to install. Exit codes: :mod:`mmit_fast._exits`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional, Sequence

from ._exits import run_verb
from ._version import __version__

#: (verb, module holding ``add_<verb>``, one-line help)
VERBS = [
    ("synth", "mmit_fast.pack.command", "generate the Multi-Moving-Shapes synthetic dataset and pack it into shards"),
    ("pack", "mmit_fast.pack.command", "transcode videos + annotations into WebDataset shards"),
    ("inspect", "mmit_fast.pack.command", "print the samples of a shard and validate it"),
    ("train", "mmit_fast.train.command", "train a model on packed shards (one process; use torchrun -m mmit_fast.train for several)"),
    ("finetune", "mmit_fast.train.command", "load a trained backbone, replace the classifier, train on another dataset"),
    ("eval", "mmit_fast.eval_command", "evaluate a checkpoint: top-1, top-5, micro/macro mAP"),
    ("demo", "mmit_fast.demo_command", "the main job end to end on the synthetic dataset: synth, pack, train, evaluate, explain, report"),
    ("report", "mmit_fast.report_command", "one self-contained HTML page gathering a run: config, curves, results, mCAM, dissection"),
    ("import-weights", "mmit_fast.models.command", "turn a released model (Moments / Multi-Moments in Time, torchvision) into an mmit checkpoint"),
    ("export", "mmit_fast.export_command", "export a checkpoint's clip classifier to ONNX or TorchScript, checked against its runtime"),
    ("cam", "mmit_fast.interpret.command", "multi-label class activation maps (mCAM) of a checkpoint: PNG/GIF per clip + HTML gallery"),
    ("predict", "mmit_fast.interpret.command", "top-k labels with scores for a video (or a shard) and its mCAM picture"),
    ("dissect", "mmit_fast.interpret.command", "Action Network Dissection of a checkpoint on a Broden-layout concept set"),
]


def _chosen(argv: Sequence[str]) -> Optional[str]:
    """The verb named on the command line (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The ``mmit`` parser: the verb named in ``argv`` fully built (all of them when ``argv`` is
    None), every other one a stub that lists it in ``mmit --help``."""
    parser = argparse.ArgumentParser(
        prog="mmit",
        description="mmit-fast: multi-label video action recognition (Multi-Moments in Time) at scale.",
    )
    parser.add_argument("--version", action="version", version=f"mmit-fast {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    chosen = None if argv is None else _chosen(argv)
    for verb, module, help_ in VERBS:
        if argv is not None and verb != chosen:
            sub.add_parser(verb, help=help_, add_help=False)
            continue
        try:
            getattr(importlib.import_module(module), "add_" + verb.replace("-", "_"))(sub, help=help_)
        except ImportError as e:  # the verb's extra is not installed: the verb says so when run
            _add_missing_extra(sub, verb, e)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return run_verb(args.verb, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
