"""``python -m mmit_fast.train`` and ``torchrun -m mmit_fast.train``: the ``mmit train`` verb
(same flags, same exit codes)."""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> int:
    from ..cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
