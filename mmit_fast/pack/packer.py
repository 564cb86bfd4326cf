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
A job that was not packed for a non-input reason (an attempt that failed: ffmpeg killed, no
memory, disk full; an unexpected error) is journaled with ``"retry": true`` and tried again
by every ``--resume``; only inputs that are bad stay rejected. A job may carry its
annotation row (``Job.row``): its digest is stored in the sample's metadata (``row_digest``)
and in the journal, and a resume whose rows changed since the shards were written (a label
fixed) refuses and names the rows; a changed row that had been rejected is simply retried.

Status. The state file (``.<manifest>.<split>.state.json``) says whether the split finished
(``"finished"``) and how many jobs wait for a retry (``"to_retry"``); the manifest's split
entry repeats ``to_retry``. :func:`merge_parts` refuses parts that did not finish.

Parts. ``part=(i, N)`` writes shards ``{split}-pIIII-NNNNNN.tar`` and ``manifest-pIIII.json``;
:func:`merge_parts` joins the part manifests into ``manifest.json``.

Object storage. ``out_dir`` may be ``s3://bucket/prefix`` or ``gs://...``: every file above
goes through :mod:`mmit_fast.storage` (listing, reading, atomic PUTs); each finished shard is
uploaded with its ``.idx`` as it completes, the (part) manifest last, so a reader never sees a
partial shard or a manifest naming a missing one; the journal and state files live in the
bucket too, so ``--resume`` (from any machine) and ``--merge`` work against it.
"""
from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing as mp
import os
import re
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import shards as S
from .. import storage
from .transcode import AttemptFailed, EncodeSpec, RejectedInput, _die_with_parent
from .writer import Sample, ShardWriteError, ShardWriter, _readable, iter_tar_samples, split_stats, write_index


@dataclass
class Job:
    key: str
    source: str
    payload: Any = None
    row: Optional[Dict] = None     # the annotation row (e.g. line, source, labels): its digest guards --resume

    @property
    def digest(self) -> str:
        """Digest of ``row`` ("" without one): 16 hex digits of SHA-256 of its sorted JSON,
        without its ``line`` (where the row sits is not what it says)."""
        if not self.row:
            return ""
        row = {k: v for k, v in self.row.items() if k != "line"}
        return hashlib.sha256(json.dumps(row, sort_keys=True).encode("utf-8")).hexdigest()[:16]


@dataclass
class Rejected:
    key: str
    source: str
    reason: str
    retry: bool = False            # True: not the input's fault; --resume tries it again


def _worker_init():  # pragma: no cover - runs in pool workers
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _safe_call(fn, job: Job):
    """Run ``fn(job)``; turn :class:`RejectedInput` into a rejection and failed attempts (and
    unexpected errors) into a :class:`Rejected` to retry."""
    try:
        return fn(job)
    except RejectedInput as e:
        return Rejected(job.key, job.source, e.reason)
    except AttemptFailed as e:
        return Rejected(job.key, job.source, f"not packed, to retry: {e.reason}", retry=True)
    except Exception as e:  # a bug or a machine failure, not the input's: name it, retry it on --resume
        return Rejected(job.key, job.source, f"not packed, to retry: unexpected {type(e).__name__}: {str(e)[:300]}",
                        retry=True)


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
    for name in storage.listdir(out_dir):
        m = rx.match(name)
        if m:
            found.append((int(m.group(1)), name))
    return sorted(found)


def _cleanup_partials(out_dir: str, split: str, part: Optional[int]) -> None:
    rx = _shard_regex(split, part)
    if not storage.is_url(out_dir):   # at a URL, shards are staged in local temporary files
        for path in glob.glob(os.path.join(out_dir, ".*.partial")):
            if rx.match(os.path.basename(path)[1:-len(".partial")]):
                os.unlink(path)
    # an .idx whose tar never got renamed into place (or uploaded)
    idx_rx = re.compile(rx.pattern.replace(r"\.tar$", r"\.idx$"))
    names = set(storage.listdir(out_dir))
    for name in sorted(names):
        if idx_rx.match(name) and name[:-4] + ".tar" not in names:
            storage.remove(storage.join(out_dir, name))


def _journal_path(out_dir: str, split: str, part: Optional[int]) -> str:
    return storage.join(out_dir, f".{S.manifest_name(part)}.{split}.rejected.jsonl")


def _state_path(out_dir: str, split: str, part: Optional[int]) -> str:
    return storage.join(out_dir, f".{S.manifest_name(part)}.{split}.state.json")


def _read_journal(path: str) -> List[Dict]:
    out = []
    if storage.exists(path):
        for line in storage.read_text(path).splitlines():
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
    if not storage.exists(mpath):
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


@dataclass
class _Resume:
    """What an earlier run of this split left: finished shards, their samples, journaled rejections."""

    old: List[Tuple[int, str]]
    metas: List[Dict]
    prior: List[S.ShardInfo]
    rejected: List[Dict]


def _changed_rows(metas: Sequence[Dict], by_key: Dict[str, Job]) -> List[str]:
    """Descriptions of the packed samples whose annotation row differs from this run's."""
    out = []
    for m in metas:
        job = by_key[m["key"]]
        if job.digest and m.get("row_digest") and m["row_digest"] != job.digest:
            row = job.row or {}
            out.append(f"line {row.get('line', '?')} {job.source!r}: labels {m.get('labels')} -> {row.get('labels')}"
                       if m.get("labels") != row.get("labels") else f"line {row.get('line', '?')} {job.source!r}")
    return out


def _read_previous(out_dir: str, split: str, part_i: Optional[int], jobs: Sequence[Job], journal: str) -> _Resume:
    """Re-read the finished shards and the journal of an interrupted run (``--resume``)."""
    by_key = {j.key: j for j in jobs}
    res = _Resume(existing_shards(out_dir, split, part_i), [], [], [])
    sizes = storage.sizes([storage.join(out_dir, name) for _, name in res.old])
    for (_, name), nbytes in zip(res.old, sizes):
        path = storage.join(out_dir, name)
        if not storage.exists(S.index_name(path)):
            write_index(path)
        metas = [S.parse_sample_meta(mem[S.META_EXT], where=f"{path}:{key}")
                 for key, mem in iter_tar_samples(path, members=[S.META_EXT])]
        stray = [m["key"] for m in metas if m["key"] not in by_key]
        if stray:
            raise ValueError(f"--resume: {storage.redact(path)} holds samples {stray[:3]} that this run does not list; "
                             "the folder was packed from other annotations")
        res.metas.extend(metas)
        res.prior.append(S.ShardInfo(path=name, split=split, samples=len(metas), bytes=nbytes,
                                     index=S.index_name(name)))
    changed = _changed_rows(res.metas, by_key)
    if changed:
        raise ValueError(f"--resume in {storage.redact(out_dir)}: {len(changed)} annotation row(s) changed since their samples were "
                         f"packed ({'; '.join(changed[:5])}{'; ...' if len(changed) > 5 else ''}): the shards hold "
                         "the old labels; pack into a new folder or pass --overwrite")
    # a rejection stands only if it was the input's fault and its row did not change since
    res.rejected = [r for r in _read_journal(journal) if r.get("key") in by_key and not r.get("retry")
                    and r.get("row_digest", "") == by_key[r["key"]].digest]
    return res


def _start(out_dir: str, split: str, part_i: Optional[int], jobs: Sequence[Job], state: Dict, *,
           resume: bool, overwrite: bool) -> _Resume:
    """Check the folder, clear what a fresh run replaces, read what a resumed run keeps; write
    the state file (``finished: false``)."""
    state_path = _state_path(out_dir, split, part_i)
    journal = _journal_path(out_dir, split, part_i)
    old = existing_shards(out_dir, split, part_i)
    if old and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{storage.redact(out_dir)} already holds {len(old)} '{split}' shard(s) ({old[0][1]}, ...): "
                "pass resume=True (--resume) to continue that run or overwrite=True (--overwrite) to replace it")
        _forget_split(storage.join(out_dir, S.manifest_name(part_i)), split)
        for _, name in old:
            for p in (name, S.index_name(name)):
                storage.remove(storage.join(out_dir, p))
    _cleanup_partials(out_dir, split, part_i)  # leftovers of an interrupted run of this split (and part)
    if resume and storage.exists(state_path):
        prev = storage.read_json(state_path)
        for k in ("classes", "video", "audio", "part"):
            if prev.get(k) != state[k]:
                raise ValueError(f"--resume in {storage.redact(out_dir)}: the interrupted run used a different {k} "
                                 f"({prev.get(k)!r} vs {state[k]!r}); use the same settings or a new folder")
    res = _read_previous(out_dir, split, part_i, jobs, journal) if resume else _Resume([], [], [], [])
    if not resume:
        storage.remove(journal)
    storage.write_json(state_path, dict(state, finished=False))
    return res


def _forget_split(mpath: str, split: str) -> None:
    """Before ``--overwrite`` deletes a split's shards: drop them from the manifest first, so
    that it never names a missing shard."""
    if storage.exists(mpath):
        man = S.load_manifest(mpath)
        if any(s.split == split for s in man.shards):
            man.shards = [s for s in man.shards if s.split != split]
            man.splits.pop(split, None)
            man.save(mpath)


def _run_jobs(todo: Sequence[Job], work: Callable[[Job], Sample], writer: ShardWriter, journal: str,
              rejected: List[Dict], *, workers: int, bar) -> None:
    """Transcode ``todo`` (in a pool), write samples in job order, journal every rejection."""
    digests = {j.key: j.digest for j in todo}
    pool = _pool(workers) if workers > 1 and len(todo) > 1 else None
    call = _Call(work)
    try:
        results = pool.imap(call, todo, chunksize=1) if pool else map(call, todo)
        for res in results:
            if isinstance(res, Rejected):
                rec = {"key": res.key, "source": res.source, "reason": res.reason, "retry": res.retry,
                       "row_digest": digests.get(res.key, "")}
                rejected.append(rec)
                try:
                    storage.append_line(journal, json.dumps(rec))   # durable before the next job
                except OSError as e:
                    raise ShardWriteError(journal, e, what="the rejection journal") from e
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


def write_split(out_dir: str, split: str, jobs: Sequence[Job], work: Callable[[Job], Sample], *,
                classes: Sequence[str], spec: EncodeSpec, part: Optional[Tuple[int, int]] = None,
                workers: int = 2, shard_samples: int = 1000, shard_bytes: int = 1 << 30,
                resume: bool = False, overwrite: bool = False, pre_rejected: Sequence[Dict] = (),
                source_info: Optional[Dict] = None, progress: bool = True, desc: str = "pack") -> S.Manifest:
    """Pack ``jobs`` of one split into ``out_dir``; update and return the (part) manifest.

    A write error (disk full, file-size limit) raises :class:`~mmit_fast.pack.writer.ShardWriteError`,
    one line naming the file and the cause; the finished shards stay, ``resume`` continues."""
    if split not in S.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {S.SPLITS}")
    keys = [j.key for j in jobs]
    for k in keys:
        S.validate_key(k)
    if len(set(keys)) != len(keys):
        raise ValueError("job keys must be unique")
    part_i = part[0] if part else None
    out_dir = storage.strip_credentials(out_dir)
    storage.makedirs(out_dir)
    _compatible_manifest(storage.join(out_dir, S.manifest_name(part_i)), classes, spec)  # fail before any work
    state = {"classes": list(classes), "video": spec.video_manifest(), "audio": spec.audio_manifest(),
             "part": list(part) if part else None, "jobs": len(jobs)}
    prev = _start(out_dir, split, part_i, jobs, state, resume=resume, overwrite=overwrite)
    rejected = list(prev.rejected)
    done = {m["key"] for m in prev.metas} | {r["key"] for r in rejected}
    todo = [j for j in jobs if j.key not in done]
    metas: List[Dict] = list(prev.metas)
    writer = ShardWriter(out_dir, split, part=part_i, start_index=(prev.old[-1][0] + 1) if prev.old else 0,
                         shard_samples=shard_samples, shard_bytes=shard_bytes,
                         on_shard=lambda info, shard_metas: metas.extend(shard_metas))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"{desc} {split}", unit="clip",
                   dynamic_ncols=True, file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 15.0)
    try:
        _run_jobs(todo, work, writer, _journal_path(out_dir, split, part_i), rejected, workers=workers, bar=bar)
    finally:
        if bar is not None:
            bar.close()
    try:
        man = _write_manifest(out_dir, split, part, keys, metas, prev.prior + writer.shards, rejected,
                              classes=classes, spec=spec, pre_rejected=pre_rejected, source_info=source_info,
                              # shards resumed from a run before digests existed have none in their .json
                              digest_ok=all(S.DIGEST_FIELD in m for m in prev.metas))
        to_retry = sum(1 for r in rejected if r.get("retry"))
        storage.write_json(_state_path(out_dir, split, part_i), dict(state, finished=True, to_retry=to_retry))
    except OSError as e:
        raise ShardWriteError(storage.join(out_dir, S.manifest_name(part_i)), e, what="the manifest") from e
    return man


def _write_manifest(out_dir: str, split: str, part, keys: Sequence[str], metas: List[Dict],
                    shards: List[S.ShardInfo], rejected: List[Dict], *, classes, spec: EncodeSpec,
                    pre_rejected, source_info, digest_ok: bool) -> S.Manifest:
    """Update the (part) manifest with this split's statistics, shards and rejections."""
    part_i = part[0] if part else None
    order = {k: i for i, k in enumerate(keys)}
    metas.sort(key=lambda m: order.get(m["key"], 0))
    mpath = storage.join(out_dir, S.manifest_name(part_i))
    man = _compatible_manifest(mpath, classes, spec) or S.Manifest(classes=list(classes))
    stats = split_stats(metas, len(classes))
    all_rejected = [dict(r, split=split) for r in pre_rejected] + [
        {"source": r["source"], "reason": r["reason"], "key": r["key"], "split": split, "retry": bool(r.get("retry"))}
        for r in rejected]
    stats["rejected"] = len(all_rejected)
    stats["to_retry"] = sum(1 for r in rejected if r.get("retry"))
    stats["digest"] = S.DIGEST_ALGO if digest_ok else None
    man.splits[split] = stats
    man.shards = [s for s in man.shards if s.split != split] + shards
    man.shards.sort(key=lambda s: (S.SPLITS.index(s.split), s.path))
    man.video = spec.video_manifest()
    man.audio = spec.audio_manifest()
    man.members = dict(man.members, audio=spec.audio_format)
    man.rejected = [r for r in man.rejected if r.get("split") != split] + all_rejected
    all_digest = all(st.get("digest") == S.DIGEST_ALGO for st in man.splits.values())
    man.integrity = {"digest": S.DIGEST_ALGO} if all_digest else {}
    src = dict(man.source)
    if part:
        src["part"] = list(part)
    src.setdefault("splits", {})[split] = dict(source_info or {}, jobs=len(keys))
    man.source = src
    man.root = storage.absolute(out_dir)
    man.save(mpath)
    _readable(mpath)
    return S.load_manifest(mpath)  # as a reader sees it (JSON types)


def split_report(man: S.Manifest, split: str, limit: int = 20) -> Tuple[List[str], Optional[str]]:
    """``(lines, failure)`` summing up a packed split for the user: counts and rejections;
    ``failure`` is one line when the run did not do its job (no sample packed -- every input
    rejected --, or samples waiting for a retry), else None."""
    st = man.splits.get(split, {})
    rej = [r for r in man.rejected if r.get("split") == split]
    lines = [f"{storage.redact(man.root)}: {split} {st.get('samples', 0)} samples in "
             f"{sum(1 for s in man.shards if s.split == split)} shards, {len(rej)} rejected"]
    lines += [f"  {'failed' if r.get('retry') else 'rejected'} {r['source']}: {r['reason']}" for r in rej[:limit]]
    if len(rej) > limit:
        lines.append(f"  ... {len(rej) - limit} more in the manifest")
    retry = sum(1 for r in rej if r.get("retry"))
    if not st.get("samples"):
        failure = (f"every input was rejected ({len(rej)} of {len(rej)}): nothing was packed" if rej
                   else "the annotations list no video: nothing was packed")
    elif retry:
        failure = (f"{retry} sample(s) not packed for a non-input reason (see 'failed' above): "
                   "run the same command again with --resume to retry them")
    else:
        failure = None
    return lines, failure


# --------------------------------------------------------------------------- merging parts
def _unfinished_parts(out_dir: str, n: int) -> List[str]:
    """One line per part split that was interrupted or has samples waiting for a retry."""
    out = []
    names = storage.listdir(out_dir)
    for i in range(n):
        head = f".{S.manifest_name(i)}."
        for name in sorted(x for x in names if x.startswith(head) and x.endswith(".state.json")):
            split = name[len(head): -len(".state.json")]
            try:
                st = storage.read_json(storage.join(out_dir, name))
            except (OSError, ValueError):
                st = {}
            if not st.get("finished"):
                out.append(f"part {i} split {split} did not finish (interrupted, or still running): "
                           f"run it again with --part {i}/{n} --resume")
            elif st.get("to_retry"):
                out.append(f"part {i} split {split} has {st['to_retry']} sample(s) not packed for a non-input reason: "
                           f"run it again with --part {i}/{n} --resume")
    return out


def merge_parts(out_dir: str, expect_parts: Optional[int] = None) -> S.Manifest:
    """Join ``manifest-pIIII.json`` of every part into ``manifest.json`` (atomically).

    Checks that all parts ``0..N-1`` are present and finished (every split they started ran
    to its end, and none has samples waiting for a retry: the error names each missing or
    incomplete part), share the vocabulary and video settings, and that every shard they list
    exists; sums per-split sample and class counts; keeps the shard files where they are
    (their names carry the part)."""
    out_dir = storage.strip_credentials(out_dir)
    names = storage.listdir(out_dir)
    paths = [storage.join(out_dir, x) for x in names if re.match(r"^manifest-p\d{4}\.json$", x)]
    if not paths:
        raise FileNotFoundError(f"{storage.redact(out_dir)}: no part manifests (manifest-pIIII.json) to merge; "
                                "pack with --part i/N first")
    mans = [S.load_manifest(p) for p in paths]
    totals = {tuple(m.source.get("part", (None, None)))[1] for m in mans}
    if len(totals) != 1 or None in totals:
        raise ValueError(f"{storage.redact(out_dir)}: part manifests disagree on the number of parts: {sorted(map(str, totals))}")
    n = totals.pop() if expect_parts is None else expect_parts
    have = sorted(m.source["part"][0] for m in mans)
    missing = sorted(set(range(n)) - set(have))
    problems = ([f"parts {missing} of {n} are missing (have {have}; a part writes its manifest when it finishes)"]
                if missing else []) + _unfinished_parts(out_dir, n)
    if problems:
        raise ValueError(f"{storage.redact(out_dir)}: cannot merge: {'; '.join(problems)}")
    first = mans[0]
    for p, m in zip(paths, mans):
        p = storage.redact(p)
        if m.classes != first.classes:
            raise ValueError(f"{p}: vocabulary differs from {storage.redact(paths[0])}")
        if m.video != first.video or m.audio != first.audio:
            raise ValueError(f"{p}: video/audio settings differ from {storage.redact(paths[0])}: {m.video} vs {first.video}")
        for s in m.shards:
            for f in (s.path, s.index):
                if f not in names and not storage.exists(storage.join(out_dir, f)):
                    raise FileNotFoundError(f"{p} lists {f}, which is not in {storage.redact(out_dir)}")
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
        integrity=dict(first.integrity) if all(m.integrity == first.integrity for m in mans) else {},
        root=storage.absolute(out_dir))
    merged.save(storage.join(out_dir, S.MANIFEST_NAME))
    _readable(storage.join(out_dir, S.MANIFEST_NAME))
    return S.load_manifest(out_dir)
