"""Shared helpers of the interpretation tests: a tiny checkpoint and a tiny synthetic dataset."""
import os

import torch


def write_checkpoint(path, model_name="i3d", num_classes=24, drop_classifier=False, classes=None, **kwargs):
    """A checkpoint in the documented format (plain tensors and dicts), of a fresh small model."""
    from mmit_fast.models import create_model

    kw = dict(depth=18, width=4, conv1_t=1) if model_name == "i3d" else dict(kwargs)
    kw.update(kwargs)
    torch.manual_seed(0)
    m = create_model(model_name, num_classes, **kw)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    if drop_classifier:
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    ck = {"format": "mmit-checkpoint", "version": 2,
          "model_spec": {"name": model_name, "num_classes": num_classes, "kwargs": kw},
          "classes": classes or [f"c{i}" for i in range(num_classes)], "modality": m.modality, "model": sd,
          "config": {}, "preprocess": {"frames": 4, "crop": 32, "stride": 1, "sampling": "consecutive"}}
    torch.save(ck, path)
    return path


def tiny_synth(root):
    """4 synthetic videos (32 px, 10 frames) in a test split + their Broden export (cached per folder)."""
    from mmit_fast.pack.synth import CLASSES, generate_dataset

    data, broden = os.path.join(root, "data"), os.path.join(root, "broden")
    if not os.path.exists(os.path.join(broden, "index.csv")):
        generate_dataset(data, num_videos=4, size=32, seconds=0.4, splits=(0, 0, 1), workers=1, broden=broden,
                         progress=False, codec="mjpeg")
    return data, broden, list(CLASSES)
