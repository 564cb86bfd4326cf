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
