"""Run INSIDE a virtual environment that holds only mmit-fast's wheel and its core (torch, triton,
numpy and what they need): every loss on every CPU backend against the float64 reference, no
optional module importable, and a verb whose extra is missing naming it. Exit 0 = pass."""
import importlib
import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton kernels are imported

import torch  # noqa: E402

import mmit_fast  # noqa: E402
from mmit_fast.losses import BACKENDS, bce_loss, lsep_loss, warp_loss, wlsep_loss  # noqa: E402
from mmit_fast.losses import reference as ref  # noqa: E402

OPTIONAL = ["av", "webdataset", "ffmpeg", "imageio_ffmpeg", "tqdm", "yaml", "tensorboard", "matplotlib", "PIL",
            "onnx", "onnxruntime", "sklearn", "skvideo", "pytest"]


def main():
    here = os.path.dirname(os.path.abspath(mmit_fast.__file__))
    assert "site-packages" in here, f"mmit_fast imported from {here}, not from the installed wheel"
    for mod in OPTIONAL:  # the environment really is core-only
        try:
            importlib.import_module(mod)
        except ImportError:
            continue
        raise SystemExit(f"optional module {mod!r} is importable: not a core-only environment")
    from mmit_fast import _C  # the compiled extension ships in the wheel

    assert hasattr(_C, "loss_rows")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 300, generator=g) * 2
    y = torch.rand(6, 300, generator=g) < 0.02
    y[:, 7] = True
    fns = {"bce": bce_loss, "warp": warp_loss, "lsep": lsep_loss, "wlsep": wlsep_loss}
    n = 0
    for name, fn in fns.items():
        xr = x.double().requires_grad_()
        want = ref.reference_loss(name, xr, y, None, "mean")
        want.backward()
        for backend in BACKENDS:
            for targets in (y, y.float()):
                xg = x.clone().requires_grad_()
                got = fn(xg, targets, backend=backend)
                got.backward()
                torch.testing.assert_close(got.double(), want.detach(), rtol=2e-5, atol=2e-5)
                torch.testing.assert_close(xg.grad.double(), xr.grad, rtol=2e-5, atol=2e-5)
                n += 1
    loaded = sorted(m for m in OPTIONAL if m in sys.modules)
    assert not loaded, f"importing the losses loaded optional modules: {loaded}"
    # a verb whose extra is missing says which one to install (exit 2, one line)
    proc = subprocess.run([sys.executable, "-m", "mmit_fast", "synth", "synth_out", "--num-videos", "2"], capture_output=True,
                          text=True)
    line = proc.stderr.strip()
    assert proc.returncode == 2 and line.startswith('mmit synth: needs the [data] extra: pip install "mmit-fast[data]"') \
        and "\n" not in line, (proc.returncode, proc.stderr[-2000:])
    print(f"core-only OK: {n} loss x backend x target-dtype checks; {line}")


if __name__ == "__main__":
    main()
