"""mmit_fast.pack: writing the shard format of :mod:`mmit_fast.shards`.

* :func:`pack_videos` — videos + M-MiT annotations -> shards (``mmit pack``);
* :func:`merge_parts` — join the manifests of ``--part i/N`` runs (``mmit pack --merge``);
* :func:`inspect_shard` — print and validate a shard (``mmit inspect``);
* :mod:`mmit_fast.pack.synth` — the Multi-Moving-Shapes generator (``mmit synth``),
  written through the same packer.
"""
from .annotations import AnnotationError, read_annotations, read_categories
from .inspect import inspect_shard, validate_dataset
from .packer import merge_parts, split_report, write_split
from .transcode import CODECS, AttemptFailed, EncodeSpec, RejectedInput, ffmpeg_exe
from .videos import pack_videos
from .writer import ShardWriteError

__all__ = [
    "pack_videos", "merge_parts", "inspect_shard", "validate_dataset", "write_split", "EncodeSpec",
    "RejectedInput", "AttemptFailed", "ShardWriteError", "split_report", "AnnotationError", "read_annotations", "read_categories", "CODECS", "ffmpeg_exe",
]
