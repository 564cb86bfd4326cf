"""The starting configuration of ``mmit finetune --from CHECKPOINT``."""
from __future__ import annotations

import os

from ..config import TrainConfig
from ..models.checkpoint import read_checkpoint
from ..recipes import checkpoint_config


def finetune_base_config(checkpoint: str) -> TrainConfig:
    """The source run's settings (clips, loss, optimiser...) with data, output, resume and
    evaluation history cleared. A checkpoint without a training config (a released or
    imported model) gives the defaults with its model name and its ``preprocess`` clip
    settings (frames, crop, stride, sampling)."""
    d = checkpoint_config(read_checkpoint(checkpoint)).to_dict()
    d.update(data="", out="runs/finetune", resume="", resume_allow="", init_from=os.path.abspath(checkpoint),
             replace_classifier=True, pretrained="", freeze_backbone=False, max_steps=0, record_keys=False)
    return TrainConfig(**d)
