"""``mmit inspect SHARD``: list the samples of a shard and validate every one of them.

Checks, per shard: the ``.idx`` exists and equals the index recomputed from the tar (so DALI
reads the right bytes; ``fix_index=True`` / ``--fix-index`` rewrites a missing or wrong one).
Per sample: every member's bytes match the CRC-32 digest recorded in its ``.json`` at
packing, and every member recorded there is present (shards packed before digests existed
get a note instead, or an error when the manifest says they have digests); a valid key;
``.mp4``, ``.json`` and ``.ids`` present;
the metadata parses and names the same key; ``.ids`` equals ``label_ids`` and the label
names match the manifest vocabulary (when the shard's folder has a manifest); the video
decodes in full with the declared frame count and size; the audio member (present exactly
when ``has_audio``) decodes to ``audio_samples`` samples; ``.gt.npz`` loads without pickle.
"""
from __future__ import annotations

import io
import os
from typing import Callable, Dict, List, Optional

import numpy as np

from .. import shards as S
from .. import storage
from .transcode import decode_audio_bytes, decode_video_bytes
from .writer import index_entries_of_tar, iter_tar_samples, local_copy, read_index, write_index


def _find_manifest(tar_path: str) -> Optional[S.Manifest]:
    return S.find_manifest(tar_path)


def _index_errors(tar_path: str, entries, fix: bool, say) -> List[str]:
    """Problems of the shard's ``.idx`` (rewritten from ``entries`` when ``fix``)."""
    idx = S.index_name(tar_path)
    if not storage.exists(idx):
        why = f"{tar_path}: no DALI index {os.path.basename(idx)} next to it"
    else:
        try:
            got = read_index(idx)
            why = None if got == [[tuple(e) for e in s] for s in entries] else \
                f"{idx}: does not match the tar's members (stale or foreign index)"
        except (S.ShardFormatError, ValueError, UnicodeDecodeError) as e:
            why = f"{idx}: unreadable index ({e})"
    if why and fix and entries:
        write_index(tar_path, idx, entries=entries)
        say(f"fixed: {why}; rewrote {idx} from the tar's members")
        return []
    return [why] if why else []


def _digest_problems(meta: Dict, mem: Dict[str, bytes], required: bool, where: str) -> List[str]:
    """Members whose bytes differ from the digests in the metadata (or that are missing)."""
    try:
        digests = S.sample_digests(meta, where)
    except S.IntegrityError as e:
        return [str(e)[len(where) + 2:]]
    if digests is None:
        return ["member .json has no digest, but the manifest says the shards carry them"] if required else []
    out = []
    for ext in sorted(set(digests) | set(mem)):
        if ext == S.META_EXT:
            continue
        if ext not in mem:
            out.append(f"member .{ext} packed with the sample is missing")
            continue
        try:
            S.check_member(digests, ext, mem[ext], where)
        except S.IntegrityError as e:
            out.append(str(e)[len(where) + 2:])
    return out


def _meta_and_labels(key: str, mem: Dict[str, bytes], man, required: bool, where: str, problems: List[str]):
    """The sample's metadata and label ids (``{}``/None when unreadable), checking the key, the
    members present, the digests and the labels against each other and the vocabulary."""
    try:
        S.validate_key(key)
    except S.ShardFormatError as e:
        problems.append(str(e))
    problems.extend(f"missing .{m}" for m in (S.VIDEO_EXT, S.META_EXT, S.LABEL_EXT) if m not in mem)
    meta: Dict = {}
    if S.META_EXT in mem:
        try:
            meta = S.parse_sample_meta(mem[S.META_EXT], where=where)
            if meta["key"] != key:
                problems.append(f"metadata key {meta['key']!r} != member key")
            problems.extend(_digest_problems(meta, mem, required, where))
        except S.ShardFormatError as e:
            problems.append(str(e))
    ids = None
    if S.LABEL_EXT in mem:
        try:
            ids = S.decode_label_ids(mem[S.LABEL_EXT]).tolist()
        except S.ShardFormatError as e:
            problems.append(str(e))
    if meta and ids is not None and list(meta.get("label_ids", [])) != ids:
        problems.append(f".ids {ids} != metadata label_ids {meta.get('label_ids')}")
    if man and ids is not None:
        if any(i >= man.num_classes for i in ids):
            problems.append(f"label ids {ids} out of range for {man.num_classes} classes")
        elif meta.get("labels") is not None and [man.classes[i] for i in ids] != list(meta["labels"]):
            problems.append(f"label names {meta['labels']} do not match ids {ids} in the vocabulary")
    return meta, ids


def _decoded(mem: Dict[str, bytes], meta: Dict, decode: bool, problems: List[str]):
    """``(frames, w, h, audio ext, gt note)``: decode video and audio (when ``decode``) and
    compare them with the metadata; load the ground truth without pickle."""
    frames = w = h = None
    if decode and S.VIDEO_EXT in mem:
        try:
            frames, w, h, _ = decode_video_bytes(mem[S.VIDEO_EXT], where="video")
            if meta and (frames != meta.get("frames") or w != meta.get("width") or h != meta.get("height")):
                problems.append(f"video decodes to {frames} frames {w}x{h}, metadata says "
                                f"{meta.get('frames')} frames {meta.get('width')}x{meta.get('height')}")
        except ValueError as e:
            problems.append(str(e))
    audio_ext = next((e for e in S.AUDIO_EXTS if e in mem), None)
    if meta and bool(meta.get("has_audio")) != (audio_ext is not None):
        problems.append(f"has_audio={meta.get('has_audio')} but audio member {'present' if audio_ext else 'absent'}")
    if decode and audio_ext:
        try:
            a = decode_audio_bytes(mem[audio_ext])
            if meta and a.size != meta.get("audio_samples"):
                problems.append(f"audio decodes to {a.size} samples, metadata says {meta.get('audio_samples')}")
        except ValueError as e:
            problems.append(str(e))
    gt = ""
    if S.GT_EXT in mem:
        try:
            with np.load(io.BytesIO(mem[S.GT_EXT]), allow_pickle=False) as z:
                gt = f" gt[{','.join(sorted(z.files)[:4])}{',...' if len(z.files) > 4 else ''}]"
        except Exception as e:
            problems.append(f"gt.npz does not load ({e})")
    return frames, w, h, audio_ext, gt


def inspect_shard(tar_path: str, decode: bool = True, limit: Optional[int] = None,
                  out: Optional[Callable[[str], None]] = print, fix_index: bool = False) -> Dict:
    """Validate one shard; print one line per sample (``out=None`` to stay quiet).

    Returns ``{"shard", "samples", "errors": [str], "keys": [str], "digests": bool}``;
    ``errors`` is empty for a good shard; ``digests`` says whether its samples carry member
    digests. ``fix_index`` rewrites a missing, stale or foreign ``.idx`` from the tar.
    A shard at a URL is read whole into a temporary file (every byte is checked); its ``.idx``
    and the manifest beside it are read, and fixed, at the URL."""
    tar_path = storage.strip_credentials(tar_path)
    if not storage.exists(tar_path):
        raise FileNotFoundError(f"no shard at {storage.redact(tar_path)}")
    with local_copy(tar_path) as local:
        return _inspect(tar_path, local, decode, limit, out, fix_index)


def _inspect(tar_path: str, local: str, decode: bool, limit: Optional[int], out, fix_index: bool) -> Dict:
    say = out or (lambda s: None)
    errors: List[str] = []
    keys: List[str] = []
    man = _find_manifest(tar_path)
    required = bool(man and man.integrity.get("digest"))
    digested = 0
    try:
        entries = index_entries_of_tar(local)
    except Exception as e:
        return {"shard": tar_path, "samples": 0, "errors": [f"{tar_path}: not a readable tar ({e})"], "keys": [],
                "digests": False}
    errors.extend(_index_errors(tar_path, entries, fix_index, say))
    say(f"{tar_path}: {len(entries)} samples" + (f", manifest with {man.num_classes} classes" if man else ", no manifest found"))
    for n, (key, mem) in enumerate(iter_tar_samples(local)):
        if limit is not None and n >= limit:
            break
        where = f"{storage.basename(tar_path)}:{key}"
        problems: List[str] = []
        keys.append(key)
        meta, ids = _meta_and_labels(key, mem, man, required, where, problems)
        digested += S.DIGEST_FIELD in meta
        frames, w, h, audio_ext, gt = _decoded(mem, meta, decode, problems)
        say(f"  {key}  labels={meta.get('labels', ids)} ids={ids} "
            f"frames={frames if frames is not None else meta.get('frames')} "
            f"{w or meta.get('width')}x{h or meta.get('height')} audio={audio_ext or 'none'}{gt}"
            + ("  ERROR: " + "; ".join(problems) if problems else ""))
        errors.extend(f"{where}: {p}" for p in problems)
    if keys and not digested:
        say("note: these samples carry no member digests (packed by an older mmit-fast): damaged bytes inside "
            "a member are found only where they break decoding; re-pack to add digests")
    say("OK" if not errors else f"{len(errors)} problem(s)")
    return {"shard": tar_path, "samples": len(entries), "errors": errors, "keys": keys, "digests": bool(digested)}


def validate_dataset(root: str, decode: bool = False) -> Dict:
    """Check every shard listed by ``manifest.json``: it exists, sample counts match, keys are
    unique across the dataset; with ``decode`` also inspect each sample."""
    man = S.load_manifest(root)
    errors: List[str] = []
    keys = set()
    for s in man.shards:
        path = storage.join(man.root, s.path)
        if not storage.exists(path):
            errors.append(f"{s.path}: listed in the manifest but missing")
            continue
        rep = inspect_shard(path, decode=decode, out=None)
        errors.extend(rep["errors"])
        if rep["samples"] != s.samples:
            errors.append(f"{s.path}: manifest says {s.samples} samples, the tar holds {rep['samples']}")
        dup = keys.intersection(rep["keys"])
        if dup:
            errors.append(f"{s.path}: keys also in other shards: {sorted(dup)[:5]}")
        keys.update(rep["keys"])
    return {"samples": len(keys), "errors": errors}
