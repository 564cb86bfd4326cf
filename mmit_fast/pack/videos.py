"""``pack_videos``: a video root + annotations + categories -> shards (``mmit pack``)."""
from __future__ import annotations

import os
from typing import Optional, Tuple, Union

from .. import shards as S
from .annotations import parse_part, part_range, read_annotations, read_categories
from .packer import Job, write_split
from .presets import resolve as resolve_preset
from .presets import resolve_bframes, resolve_short_side
from .transcode import EncodeSpec, transcode_file
from .writer import Sample, make_sample


class _TranscodeJob:
    """Picklable worker: transcode one annotated video into a :class:`Sample`."""

    def __init__(self, video_root: str, spec: EncodeSpec, split: str, classes):
        self.video_root = video_root
        self.spec = spec
        self.split = split
        self.classes = classes

    def __call__(self, job: Job) -> Sample:
        ann = job.payload
        path = ann.path if os.path.isabs(ann.path) else os.path.join(self.video_root, ann.path)
        clip = transcode_file(path, self.spec, source=ann.path)
        meta = {
            "source": ann.path,
            "labels": list(ann.labels),
            "label_ids": list(ann.label_ids),
            "row": ann.index,
            "line": ann.line,
            "row_digest": job.digest,   # --resume compares it with the row it reads then
            **clip.meta(self.split, self.spec.codec),
        }
        if ann.dropped:
            meta["dropped_labels"] = list(ann.dropped)
        if clip.warnings:
            meta["warnings"] = list(clip.warnings)
        return make_sample(job.key, meta, clip.video, ann.label_ids, audio=clip.audio,
                           audio_ext=self.spec.audio_format)


def pack_videos(video_root: str, annotations: str, categories: str, out_dir: str, *, split: str = "train",
                codec: str = "vp9", short_side: Optional[int] = None, fps: Optional[float] = None, seconds: float = 3.0,
                gop: Optional[int] = None, crf: Optional[int] = None, audio_format: str = "flac",
                workers: int = 2, shard_samples: int = 1000, shard_bytes: int = 1 << 30,
                resume: bool = False, overwrite: bool = False,
                part: Union[None, str, Tuple[int, int]] = None, drop_unknown: bool = False,
                progress: bool = True, preset: Optional[str] = None) -> S.Manifest:
    """Transcode the videos listed in ``annotations`` (M-MiT CSV or JSONL) and write them as
    shards of ``split`` into ``out_dir`` (see :mod:`mmit_fast.shards`).

    Inputs that do not decode (missing, empty, random bytes, truncated, no video stream, an
    audio track that does not decode) are not written; they are listed with the reason in
    ``manifest.rejected``. Clips whose every transcoding attempt failed for a reason that is not
    the input's (ffmpeg killed, no memory, disk full) are listed there with ``"retry": true``
    and packed by the next ``resume=True`` run. A file listed under several spellings is packed
    once (the later rows are rejected as duplicates). Labels outside the
    vocabulary raise :class:`~mmit_fast.pack.annotations.AnnotationError` naming the row,
    unless ``drop_unknown``. ``part="i/N"`` packs the i-th of N disjoint contiguous slices of
    the rows (merge with :func:`merge_parts`); ``resume`` continues an interrupted run.
    Packing a second split into the same folder adds it to the manifest.
    ``preset`` (:mod:`mmit_fast.pack.presets`: ``full``, ``paper-i3d``, ``tsm8``, ``paper-i3d-128``,
    ``tsm8-128``) sets the frame rate and keyframe spacing (``fps``/``gop`` default to 25 fps and
    fps/2 without it), and for the ``-128`` ones the short side (``short_side`` default 256).
    """
    short_side = resolve_short_side(preset, short_side)
    bframes = resolve_bframes(preset, codec)
    fps, gop, preset = resolve_preset(preset, seconds, fps, gop)
    spec = EncodeSpec(codec=codec, short_side=short_side, fps=fps, seconds=seconds, gop=gop, crf=crf,
                      audio_format=audio_format, preset=preset, bframes=bframes)
    if not os.path.isdir(video_root):
        raise FileNotFoundError(f"video root {video_root} is not a folder")
    classes = read_categories(categories)
    rows, rejected = read_annotations(annotations, classes, drop_unknown=drop_unknown, video_root=video_root)
    part_t = parse_part(part)
    if part_t:
        # slice the annotation rows (accepted and rejected alike) by their position in the file
        total = max([a.index for a in rows] + [r["index"] for r in rejected] + [-1]) + 1
        lo, hi = part_range(total, part_t)
        rows = [a for a in rows if lo <= a.index < hi]
        rejected = [r for r in rejected if lo <= r["index"] < hi]
    jobs = [Job(key=S.key_for(a.index, a.path), source=a.path, payload=a,
                row={"source": a.path, "labels": list(a.labels), "line": a.line}) for a in rows]
    info = {"annotations": os.path.abspath(annotations), "categories": os.path.abspath(categories),
            "video_root": os.path.abspath(video_root), "drop_unknown": drop_unknown,
            "dropped_labels": sum(len(a.dropped) for a in rows)}
    return write_split(out_dir, split, jobs, _TranscodeJob(os.path.abspath(video_root), spec, split, classes),
                       classes=classes, spec=spec, part=part_t, workers=workers, shard_samples=shard_samples,
                       shard_bytes=shard_bytes, resume=resume, overwrite=overwrite, pre_rejected=rejected,
                       source_info=info, progress=progress, desc="pack")
