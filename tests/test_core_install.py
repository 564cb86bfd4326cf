"""The kernels install alone (issue 10): the core distribution is torch + triton + numpy.

* importing ``mmit_fast`` and ``mmit_fast.losses`` and running every loss loads no optional module;
* a verb whose extra is missing says which extra to install (one line, exit 2);
* the wheel, built here and installed into a fresh virtual environment that holds only the core
  closure (torch, triton, numpy and their own requirements -- linked from this interpreter, no
  download; ``pip install --no-index`` proves the wheel asks for nothing else), runs every loss
  on every CPU backend (``tests/core_install/check_core.py``). ``MMIT_WHEEL_TEST_INSTALL=1``
  installs the core from the package index instead (minutes).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ["av", "webdataset", "ffmpeg", "imageio_ffmpeg", "tqdm", "yaml", "tensorboard", "matplotlib", "PIL",
            "onnx", "onnxruntime", "onnxscript", "sklearn", "skvideo", "nvidia"]

BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = set(%r)
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
""") % (OPTIONAL,)


def _python(code, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("TRITON_INTERPRET", "1")
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_importing_the_losses_needs_only_the_core(tmp_path):
    proc = _python("""
        import torch, mmit_fast
        from mmit_fast.losses import bce_loss, lsep_loss, warp_loss, wlsep_loss, get_loss, class_weights
        x, y = torch.randn(4, 30), torch.rand(4, 30) < 0.1
        for fn in (bce_loss, lsep_loss, warp_loss, wlsep_loss):
            for backend in ("torch", "cpp", "triton"):
                fn(x.requires_grad_(), y, backend=backend).backward()
        import mmit_fast.shards, mmit_fast.metrics
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("LOADED", loaded)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout


def test_a_verb_whose_extra_is_missing_names_it(tmp_path):
    proc = _python("""
        from mmit_fast.cli import main
        for argv in (["synth", "out", "--num-videos", "2"], ["train", "--data", "d", "--out", "r"], ["demo"]):
            print("RC", argv[0], main(argv), flush=True)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RC synth 2" in proc.stdout and "RC train 2" in proc.stdout and "RC demo 2" in proc.stdout
    err = proc.stderr.strip().splitlines()
    assert err[0].startswith('mmit synth: needs the [data] extra: pip install "mmit-fast[data]"'), err
    assert err[1].startswith('mmit train: needs the [train] extra: pip install "mmit-fast[train]"'), err
    assert err[2].startswith("mmit demo: needs the [") and len(err) == 3, err


def test_require_names_the_extra():
    from mmit_fast._extras import MissingExtra, extra_for, require

    assert require("json").dumps([1]) == "[1]"
    with pytest.raises(MissingExtra, match=r'needs the \[data\] extra: pip install "mmit-fast\[data\]"') as e:
        require("surely_not_installed_mod", extra="data")
    assert isinstance(e.value, ImportError) and e.value.extra == "data"
    assert extra_for(ModuleNotFoundError("x", name="yaml")).extra == "train"
    assert extra_for(ModuleNotFoundError("x", name="numpy")) is None


# ------------------------------------------------------------------ the wheel, alone
def _core_closure():
    """Distributions torch, triton and numpy need (markers evaluated, extras ignored)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always carries a copy
        from pip._vendor.packaging.requirements import Requirement

    todo, seen = ["torch", "triton", "numpy"], {}
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen[key] = dist
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _link_core(site, dists):
    """Make each distribution's top-level files (packages, modules, dist-info) visible in ``site``."""
    for dist in dists:
        root = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in (dist.files or []) if not str(f).startswith("..")}
        for top in tops:
            src, dst = root / top, site / top
            if src.exists() and not dst.exists() and not top.endswith(".pth") and top != "__pycache__":
                dst.symlink_to(src)


@pytest.mark.slow
def test_wheel_installs_and_runs_with_the_core_alone(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(REPO)], capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-3000:]
    (whl,) = wheels.glob("mmit_fast-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    if os.environ.get("MMIT_WHEEL_TEST_INSTALL"):
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0", "triton>=3.0", "numpy>=1.23"],
                       check=True, timeout=1800)
    else:
        site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        _link_core(site, _core_closure())
    # --no-index: the wheel's requirements must all be met by the core already there
    inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", str(whl)], capture_output=True,
                          text=True, timeout=600)
    assert inst.returncode == 0, inst.stdout[-2000:] + inst.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TRITON_INTERPRET"] = "1"
    run = subprocess.run([str(py), str(REPO / "tests" / "core_install" / "check_core.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "core-only OK: 24 loss x backend x target-dtype checks" in run.stdout
