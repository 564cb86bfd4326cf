"""mmit_fast.data: clips from packed shards, through DALI (GPU or CPU) or PyAV.

>>> from mmit_fast.data import make_loader, ClipSpec
>>> loader = make_loader("data/synth", "train", clip=ClipSpec("segments", frames=8, crop=112), batch_size=8)
>>> for batch in loader: batch.video, batch.audio, batch.has_audio, batch.targets, batch.keys
"""
from .index import epoch_batches, num_batches, sample_table
from .loader import BACKENDS, Batch, VideoLoader, make_loader, resolve_backend
from .sampling import ClipSpec, ViewPlan, audio_window, crop_window, frame_indices, plan_views, resized_size, view_grid

__all__ = [
    "make_loader", "ClipSpec", "Batch", "VideoLoader", "BACKENDS", "resolve_backend", "frame_indices", "plan_views",
    "crop_window", "resized_size", "view_grid", "audio_window", "ViewPlan", "epoch_batches", "num_batches", "sample_table",
]
