"""Shared by the benchmark scripts: name the machine a result was measured on."""
import os
import platform


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``'s model name), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def load_average():
    try:
        return os.getloadavg()
    except OSError:
        return None


# --------------------------------------------------------------------------- where results go
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SCRATCH = os.path.join(RESULTS, "tmp")  # git-ignored


def add_output_args(parser) -> None:
    """The flags every benchmark shares: ``--save`` (update the committed ``benchmarks/results/``)
    and ``--out DIR`` (anywhere else). Without either, results go to the git-ignored scratch
    folder ``benchmarks/results/tmp/`` so a user's run never rewrites the committed figures."""
    parser.add_argument("--save", action="store_true",
                        help="write the result files into benchmarks/results/ (the committed figures)")
    parser.add_argument("--out", default=None,
                        help="folder for the result files (default benchmarks/results/tmp/, git-ignored)")


def results_dir(args) -> str:
    """The folder chosen by :func:`add_output_args`' flags, created."""
    d = args.out or (RESULTS if getattr(args, "save", False) else SCRATCH)
    os.makedirs(d, exist_ok=True)
    return d
