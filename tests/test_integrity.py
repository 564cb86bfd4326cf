"""Damaged shards (issue 8, cases 1-3): each test damages a copy of a tiny packed dataset
itself and asserts the exact outcome: the damaged sample skipped with a reason that names
shard, key and member, and every intact sample delivered once with its right label.

Oracles: the shards read with ``tarfile`` before the damage (labels, member bytes), and
``zlib.crc32`` (digests)."""
import json
import os
import shutil
import tarfile
import warnings
import zlib

import numpy as np
import pytest

from mmit_fast import shards as S
from mmit_fast.cli import main
from mmit_fast.data import ClipSpec, make_loader
from mmit_fast.data import dali as D
from mmit_fast.pack import inspect_shard
from mmit_fast.pack.writer import ShardWriter, Sample, index_entries_of_tar, read_index

SPEC = ClipSpec("consecutive", frames=4, stride=2, crop=32, resize=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from mmit_fast.pack.synth import generate_dataset

    d = tmp_path_factory.mktemp("integrity") / "ds"
    generate_dataset(str(d), num_videos=6, size=48, seconds=1.0, splits=(1, 0, 0), shard_samples=3, workers=2,
                     progress=False)
    return str(d)


def _copy(dataset, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(dataset, out)
    return str(out)


def _members(ds):
    """{key: {ext: (tar path, data offset, bytes)}} read with tarfile (the independent oracle)."""
    man = S.load_manifest(ds)
    out = {}
    for tar in man.shard_paths("train"):
        with tarfile.open(tar) as tf:
            for ti in tf:
                key, ext = ti.name.split(".", 1)
                out.setdefault(key, {})[ext] = (tar, ti.offset_data, tf.extractfile(ti).read())
    return out


def _labels(members):
    return {k: S.decode_label_ids(m["ids"][2]).tolist() for k, m in members.items()}


def _overwrite(tar, offset, data):
    with open(tar, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _load_all(ds, backend="pyav", **kw):
    """Every (key, label ids) the loader delivers in one evaluation epoch, and the loader."""
    ld = make_loader(ds, "train", clip=SPEC, batch_size=6, train=False, backend=backend, num_workers=0,
                     with_audio=True, **kw)
    got = {}
    for b in ld:
        for key, t in zip(b.keys, b.targets):
            assert key not in got
            got[key] = np.flatnonzero(t.numpy()).tolist()
    return got, ld


def _expect_one_skip(ld, tar, key, reason_part):
    assert ld.skipped == 1
    (shard, k, reason), = ld.skipped_samples
    assert (shard, k) == (tar, key)
    assert reason.startswith(f"{tar}:{key}: ") and reason_part in reason, reason


# --------------------------------------------------------------------------- digests written
def test_every_member_carries_its_crc32(dataset):
    man = S.load_manifest(dataset)
    assert man.integrity == {"digest": "crc32"}
    for key, mem in _members(dataset).items():
        meta = json.loads(mem["json"][2])
        d = meta["digest"]
        assert d["algo"] == "crc32"
        assert set(d["members"]) == set(mem) - {"json"}
        for ext, (_, _, data) in mem.items():
            if ext != "json":
                assert d["members"][ext] == f"{zlib.crc32(data):08x}"
        core = {k: v for k, v in meta.items() if k != "digest"}
        assert d["meta"] == f"{zlib.crc32(json.dumps(core, sort_keys=True).encode()):08x}"


# --------------------------------------------------------------------------- case 1
@pytest.mark.parametrize("backend", ["pyav", pytest.param("dali", marks=pytest.mark.skipif(
    not D.available(), reason="NVIDIA DALI not installed"))])
def test_corrupted_video_bytes_are_skipped_with_shard_key_and_member(dataset, tmp_path, backend):
    ds = _copy(dataset, tmp_path)
    before = _members(ds)
    labels = _labels(before)
    key = sorted(before)[1]
    tar, off, mp4 = before[key]["mp4"]
    # a few KB overwritten inside the mdat (faststart: moov first, so the tail is frame data)
    start = len(mp4) // 2
    n = min(2048, len(mp4) - start)
    _overwrite(tar, off + start, np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes())
    with tarfile.open(tar) as tf:
        assert len(tf.getmembers()) > 0   # the tar itself is still valid
    with pytest.warns(RuntimeWarning, match=f"skipped bad sample {key}"):
        got, ld = _load_all(ds, backend)
    assert ld.backend == backend
    _expect_one_skip(ld, tar, key, "member .mp4 is damaged: crc32")
    assert got == {k: v for k, v in labels.items() if k != key}   # every intact sample, its right label

    rep = inspect_shard(tar, out=None)
    assert [e for e in rep["errors"] if "damaged" in e] == [
        f"{os.path.basename(tar)}:{key}: member .mp4 is damaged: crc32 {zlib.crc32(_members(ds)[key]['mp4'][2]):08x} "
        f"!= {zlib.crc32(mp4):08x} recorded at packing"]


def test_damaged_audio_and_metadata_are_skipped(dataset, tmp_path):
    ds = _copy(dataset, tmp_path)
    before = _members(ds)
    labels = _labels(before)
    with_audio = sorted(k for k, m in before.items() if "flac" in m)
    k_audio, k_meta = with_audio[0], sorted(set(before) - {with_audio[0]})[0]
    tar_a, off_a, flac = before[k_audio]["flac"]
    _overwrite(tar_a, off_a + len(flac) - 40, b"\x00" * 20)
    # the metadata: a digit of "frames" changed, still valid JSON
    tar_m, off_m, js = before[k_meta]["json"]
    meta = json.loads(js)
    i = js.index(b'"frames": ') + len(b'"frames": ')
    _overwrite(tar_m, off_m + i, str((meta["frames"] + 1) % 10).encode())
    assert json.loads(open(tar_m, "rb").read()[off_m: off_m + len(js)])   # still parses
    with pytest.warns(RuntimeWarning):
        got, ld = _load_all(ds)
    reasons = {k: r for _, k, r in ld.skipped_samples}
    assert set(reasons) == {k_audio, k_meta}
    assert "member .flac is damaged" in reasons[k_audio]
    assert reasons[k_meta].startswith(f"{tar_m}:{k_meta}: member .json is damaged: crc32")
    assert got == {k: v for k, v in labels.items() if k not in reasons}


# --------------------------------------------------------------------------- case 2
def test_edited_label_member_is_skipped_not_mislabelled(dataset, tmp_path):
    ds = _copy(dataset, tmp_path)
    before = _members(ds)
    labels = _labels(before)
    key = sorted(before)[4]
    tar, off, ids = before[key]["ids"]
    wrong = [(labels[key][0] + 1) % 24] + labels[key][1:]
    _overwrite(tar, off, S.encode_label_ids(wrong))
    with pytest.warns(RuntimeWarning):
        got, ld = _load_all(ds)
    _expect_one_skip(ld, tar, key, "member .ids is damaged")
    assert got == {k: v for k, v in labels.items() if k != key}


def _strip_digests(ds):
    """Rewrite ``ds`` as a dataset packed before digests existed (no "digest" in .json,
    no manifest.integrity)."""
    man = S.load_manifest(ds)
    for info in man.shard_infos("train"):
        tar = os.path.join(ds, info.path)
        samples = []
        for key, mem in _members_of(tar):
            meta = json.loads(mem["json"])
            meta.pop("digest")
            mem["json"] = json.dumps(meta, sort_keys=True).encode()
            samples.append(Sample(key, mem, meta))
        os.unlink(tar)
        os.unlink(os.path.join(ds, info.index))
        w = ShardWriter(ds, "train", start_index=int(info.path[-10:-4]), shard_samples=100)
        for smp in samples:
            w.write(smp)
        w.close()
    d = json.load(open(os.path.join(ds, "manifest.json")))
    d.pop("integrity")
    json.dump(d, open(os.path.join(ds, "manifest.json"), "w"))


def _members_of(tar):
    out = []
    with tarfile.open(tar) as tf:
        for ti in tf:
            key, ext = ti.name.split(".", 1)
            if not out or out[-1][0] != key:
                out.append((key, {}))
            out[-1][1][ext] = tf.extractfile(ti).read()
    return out


def test_old_shards_without_digests_load_with_one_note_and_labels_are_cross_checked(dataset, tmp_path):
    ds = _copy(dataset, tmp_path)
    _strip_digests(ds)
    before = _members(ds)
    labels = _labels(before)
    assert all("digest" not in json.loads(m["json"][2]) for m in before.values())
    key = sorted(before)[2]
    tar, off, _ = before[key]["ids"]
    wrong = [(labels[key][0] + 3) % 24] + labels[key][1:]
    _overwrite(tar, off, S.encode_label_ids(wrong))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got, ld = _load_all(ds)
        _load_all(ds)   # a second loader on the same dataset: no second note
    notes = [str(w.message) for w in rec if "carry no member digests" in str(w.message)]
    assert len(notes) == 1 and os.path.abspath(ds) in notes[0]
    assert ld.table.verify == "optional"
    _expect_one_skip(ld, tar, key, f"member .ids holds label ids {wrong} but the metadata says {labels[key]}")
    assert got == {k: v for k, v in labels.items() if k != key}
    # inspect notes the missing digests and still finds the label mismatch
    lines = []
    rep = inspect_shard(tar, out=lines.append, decode=False)
    assert rep["digests"] is False and any("carry no member digests" in l for l in lines)
    assert any(f".ids {wrong} != metadata label_ids {labels[key]}" in e for e in rep["errors"])


def test_digest_check_can_be_turned_off_but_labels_are_still_cross_checked(dataset, tmp_path):
    ds = _copy(dataset, tmp_path)
    before = _members(ds)
    labels = _labels(before)
    key = sorted(before)[0]
    tar, off, _ = before[key]["ids"]
    wrong = [(labels[key][0] + 5) % 24] + labels[key][1:]
    _overwrite(tar, off, S.encode_label_ids(wrong))
    with pytest.warns(RuntimeWarning):
        got, ld = _load_all(ds, verify_digests=False)
    assert ld.table.verify == "off"
    _expect_one_skip(ld, tar, key, f"member .ids holds label ids {wrong} but the metadata says {labels[key]}")
    assert got == {k: v for k, v in labels.items() if k != key}


def test_a_sample_whose_digest_record_was_removed_is_damaged(dataset, tmp_path):
    """The manifest says the shards carry digests: metadata without one was replaced."""
    ds = _copy(dataset, tmp_path)
    before = _members(ds)
    key = sorted(before)[5]
    tar, off, js = before[key]["json"]
    meta = json.loads(js)
    meta.pop("digest")
    new = json.dumps(meta, sort_keys=True).encode()
    _overwrite(tar, off, new + b" " * (len(js) - len(new)))   # same member size, valid JSON
    with pytest.warns(RuntimeWarning):
        got, ld = _load_all(ds)
    _expect_one_skip(ld, tar, key, "member .json has no digest, but the dataset was packed with digests")
    assert got == {k: v for k, v in _labels(before).items() if k != key}


# --------------------------------------------------------------------------- case 3
def _index_warnings(rec):
    return [str(w.message) for w in rec if "does not match its shard" in str(w.message)]


def _load_recording(ds):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got, ld = _load_all(ds)
    return got, ld, _index_warnings(rec)


def test_foreign_index_falls_back_to_the_tar_with_one_warning(dataset, tmp_path):
    ds = _copy(dataset, tmp_path)
    labels = _labels(_members(ds))
    man = S.load_manifest(ds)
    idx0, idx1 = man.index_paths("train")
    shutil.copy(idx1, idx0)   # another shard's index: same sample count, other keys and offsets
    got, ld, warned = _load_recording(ds)
    assert len(warned) == 1 and warned[0].startswith(f"index {idx0} does not match its shard (")
    assert "mmit inspect --fix-index" in warned[0]
    assert ld.skipped == 0 and got == labels
    assert [i for i, _ in ld.table.bad_indexes] == [idx0]


def test_stale_index_from_an_older_write_falls_back_and_fix_index_repairs_it(dataset, tmp_path, capsys):
    ds = _copy(dataset, tmp_path)
    labels = _labels(_members(ds))
    man = S.load_manifest(ds)
    tar0, idx0 = man.shard_paths("train")[0], man.index_paths("train")[0]
    stale = open(idx0).read()
    # a newer write of the same shard (its samples in another order) next to the older index
    samples = [Sample(k, m, json.loads(m["json"])) for k, m in _members_of(tar0)][::-1]
    os.unlink(tar0)
    with ShardWriter(ds, "train", start_index=0, shard_samples=100) as w:
        for smp in samples:
            w.write(smp)
    open(idx0, "w").write(stale)
    assert read_index(idx0) != index_entries_of_tar(tar0)
    got, ld, warned = _load_recording(ds)
    assert len(warned) == 1 and f"index {idx0} does not match its shard" in warned[0]
    assert ld.skipped == 0 and got == labels   # no intact sample dropped, none filed under another key

    assert main(["inspect", tar0, "--no-decode"]) == 1
    assert "stale or foreign index" in capsys.readouterr().out
    assert main(["inspect", tar0, "--no-decode", "--fix-index"]) == 0
    assert "rewrote" in capsys.readouterr().out
    assert read_index(idx0) == index_entries_of_tar(tar0)
    got, ld, warned = _load_recording(ds)
    assert warned == [] and got == labels


def test_malformed_or_truncated_index_falls_back(dataset, tmp_path):
    ds = _copy(dataset, tmp_path)
    labels = _labels(_members(ds))
    idx0, idx1 = S.load_manifest(ds).index_paths("train")
    open(idx0, "w").write("v1.2 3\nmp4 not-a-number 12 x.mp4\n")
    lines = open(idx1).read().splitlines()
    open(idx1, "w").write("\n".join([f"v1.2 {len(lines) - 2}"] + lines[1:-1]) + "\n")   # lost its last sample
    got, ld, warned = _load_recording(ds)
    assert len(warned) == 2
    assert "line 2 has a non-integer offset or size" in warned[0]
    assert "does not fit the" in warned[1]
    assert ld.skipped == 0 and got == labels


def test_an_index_row_pointing_at_another_sample_is_never_filed_under_the_wrong_key(dataset, tmp_path):
    """Damage the index checks could miss (rows that agree with the tar at every probe):
    the metadata read names its own key, so the sample is skipped, not mislabelled."""
    ds = _copy(dataset, tmp_path)
    labels = _labels(_members(ds))
    ld = make_loader(ds, "train", clip=SPEC, batch_size=6, train=False, backend="pyav", num_workers=0)
    a, b = ld.table.samples[0], ld.table.samples[1]
    a.members, b.members = b.members, a.members    # each row now points at the other's bytes
    with pytest.warns(RuntimeWarning):
        got = {k: np.flatnonzero(t.numpy()).tolist() for batch in ld for k, t in zip(batch.keys, batch.targets)}
    reasons = {k: r for _, k, r in ld.skipped_samples}
    assert reasons == {a.key: f"{ld.table.shards[0]}:{a.key}: member .json belongs to sample {b.key!r}, not to "
                              f"{a.key!r} (the index points at another sample's bytes)",
                       b.key: f"{ld.table.shards[0]}:{b.key}: member .json belongs to sample {a.key!r}, not to "
                              f"{b.key!r} (the index points at another sample's bytes)"}
    assert got == {k: v for k, v in labels.items() if k not in reasons}
