"""``mmit demo``: flags and the call (the work is in :mod:`mmit_fast.demo`)."""
from __future__ import annotations

import os


def add_demo(sub, help=None):
    p = sub.add_parser(
        "demo", help=help,
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
    p.set_defaults(func=cmd_demo)


def cmd_demo(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mmit_fast.train)
    from .demo import run_demo

    run_demo(out=args.out, quick=args.quick, seed=args.seed, epochs=args.epochs, device=args.device,
             nproc=args.nproc, regenerate=args.regenerate, sets=args.sets, progress=not args.no_progress)
    return 0

