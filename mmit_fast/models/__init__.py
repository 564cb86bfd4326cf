"""mmit_fast.models: I3D, TSM, SoundNet and audio-video fusion behind one interface.

>>> from mmit_fast.models import create_model
>>> m = create_model("i3d", num_classes=292, depth=18, width=16)       # small CPU variant
>>> logits = m(video)               # video [B, 3, T, H, W] -> [B, 292]
>>> f = m.features(video)           # last conv maps [B, K, T', H', W']
>>> m.classifier                    # nn.Linear(K, 292), applied after global average pooling

Released models of the Moments in Time authors: :mod:`mmit_fast.models.moments` (their 3D
ResNet, ``"moments-resnet3d"``; a per-frame 2D ResNet, ``"moments-resnet2d"``) and
:mod:`mmit_fast.models.importers` (``mmit import-weights``); any mmit checkpoint loads with
``from_checkpoint(path)`` (eval mode, ``.class_names``, ``.preprocess``).

See :mod:`mmit_fast.models.base` for the shared interface and
:mod:`mmit_fast.models.registry` for the names and the pretrained-weights rules.
"""
from .base import ClipClassifier, read_state_dict, replace_classifier
from .checkpoint import CheckpointError, from_checkpoint, read_checkpoint
from .fusion import Fusion
from .moments import FrameResNet2D, MomentsResNet3D
from .registry import MODELS, count_flops, count_params, create_model, load_pretrained, run_model, to_channels_last
from .resnet2d import ResNet2d, resnet2d
from .resnet3d import I3D, inflate_from_2d
from .soundnet import MIN_SAMPLES, SAMPLE_RATE, SoundNet
from .tsm import TSM, temporal_shift

__all__ = [
    "ClipClassifier", "create_model", "from_checkpoint", "read_checkpoint", "CheckpointError", "MODELS", "load_pretrained", "run_model", "replace_classifier",
    "read_state_dict", "to_channels_last", "count_flops", "count_params", "I3D", "inflate_from_2d", "TSM", "temporal_shift",
    "SoundNet", "SAMPLE_RATE", "MIN_SAMPLES", "Fusion", "ResNet2d", "resnet2d",
    "MomentsResNet3D", "FrameResNet2D",
]
