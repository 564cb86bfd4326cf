"""The DALI backend: decode, resize, crop, flip and normalise inside a DALI pipeline.

``device="cuda"``: ``fn.decoders.video(device="mixed")`` (NVDEC: H.264, HEVC, VP9, AV1, ...)
and every later step on the GPU. ``device="cpu"``: DALI's CPU decoder (libavcodec; VP8, VP9
and MJPEG only -- not H.264/HEVC).

The pipeline is fed, batch by batch, through ``fn.external_source`` by the same
:class:`~mmit_fast.data.pyav.BatchSource` the PyAV backend uses (in ``decode=False`` mode,
inside DataLoader worker processes): the encoded mp4 of each view, the frame indices chosen
by :mod:`.sampling` (given to the decoder as ``frames=``), the resize target, the crop anchor,
the flip and the label ids. So both backends cut the same frames and the same windows, and
read the same bytes the same way: from a local tar or, for shards at a URL, through the same
byte source (:mod:`.fetch`: one range request per sample, read ahead, optional cache).

Per view (a DALI sample)::

    frames  = decoders.video(mp4, frames=indices)              # [T,H,W,3] uint8
    frames  = resize(frames, size=(h', w'), linear, antialias) # short side -> spec.resize
    frames  = slice(frames, start=(y, x), shape=(c, c), axes HW)
    video   = crop_mirror_normalize(frames, mirror=flip, mean=255*mu, std=255*sigma,
                                    output_layout="CFHW")       # [3,T,c,c] float32
    targets = max_0 one_hot([ids..., C], C+1)[:C]               # multi-hot, C classes

What DALI decodes: ``frames=`` makes its decoder seek (it indexes the keyframes of each
video) to the keyframe before a requested frame and decode forward from there, so, as for the
PyAV path, the frames decoded per clip are set by the packing: matched presets
(:mod:`mmit_fast.pack.presets`, e.g. 16 frames per clip with one keyframe for uniform 16-frame
clips) leave nothing to throw away. An audio-only model never reaches DALI: the loader reads
and decodes only its audio member (``make_loader(..., modality="audio")``).

DALI cannot skip a broken video: containers are checked (demuxed) in the workers before
they reach DALI, and if DALI still raises on a batch the pipeline is rebuilt and that batch
is decoded with PyAV instead (bad samples skipped and counted there). Constant (e.g. black)
decoded clips are detected on the output and dropped.
"""
from __future__ import annotations

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except Exception:
        return False


CPU_CODECS = ("vp9", "vp8", "mjpeg")


def build_pipeline(*, max_batch: int, num_classes: int, crop: int, device: str, device_id=None,
                   num_threads: int = 2, prefetch: int = 1):
    """The DALI pipeline (inputs named ``enc``, ``frames``, ``size``, ``anchor``, ``mirror``, ``ids``)."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device == "cuda"

    @pipeline_def(batch_size=max_batch, num_threads=num_threads, device_id=device_id if gpu else None,
                  prefetch_queue_depth=prefetch, exec_dynamic=True)
    def pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        size = fn.external_source(name="size", dtype=types.FLOAT, ndim=1)
        anchor = fn.external_source(name="anchor", dtype=types.INT32, ndim=1)
        mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0)
        ids = fn.external_source(name="ids", dtype=types.INT32, ndim=1)
        v = fn.decoders.video(enc, frames=frames, device="mixed" if gpu else "cpu")
        v = fn.resize(v, size=size, interp_type=types.INTERP_LINEAR, antialias=True)
        v = fn.slice(v, start=anchor, shape=[crop, crop], axis_names="HW", out_of_bounds_policy="error")
        v = fn.crop_mirror_normalize(v, mirror=mirror, dtype=types.FLOAT, output_layout="CFHW",
                                     mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD])
        oh = fn.one_hot(ids, num_classes=num_classes + 1, axis=-1)
        oh = fn.reductions.max(oh, axes=0)
        oh = oh[0:num_classes]
        return v, oh

    p = pipe()
    p.build()
    return p


def feed(pipe, raw, num_classes: int):
    """Feed one batch of views: ``raw`` = list of (encoded uint8, [ViewPlan...], ids)."""
    enc, frames, size, anchor, mirror, ids = [], [], [], [], [], []
    for data, plans, lab in raw:
        data = data.numpy() if hasattr(data, "numpy") else data
        lab = np.concatenate([np.asarray(lab, np.int32), np.array([num_classes], np.int32)])
        for p in plans:
            enc.append(data)
            frames.append(np.asarray(p.indices, np.int32))
            size.append(np.asarray(p.resize_hw, np.float32))
            anchor.append(np.asarray(p.crop_yx, np.int32))
            mirror.append(np.asarray(int(p.flip), np.int32))
            ids.append(lab)
    pipe.feed_input("enc", enc)
    pipe.feed_input("frames", frames)
    pipe.feed_input("size", size)
    pipe.feed_input("anchor", anchor)
    pipe.feed_input("mirror", mirror)
    pipe.feed_input("ids", ids)
    return len(enc)


def to_torch(tl, device):
    """A dense DALI TensorList (CPU or GPU) -> torch tensor on ``device`` (a copy)."""
    import torch

    if hasattr(tl, "as_cpu") and type(tl).__name__ == "TensorListGPU":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=torch.float32, device=device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(device=out.device))
        return out
    return torch.from_numpy(np.array(tl.as_tensor())).to(device)
