"""What bench_dissect.py's runs share: the concept set, its N-row copies, the models and the
float64 feature memmaps (NetDissect-Lite's layout) every method reads."""
from __future__ import annotations

import csv
import glob
import json
import os
import shutil

import numpy as np


def make_data(work: str, videos: int) -> str:
    """A Multi-Moving-Shapes Broden export (3 frames per video, 112 px masks), cached in ``work``."""
    from mmit_fast.pack.synth import generate_dataset

    broden = os.path.join(work, "broden")
    if not os.path.exists(os.path.join(broden, "index.csv")):
        generate_dataset(os.path.join(work, "data"), num_videos=videos, splits=(0, 0, 1), workers=2, broden=broden,
                         progress=False)
    return broden


def sized_copy(broden: str, n: int, dest: str) -> str:
    """A Broden folder of exactly ``n`` rows (the export's rows repeated), images shared by symlink;
    ``label.csv``, ``category.csv`` and the ``c_<category>.csv`` files NetDissect-Lite reads."""
    os.makedirs(dest, exist_ok=True)
    for src in [os.path.join(broden, "label.csv"), os.path.join(broden, "category.csv")] + \
            sorted(glob.glob(os.path.join(broden, "c_*.csv"))):
        shutil.copy(src, dest)
    link = os.path.join(dest, "images")
    if os.path.islink(link):
        os.unlink(link)
    os.symlink(os.path.abspath(os.path.join(broden, "images")), link)
    with open(os.path.join(broden, "index.csv"), newline="") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:]
    with open(os.path.join(dest, "index.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(body[i % len(body)] for i in range(n))
    return dest


class _Stub:
    """A fixed random 2D "layer4" (512 units on a 7 x 7 grid from 224 px, ReLU) with a cheap
    forward pass (the tests' quick setting)."""

    @staticmethod
    def build(units: int = 512):
        import torch
        from torch import nn

        from mmit_fast.data.sampling import ClipSpec

        class Stub(nn.Module):
            modality = "video"

            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.layer4 = nn.Sequential(nn.Conv2d(3, units, 32, 32), nn.ReLU())
                self.classifier = nn.Linear(units, 10)

            def forward(self, x):
                return self.classifier(self.layer4(x.mean(dim=2)).mean(dim=(2, 3)))

        return Stub().eval(), ClipSpec(frames=1, stride=1, crop=224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _ResNet18:
    """NetDissect's own model family, a 2D ResNet-18 (:class:`mmit_fast.models.resnet2d.ResNet2d`,
    torchvision's layout; random He-initialised weights, BatchNorm in eval mode) fed the static
    clip's frame; ``net.layer3`` has 256 units on 14 x 14 maps and ``net.layer4`` 512 units on 7 x 7
    at 224 px, as in NetDissect-Lite's ResNet-18 example."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        from mmit_fast.data.sampling import ClipSpec
        from mmit_fast.models.resnet2d import ResNet2d

        class Net(nn.Module):
            modality = "video"

            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.net = ResNet2d(18, num_classes=10)

            def forward(self, x):
                return self.net(x.mean(dim=2))

        return Net().eval(), ClipSpec(frames=1, stride=1, crop=224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_model(name: str):
    """``"resnet18"``, ``"stub"`` or a checkpoint path -> (model, clip spec, mean, std)."""
    from mmit_fast.interpret.source import load_model as load

    if name in ("stub", "resnet18"):
        return (_Stub if name == "stub" else _ResNet18).build()
    return load(name, "cpu")


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process in MB (``VmHWM``: its peak). Not ``ru_maxrss``: Linux carries
    that over from the parent through fork and exec, so a worker started by a large driver would
    report the driver's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return rss_mb("VmHWM")


def write_features(model, spec, mean, std, b, layer: str, batch: int, mm_path: str) -> np.memmap:
    """``layer``'s activations of every row of the Broden set ``b`` by our forward pass, written
    as float64 [N, K, h, w] to the memmap ``mm_path`` (what NetDissect-Lite's
    ``feature_extraction`` writes); flushed, returned open. Calls go through ``dissect_run``'s
    names, so a worker that wraps them (``_dissect_reimpl``'s timers) sees them."""
    from mmit_fast.interpret import dissect_run as D
    from mmit_fast.interpret.layers import resolve_layers

    mods = resolve_layers(model, [layer])
    mm = None
    for s in range(0, len(b), batch):
        ids = list(range(s, min(len(b), s + batch)))
        x = D.static_clip(np.stack([D.prep_image(b.image(i), spec.crop) for i in ids]), spec, mean, std, "cpu", True)
        a = D.layer_activations(model, mods, x)[layer].numpy()
        if mm is None:
            mm = np.memmap(mm_path, dtype=np.float64, mode="w+", shape=(len(b),) + a.shape[1:])
        mm[s:s + len(ids)] = a
    mm.flush()
    return mm


def feature_memmap(work: str, model_name: str, layer: str, broden_dir: str, batch: int = 16):
    """The layer's activations of every row of ``broden_dir`` (:func:`write_features`), computed
    once and cached: ``(path, shape)``."""
    from mmit_fast.interpret.broden import Broden

    tag = f"{model_name}_{layer}_{os.path.basename(os.path.normpath(broden_dir))}".replace(".", "_")
    path, meta = os.path.join(work, tag + ".mmap"), os.path.join(work, tag + ".json")
    if os.path.exists(path) and os.path.exists(meta):
        return path, tuple(json.load(open(meta))["shape"])
    model, spec, mean, std = load_model(model_name)
    mm = write_features(model, spec, mean, std, Broden(broden_dir), layer, batch, path + ".tmp")
    shape = mm.shape
    del mm
    os.replace(path + ".tmp", path)
    json.dump({"shape": list(shape)}, open(meta, "w"))
    return path, shape
