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
    p = sub.add_parser("train", help="train a model on packed shards (one process; use torchrun -m mmit_fast.train for several)")
    p.set_defaults(func=_todo("train"))


# --------------------------------------------------------------------------- finetune
def _add_finetune(sub):
    p = sub.add_parser("finetune", help="load a trained backbone, replace the classifier, train on another dataset")
    p.set_defaults(func=_todo("finetune"))


# --------------------------------------------------------------------------- eval
def _add_eval(sub):
    p = sub.add_parser("eval", help="evaluate a checkpoint: top-1, top-5, micro/macro mAP")
    p.set_defaults(func=_todo("eval"))


# --------------------------------------------------------------------------- demo
def _add_demo(sub):
    p = sub.add_parser("demo", help="the main job end to end on the synthetic dataset: synth, pack, train, evaluate")
    p.set_defaults(func=_todo("demo"))


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
