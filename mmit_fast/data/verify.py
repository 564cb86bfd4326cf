"""Checking a sample's members before anything decodes them.

Each sample's ``<key>.json`` records the CRC-32 of every other member and of itself (see
:mod:`mmit_fast.shards`). The loader reads a sample's members (metadata, labels, video and,
when asked, audio) and, before decoding, checks:

1. the metadata names the sample's key (an index pointing at another sample's bytes), and
   matches its own digest (an edited or damaged ``.json``);
2. each member read against its recorded digest (damaged bytes inside the mp4, the labels,
   the audio), and that every member the sample was packed with is still in the shard;
3. ``.ids`` against the metadata's ``label_ids`` (the two must agree, digests or not).

A failure raises :class:`~mmit_fast.shards.IntegrityError` (a ``ShardFormatError``): the
sample is skipped and counted with that reason, which names the shard, key and member.

Modes (``SampleTable.verify``): ``"require"`` (the manifest says the shards carry digests: a
sample without one is damaged), ``"optional"`` (shards from before digests: checked when
present), ``"off"`` (``make_loader(..., verify_digests=False)``: only the label cross-check).
Cost: one CRC-32 pass over the bytes read (~0.4 ms per MB), 0.3-0.35% of the PyAV loader's
CPU time per clip (``benchmarks/bench_digest.py``).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .. import shards as S

MODES = ("require", "optional", "off")


def sample_digests(mode: str, meta: Dict, ref, where: str) -> Optional[Dict[str, str]]:
    """The recorded member digests of sample ``ref`` (an ``index.SampleRef``; None when not
    checked), after checking that the metadata read names the sample's key, the metadata's
    own digest, and that every recorded member is present in the shard."""
    if meta.get("key") != ref.key:
        raise S.IntegrityError(f"{where}: member .{S.META_EXT} belongs to sample {meta.get('key')!r}, not to "
                               f"{ref.key!r} (the index points at another sample's bytes)")
    if mode == "off":
        return None
    member_exts = ref.members
    digests = S.sample_digests(meta, where)
    if digests is None:
        if mode == "require":
            raise S.IntegrityError(f"{where}: member .{S.META_EXT} has no digest, but the dataset was packed with "
                                   "digests (the metadata was replaced)")
        return None
    missing = sorted(set(digests) - set(member_exts))
    if missing:
        raise S.IntegrityError(f"{where}: member(s) {', '.join('.' + e for e in missing)} packed with the sample "
                               "are missing from the shard")
    return digests


def check_member(digests: Optional[Dict[str, str]], ext: str, data: Optional[bytes], where: str) -> None:
    """Raise unless member ``.ext`` matches its digest (no-op when digests are not checked)."""
    if digests is not None and data is not None:
        S.check_member(digests, ext, data, where)


def label_ids(meta: Dict, ids_member: Optional[bytes], where: str) -> np.ndarray:
    """The sample's label ids: ``.ids``, which must equal the metadata's ``label_ids``."""
    ids = S.decode_label_ids(ids_member) if ids_member is not None else np.asarray(meta["label_ids"], np.int64)
    if ids_member is not None and ids.tolist() != [int(i) for i in meta["label_ids"]]:
        raise S.IntegrityError(f"{where}: member .{S.LABEL_EXT} holds label ids {ids.tolist()} but the metadata "
                               f"says {list(meta['label_ids'])}")
    return ids
