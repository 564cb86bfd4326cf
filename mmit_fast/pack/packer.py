"""The packing driver shared by ``mmit pack`` (video files) and ``mmit synth`` (rendered clips).

``write_split`` takes a list of jobs (one per sample, each with a unique dot-free key), runs a
picklable worker over them in a process pool (results come back in job order, so shards are
deterministic), writes accepted samples through :class:`~mmit_fast.pack.writer.ShardWriter`,
records rejected inputs, and updates the manifest.

Resume. Only final shard names are trusted: a shard is renamed into place after it is
complete, so after a crash (even SIGKILL) every final ``*.tar`` is whole. ``resume=True``
deletes leftover temporaries, re-reads the keys of the final shards of this split (and part),
reads the rejection journal (``.<manifest>.<split>.rejected.jsonl``, appended and fsynced per
rejection), and packs only the remaining jobs into new shards numbered after the last one.
Samples that were in the unfinished shard are packed again: none is lost or duplicated.

Parts. ``part=(i, N)`` writes shards ``{split}-pIIII-NNNNNN.tar`` and ``manifest-pIIII.json``;
:func:`merge_parts` joins the part manifests into ``manifest.json``.
"""
from __future__ import annotations

import glob
import json
import multiprocessing as mp
import os
import re
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import shards as S
from .._io import atomic_write_json
from .transcode import EncodeSpec, RejectedInput, _die_with_parent
from .writer import Sample, ShardWriter, _readable, iter_tar_samples, split_stats, write_index


@dataclass
class Job:
    key: str
    source: str
    payload: Any = None


@dataclass
class Rejected:
    key: str
    source: str
    reason: str


def _worker_init():  # pragma: no cover - runs in pool workers
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _safe_call(fn, job: Job):
    """Run ``fn(job)``; turn :class:`RejectedInput` (and unexpected errors) into :class:`Rejected`."""
    try:
        return fn(job)
    except RejectedInput as e:
        return Rejected(job.key, job.source, e.reason)
    except Exception as e:  # a bug or an ffmpeg failure on this input: reject it, name it
        return Rejected(job.key, job.source, f"{type(e).__name__}: {str(e)[:300]}")


class _Call:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, job):
        return _safe_call(self.fn, job)


def _shard_regex(split: str, part: Optional[int]) -> re.Pattern:
    mid = f"-p{part:04d}" if part is not None else ""
    return re.compile(rf"^{re.escape(split)}{mid}-(\d{{6}})\.tar$")


def existing_shards(out_dir: str, split: str, part: Optional[int]) -> List[Tuple[int, str]]:
    """``(index, file name)`` of the final shards of ``split`` (and ``part``), sorted."""
    rx = _shard_regex(split, part)
    found = []
    if os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            m = rx.match(name)
            if m:
                found.append((int(m.group(1)), name))
    return sorted(found)


def _cleanup_partials(out_dir: str, split: str, part: Optional[int]) -> None:
    rx = _shard_regex(split, part)
    for path in glob.glob(os.path.join(out_dir, ".*.partial")):
        if rx.match(os.path.basename(path)[1:-len(".partial")]):
            os.unlink(path)
    # an .idx whose tar never got renamed into place
    idx_rx = re.compile(rx.pattern.replace(r"\.tar$", r"\.idx$"))
    for name in os.listdir(out_dir):
        if idx_rx.match(name) and not os.path.exists(os.path.join(out_dir, name[:-4] + ".tar")):
            os.unlink(os.path.join(out_dir, name))


def _journal_path(out_dir: str, split: str, part: Optional[int]) -> str:
    return os.path.join(out_dir, f".{S.manifest_name(part)}.{split}.rejected.jsonl")


def _state_path(out_dir: str, split: str, part: Optional[int]) -> str:
    return os.path.join(out_dir, f".{S.manifest_name(part)}.{split}.state.json")


def _read_journal(path: str) -> List[Dict]:
    out = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a crash: everything after it is redone
    return out


def _pool(workers: int):
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    return ctx.Pool(workers, initializer=_worker_init)


def _compatible_manifest(mpath: str, classes: Sequence[str], spec: EncodeSpec) -> Optional[S.Manifest]:
    """The existing manifest at ``mpath`` (None if absent); an error when its vocabulary or
    video settings differ from this run's (all splits of a dataset share them)."""
    if not os.path.exists(mpath):
        return None
    man = S.load_manifest(mpath)
    if list(man.classes) != list(classes):
        raise ValueError(f"{mpath} has a different vocabulary ({man.num_classes} classes); "
                         "pack into a new folder or use the same categories file")
    keys = ("codec", "short_side", "fps")
    if man.video and {k: man.video.get(k) for k in keys} != {k: spec.video_manifest()[k] for k in keys}:
        raise ValueError(f"{mpath} was packed with video settings {man.video}; this run uses "
                         f"{spec.video_manifest()}: all splits of a dataset must share them")
    return man


def write_split(out_dir: str, split: str, jobs: Sequence[Job], work: Callable[[Job], Sample], *,
                classes: Sequence[str], spec: EncodeSpec, part: Optional[Tuple[int, int]] = None,
                workers: int = 2, shard_samples: int = 1000, shard_bytes: int = 1 << 30,
                resume: bool = False, overwrite: bool = False, pre_rejected: Sequence[Dict] = (),
                source_info: Optional[Dict] = None, progress: bool = True, desc: str = "pack") -> S.Manifest:
    """Pack ``jobs`` of one split into ``out_dir``; update and return the (part) manifest."""
    if split not in S.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {S.SPLITS}")
    keys = [j.key for j in jobs]
    for k in keys:
        S.validate_key(k)
    if len(set(keys)) != len(keys):
        raise ValueError("job keys must be unique")
    part_i = part[0] if part else None
    os.makedirs(out_dir, exist_ok=True)
    _compatible_manifest(os.path.join(out_dir, S.manifest_name(part_i)), classes, spec)  # fail before any work
    state = {"classes": list(classes), "video": spec.video_manifest(), "audio": spec.audio_manifest(),
             "part": list(part) if part else None, "jobs": len(jobs)}
    state_path = _state_path(out_dir, split, part_i)
    journal = _journal_path(out_dir, split, part_i)
    old = existing_shards(out_dir, split, part_i)

    done_metas: List[Dict] = []
    prior: List[S.ShardInfo] = []
    rejected: List[Dict] = []
    if old and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds {len(old)} '{split}' shard(s) ({old[0][1]}, ...): "
                "pass resume=True (--resume) to continue that run or overwrite=True (--overwrite) to replace it")
        for _, name in old:
            for p in (name, S.index_name(name)):
                if os.path.exists(os.path.join(out_dir, p)):
                    os.unlink(os.path.join(out_dir, p))
        old = []
    _cleanup_partials(out_dir, split, part_i)  # leftovers of an interrupted run of this split (and part)
    if resume and os.path.exists(state_path):
        with open(state_path, encoding="utf-8") as f:
            prev = json.load(f)
        for k in ("classes", "video", "audio", "part"):
            if prev.get(k) != state[k]:
                raise ValueError(f"--resume in {out_dir}: the interrupted run used a different {k} "
                                 f"({prev.get(k)!r} vs {state[k]!r}); use the same settings or a new folder")
    if resume:
        want = set(keys)
        for _, name in old:
            path = os.path.join(out_dir, name)
            if not os.path.exists(S.index_name(path)):
                write_index(path)
            metas = []
            for key, mem in iter_tar_samples(path, members=[S.META_EXT]):
                metas.append(S.parse_sample_meta(mem[S.META_EXT], where=f"{path}:{key}"))
            stray = [m["key"] for m in metas if m["key"] not in want]
            if stray:
                raise ValueError(f"--resume: {path} holds samples {stray[:3]} that this run does not list; "
                                 "the folder was packed from other annotations")
            done_metas.extend(metas)
            prior.append(S.ShardInfo(path=name, split=split, samples=len(metas), bytes=os.path.getsize(path),
                                     index=S.index_name(name)))
        rejected = [r for r in _read_journal(journal) if r.get("key") in want]
    else:
        if os.path.exists(journal):
            os.unlink(journal)
    atomic_write_json(state_path, state)

    done = {m["key"] for m in done_metas} | {r["key"] for r in rejected}
    todo = [j for j in jobs if j.key not in done]
    metas: List[Dict] = list(done_metas)

    def on_shard(info, shard_metas):
        metas.extend(shard_metas)

    writer = ShardWriter(out_dir, split, part=part_i, start_index=(old[-1][0] + 1) if old else 0,
                         shard_samples=shard_samples, shard_bytes=shard_bytes, on_shard=on_shard)
    call = _Call(work)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"{desc} {split}", unit="clip",
                   dynamic_ncols=True, file=sys.stderr,
                   mininterval=0.5 if sys.stderr.isatty() else 15.0)
    pool = _pool(workers) if workers > 1 and len(todo) > 1 else None
    try:
        results = pool.imap(call, todo, chunksize=1) if pool else map(call, todo)
        with open(journal, "a", encoding="utf-8") as jf:
            for res in results:
                if isinstance(res, Rejected):
                    rec = {"key": res.key, "source": res.source, "reason": res.reason}
                    rejected.append(rec)
                    jf.write(json.dumps(rec) + "\n")
                    jf.flush()
                    os.fsync(jf.fileno())
                else:
                    writer.write(res)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(rejected=len(rejected), refresh=False)
        writer.close()
    except BaseException:
        writer.abort()
        if pool:
            pool.terminate()
        raise
    finally:
        if pool:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()

    # ---- manifest -----------------------------------------------------------------
    order = {k: i for i, k in enumerate(keys)}
    metas.sort(key=lambda m: order.get(m["key"], 0))
    shards = prior + writer.shards
    mpath = os.path.join(out_dir, S.manifest_name(part_i))
    man = _compatible_manifest(mpath, classes, spec) or S.Manifest(classes=list(classes))
    stats = split_stats(metas, len(classes))
    all_rejected = [dict(r, split=split) for r in pre_rejected] + [
        {"source": r["source"], "reason": r["reason"], "key": r["key"], "split": split} for r in rejected]
    stats["rejected"] = len(all_rejected)
    man.splits[split] = stats
    man.shards = [s for s in man.shards if s.split != split] + shards
    man.shards.sort(key=lambda s: (S.SPLITS.index(s.split), s.path))
    man.video = spec.video_manifest()
    man.audio = spec.audio_manifest()
    man.members = dict(man.members, audio=spec.audio_format)
    man.rejected = [r for r in man.rejected if r.get("split") != split] + all_rejected
    src = dict(man.source)
    if part:
        src["part"] = list(part)
    src.setdefault("splits", {})[split] = dict(source_info or {}, jobs=len(jobs))
    man.source = src
    man.root = os.path.abspath(out_dir)
    man.save(mpath)
    _readable(mpath)
    return S.load_manifest(mpath)  # as a reader sees it (JSON types)


# --------------------------------------------------------------------------- merging parts
def merge_parts(out_dir: str, expect_parts: Optional[int] = None) -> S.Manifest:
    """Join ``manifest-pIIII.json`` of every part into ``manifest.json`` (atomically).

    Checks that all parts ``0..N-1`` are present, share the vocabulary and video settings,
    and that every shard they list exists; sums per-split sample and class counts; keeps the
    shard files where they are (their names carry the part)."""
    paths = sorted(glob.glob(os.path.join(out_dir, "manifest-p[0-9][0-9][0-9][0-9].json")))
    if not paths:
        raise FileNotFoundError(f"{out_dir}: no part manifests (manifest-pIIII.json) to merge; "
                                "pack with --part i/N first")
    mans = [S.load_manifest(p) for p in paths]
    totals = {tuple(m.source.get("part", (None, None)))[1] for m in mans}
    if len(totals) != 1 or None in totals:
        raise ValueError(f"{out_dir}: part manifests disagree on the number of parts: {sorted(map(str, totals))}")
    n = totals.pop() if expect_parts is None else expect_parts
    have = sorted(m.source["part"][0] for m in mans)
    missing = sorted(set(range(n)) - set(have))
    if missing:
        raise ValueError(f"{out_dir}: cannot merge, parts {missing} of {n} are missing (have {have})")
    first = mans[0]
    for p, m in zip(paths, mans):
        if m.classes != first.classes:
            raise ValueError(f"{p}: vocabulary differs from {paths[0]}")
        if m.video != first.video or m.audio != first.audio:
            raise ValueError(f"{p}: video/audio settings differ from {paths[0]}: {m.video} vs {first.video}")
        for s in m.shards:
            for f in (s.path, s.index):
                if not os.path.exists(os.path.join(out_dir, f)):
                    raise FileNotFoundError(f"{p} lists {f}, which is not in {out_dir}")
    splits: Dict[str, Dict] = {}
    for m in mans:
        for name, st in m.splits.items():
            acc = splits.setdefault(name, {"samples": 0, "without_audio": 0, "rejected": 0,
                                           "class_counts": [0] * first.num_classes})
            acc["samples"] += st.get("samples", 0)
            acc["without_audio"] += st.get("without_audio", 0)
            acc["rejected"] += st.get("rejected", 0)
            acc["class_counts"] = [a + b for a, b in zip(acc["class_counts"], st["class_counts"])]
    shards = sorted((s for m in mans for s in m.shards), key=lambda s: (S.SPLITS.index(s.split), s.path))
    merged = S.Manifest(
        classes=list(first.classes), splits=splits, shards=shards, video=dict(first.video),
        audio=dict(first.audio), rejected=[r for m in mans for r in m.rejected],
        source={"merged_parts": n, "parts": [m.source for m in mans]}, members=dict(first.members),
        root=os.path.abspath(out_dir))
    merged.save(os.path.join(out_dir, S.MANIFEST_NAME))
    _readable(os.path.join(out_dir, S.MANIFEST_NAME))
    return S.load_manifest(out_dir)
