"""``mmit report``: flags and the call (the work is in :mod:`mmit_fast.report`)."""
from __future__ import annotations


def add_report(sub, help=None):
    p = sub.add_parser(
        "report", help=help,
        description="Write RUN_DIR/report.html: the configuration, training and validation curves, the Table 1 "
                    "rows next to chance, per-class AP (sorted, with class frequencies), the worst-confused "
                    "classes, and the mCAM gallery and dissection summary when present. Pictures are embedded, "
                    "so the file opens from disk. RUN_DIR is a training run (mmit train --out) or a demo "
                    "folder (runs/demo). Example: mmit report runs/demo")
    p.add_argument("run_dir", help="training run folder, or a folder with the run in train/ (e.g. runs/demo)")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--split", help="evaluation whose per-class AP and confusions are shown (default: val, else the first)")
    p.add_argument("--gallery", type=int, default=4, help="mCAM clips shown on the page (default: 4)")
    p.set_defaults(func=cmd_report)


def cmd_report(args):
    from .report import build_report

    print(build_report(args.run_dir, args.out, split=args.split, gallery=args.gallery))
    return 0

