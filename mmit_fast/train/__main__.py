"""``python -m mmit_fast.train`` and ``torchrun -m mmit_fast.train``: the ``mmit train`` verb
(same flags, same exit codes; the parser lives in :mod:`mmit_fast.train.command`)."""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> int:
    from .._exits import run_verb
    from .command import build_parser, run_cli

    args = build_parser("python -m mmit_fast.train").parse_args(sys.argv[1:] if argv is None else argv)
    return run_verb("train", run_cli, args)


if __name__ == "__main__":
    sys.exit(main())
