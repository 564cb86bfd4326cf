"""Files from strangers (issue 18): a manifest, a shard, a checkpoint or a concept set someone
else made is data. Each test builds the hostile file and asserts the exact outcome: nothing
written outside the folder the user named, no memory allocated for a size a file only claims,
and one line naming the file for what cannot be used.

Oracles: the file system around the dataset (what exists outside it, byte for byte), the
sizes in the files themselves (zip metadata, PNG/JPEG headers), ``tracemalloc``/``ru_maxrss``
for what was allocated.
"""
import json
import os
import shutil
import tarfile
import warnings

import pytest

from mmit_fast import shards as S
from mmit_fast.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """4 synthetic videos in one test shard (with ground truth for the Broden export)."""
    from mmit_fast.pack.synth import generate_dataset

    d = tmp_path_factory.mktemp("hostile") / "ds"
    generate_dataset(str(d), num_videos=4, size=32, seconds=0.4, splits=(0, 0, 1), workers=1, progress=False)
    return str(d)


def _cli(capsys, *argv):
    capsys.readouterr()
    rc = main(list(argv))
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    return rc, err


def _tree(root):
    """{relative path: bytes} of every file under ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


# --------------------------------------------------------------------------- manifest paths
def _doctored(dataset, tmp_path, shard_path):
    """A copy of the dataset whose manifest lists its shard as ``shard_path`` (the tar copied
    there when it lies outside), with no .idx next to that tar."""
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    man = json.loads((ds / "manifest.json").read_text())
    tar = ds / man["shards"][0]["path"]
    target = shard_path if os.path.isabs(shard_path) else os.path.normpath(ds / shard_path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy(tar, target)
    man["shards"][0]["path"] = shard_path
    man["shards"][0]["index"] = shard_path[:-4] + ".idx"
    (ds / "manifest.json").write_text(json.dumps(man))
    return ds


@pytest.mark.parametrize("where", ["../outside/test-000000.tar", "ABS", "sub/../../outside/test-000000.tar"])
def test_manifest_shard_paths_must_stay_inside_the_dataset(dataset, tmp_path, capsys, where):
    """``mmit inspect --fix-index`` used to write outside/test-000000.idx; every verb that reads
    the manifest now refuses it with one line naming the manifest and the path."""
    path = str(tmp_path / "outside" / "test-000000.tar") if where == "ABS" else where
    ds = _doctored(dataset, tmp_path, path)
    before = _tree(tmp_path / "outside")
    rc, err = _cli(capsys, "inspect", str(ds), "--fix-index", "--no-decode")
    want = (f"mmit inspect: error: {ds / 'manifest.json'}: shard path {path!r} is not inside the dataset folder "
            "(absolute, or through '..'); a manifest names its shards relative to its folder")
    assert rc == 2 and err == [want]
    assert _tree(tmp_path / "outside") == before
    with pytest.raises(S.ShardFormatError, match="is not inside the dataset folder"):
        S.load_manifest(str(ds))  # what train, eval, predict, cam, dissect and synth read through
    rc, err = _cli(capsys, "train", "--data", str(ds), "--out", str(tmp_path / "run"), "--train-split", "test")
    assert rc == 2 and err == [want.replace("mmit inspect", "mmit train")]


def test_export_broden_names_files_from_valid_keys_only(dataset, tmp_path):
    """Two samples of the shard renamed ``../../../evil`` and an absolute path: both are
    skipped and counted; the other two are exported; nothing appears outside the output."""
    from mmit_fast.pack.synth import export_broden

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    tar = ds / json.loads((ds / "manifest.json").read_text())["shards"][0]["path"]
    keys = []
    with tarfile.open(tar) as tf:
        members = [(ti, tf.extractfile(ti).read()) for ti in tf]
    hostile = {}
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as tf:
        for ti, data in members:
            key, ext = ti.name.split(".", 1)
            if key not in keys:
                keys.append(key)
            if keys.index(key) < 2:
                bad = "../../../evil" if keys.index(key) == 0 else str(tmp_path / "abs" / "evil")
                hostile[key] = bad
                ti.name = f"{bad}.{ext}"
            tf.addfile(ti, __import__("io").BytesIO(data))
    out = tmp_path / "deep" / "er" / "broden"
    before = set(_tree(tmp_path))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        export_broden(str(ds), str(out), split="test", frames_per_video=1)
    new = set(_tree(tmp_path)) - before
    assert new and all(p.startswith(os.path.join("deep", "er", "broden") + os.sep) for p in new), sorted(new)
    assert not os.path.exists(tmp_path / "abs")
    assert {row.split(",")[0].rsplit("_f", 1)[0] for row in (out / "index.csv").read_text().splitlines()[1:]} == \
        set(keys[2:])
    msgs = [str(x.message) for x in w if "export_broden" in str(x.message)]
    assert len(msgs) == 1 and "skipped 2 sample(s) whose tar member names are not sample keys" in msgs[0], msgs
    assert repr("../../../evil") in msgs[0]


# --------------------------------------------------------------------------- manifest size bombs
def test_a_huge_or_deeply_nested_manifest_is_one_line(dataset, tmp_path, capsys):
    huge = tmp_path / "huge"
    huge.mkdir()
    with open(huge / "manifest.json", "wb") as f:
        f.truncate(200 << 20)  # 200 MB, sparse: nothing is read
    rc, err = _cli(capsys, "inspect", str(huge))
    assert rc == 2 and err == [f"mmit inspect: error: {huge / 'manifest.json'}: 209715200 bytes, more than a manifest "
                               f"may hold ({S.MAX_MANIFEST_BYTES} bytes); not a dataset manifest?"]
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    rc, err = _cli(capsys, "inspect", str(deep))
    assert rc == 2 and err == [f"mmit inspect: error: {deep / 'manifest.json'}: JSON nested deeper than a manifest "
                               "can be (not a dataset manifest?)"]
