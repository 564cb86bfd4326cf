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


# --------------------------------------------------------------------------- checkpoint size bombs
MIB = 1 << 20


class _ZeroDeflater:
    """A zlib compressor for 1 MiB chunks of zeros: one precomputed full-flush block each (so
    a 1 GiB record of zeros deflates in no time to ~1 MB)."""

    def __init__(self):
        import zlib

        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        self.block = c.compress(bytes(MIB)) + c.flush(zlib.Z_FULL_FLUSH)
        self.tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush()

    def compress(self, data):
        assert len(data) == MIB
        return self.block

    def flush(self):
        return self.tail


def zip_bomb(path, claim_mib, key="conv1.weight"):
    """A torch file of ~1 MB whose one tensor ``key`` holds ``claim_mib`` MiB of zeros in a
    deflated zip record (torch.load reads it: it allocates all of it)."""
    import zipfile

    import torch

    tmp = str(path) + ".skip"
    with torch.serialization.skip_data():  # the pickle of a claim_mib tensor, its bytes not written
        torch.save({key: torch.empty(claim_mib * MIB // 4)}, tmp)
    orig = zipfile._get_compressor
    with zipfile.ZipFile(tmp) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if "/data/" not in info.filename:
                dst.writestr(info.filename, src.read(info.filename))
                continue
            zi = zipfile.ZipInfo(info.filename)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zipfile._get_compressor = lambda *a, **k: _ZeroDeflater()
            try:
                with dst.open(zi, "w", force_zip64=True) as f:
                    for _ in range(claim_mib):
                        f.write(bytes(MIB))
            finally:
                zipfile._get_compressor = orig
    os.unlink(tmp)
    return str(path)


def _run_limited(code, limit_gib=3.0):
    """Run ``code`` in a fresh Python whose address space is capped (so a regression fails
    instead of eating the machine); returns (exit code, stdout, stderr, peak RSS in MiB)."""
    import resource
    import subprocess
    import sys

    def cap():
        lim = int(limit_gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    wrapped = ("import resource, sys\ntry:\n" + "".join(f"    {l}\n" for l in code.strip().splitlines())
               + "finally:\n    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=300, env=env,
                       preexec_fn=cap)
    rss = int(p.stdout.rsplit("MAXRSS", 1)[1]) if "MAXRSS" in p.stdout else -1
    return p.returncode, p.stdout, p.stderr, rss


def test_a_checkpoint_size_bomb_is_refused_before_allocating(tmp_path):
    """1 GiB of zeros deflated into a 1 MB file (what torch.save never writes): import-weights,
    eval, finetune and every reader refuse it with one line from the zip's own metadata; the
    process never holds the gigabyte (peak RSS measured)."""
    import zipfile

    bomb = zip_bomb(tmp_path / "bomb.pth", 1024)
    size = os.path.getsize(bomb)
    with zipfile.ZipFile(bomb) as z:
        claim = sum(i.file_size for i in z.infolist())
    assert size < 2 * MIB and claim > 1024 * MIB
    (tmp_path / "cats.txt").write_text("a\nb\n")
    code = f"""
from mmit_fast.cli import main
from mmit_fast.models.checkpoint import CheckpointError, safe_torch_load
rcs = [main(["import-weights", {bomb!r}, "--format", "moments-resnet50", "--categories", {str(tmp_path / 'cats.txt')!r},
             "--out", {str(tmp_path / 'out.pt')!r}]),
       main(["eval", {bomb!r}, "--data", "nowhere"])]
try:
    safe_torch_load({bomb!r})
except CheckpointError as e:
    print("REFUSED", e)
print("RCS", rcs)
"""
    rc, out, err, rss = _run_limited(code)
    assert rc == 0, err[-2000:]
    want = (f"{bomb}: its zip records claim {claim} bytes in a file of {size} bytes (compressed records, which "
            "torch.save never writes); refused before reading them")
    assert f"REFUSED {want}" in out and "RCS [2, 2]" in out, out
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines == [f"mmit import-weights: error: {want}", f"mmit eval: error: {want}"], lines
    assert rss < 900, f"peak RSS {rss} MiB: the claimed gigabyte was allocated"
    assert not os.path.exists(tmp_path / "out.pt")


def test_import_weights_checks_the_layout_before_reading_any_tensor(tmp_path):
    """A real (sparse) 1 GiB file of another layout: the layout is checked on the tensors'
    shapes alone (read on the meta device) and refused, without reading the gigabyte."""
    import torch

    src = str(tmp_path / "big.pth")
    with torch.serialization.skip_data():  # a 1 GiB record of zeros, written as a hole
        torch.save({"state_dict": {"module.features.0.weight": torch.empty(256 * MIB)}}, src)
    assert os.path.getsize(src) > 1024 * MIB
    (tmp_path / "cats.txt").write_text("a\nb\n")
    code = f"""
from mmit_fast.cli import main
print("RC", main(["import-weights", {src!r}, "--format", "moments-resnet50", "--categories",
                  {str(tmp_path / 'cats.txt')!r}, "--out", {str(tmp_path / 'out.pt')!r}]))
"""
    rc, out, err, rss = _run_limited(code)
    assert rc == 0 and "RC 2" in out, err[-2000:]
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"mmit import-weights: error: {src}: not a moments-resnet50 file")
    assert "unexpected (1): features.0.weight" in lines[0]
    assert rss < 900, f"peak RSS {rss} MiB: the file's gigabyte was read before the layout check"


def _tiny_checkpoint(path, **changes):
    """An mmit checkpoint of a tiny I3D (4 classes), with ``changes`` applied to its dict."""
    import torch

    from mmit_fast.models import create_model
    from mmit_fast.models.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    kw = {"depth": 18, "width": 8, "conv1_t": 1}
    model = create_model("i3d", 4, **kw)
    ck = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "classes": ["a", "b", "c", "d"],
          "model_spec": {"name": "i3d", "num_classes": 4, "kwargs": kw}, "modality": "video",
          "model": model.state_dict(), "preprocess": {"frames": 4, "crop": 32, "resize": 36}}
    for k, v in changes.items():
        ck[k] = v
    torch.save(ck, str(path))
    return str(path)


CLAIMS = [
    (dict(model_spec={"name": "i3d", "num_classes": 40_000_000, "kwargs": {"depth": 18, "width": 8, "conv1_t": 1}}),
     "weights do not match its model_spec (i3d, 40000000 classes): wrong shape (2): classifier.weight (4, 64) "
     "(needs (40000000, 64)), classifier.bias (4,) (needs (40000000,))"),
    (dict(preprocess={"frames": 4, "crop": 100_000, "resize": 36}),
     "preprocess crop=100000 is not a sane clip setting (1..4096)"),
    (dict(classes=["a", "b"]), "lists 2 class names for a model of 4 outputs"),
]


def test_a_checkpoint_claiming_sizes_its_weights_do_not_have_is_refused(tmp_path):
    """export used to build a 40M-class classifier (10 GB) from the spec before comparing it
    with the weights, to take a 100000-pixel crop from preprocess, and to export 2 class names
    for 4 outputs; the claims are now checked against the tensors' shapes first (a model
    skeleton on the meta device), with one line naming the file (one capped process)."""
    cks = [_tiny_checkpoint(tmp_path / f"ck{i}.pt", **change) for i, (change, _) in enumerate(CLAIMS)]
    code = "from mmit_fast.cli import main\n" + "".join(
        f"print('RC', main(['export', {ck!r}, '--format', 'torchscript', '--out', {str(tmp_path / 'm.pt')!r}, "
        "'--no-check']))\n" for ck in cks)
    rc, out, err, rss = _run_limited(code)
    assert rc == 0 and out.count("RC 2") == 3, err[-2000:]
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines == [f"mmit export: error: {ck}: {named}" for ck, (_, named) in zip(cks, CLAIMS)], lines
    assert rss < 900 and not os.path.exists(tmp_path / "m.pt")


# --------------------------------------------------------------------------- concept sets (Broden)
def _png_header_only(path, w, h):
    """A PNG whose header claims ``w x h`` pixels (and holds no pixel data)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))


def test_concept_set_rows_claiming_huge_images_or_outside_files_are_skipped_and_counted(tmp_path):
    """index.csv rows: one claiming 40000x40000 pixels for a 16x16 file, one whose PNG header
    claims 40000x40000, one naming ../../outside.png: dissection used to allocate 4.8 GB and die
    with MemoryError (or read the outside file); each is now skipped with its reason, and the
    run finishes on the four good images."""
    tests = os.path.dirname(os.path.abspath(__file__))
    code = f"""
import json, shutil, sys
sys.path.insert(0, {tests!r})
from test_hostile_files import _png_header_only
from test_interpret_dissect import _Oracle, make_broden
from mmit_fast.data.sampling import ClipSpec
from mmit_fast.interpret.broden import Broden
from mmit_fast.interpret.dissect_run import dissect_model
root = {str(tmp_path / 'b')!r}
extra = [["big.png", "test", 40000, 40000, 40000, 40000, "", "", "3", ""],
         ["hdr.png", "test", 16, 16, 16, 16, "", "", "3", ""],
         ["bomb.png", "test", 16, 16, 16, 16, "", "", "3", ""],
         ["../../outside.png", "test", 16, 16, 16, 16, "", "", "3", ""]]
make_broden(root, rows_extra=extra)
shutil.copy(root + "/images/im0.png", root + "/images/big.png")
shutil.copy(root + "/images/im0.png", {str(tmp_path / 'outside.png')!r})
_png_header_only(root + "/images/hdr.png", 5000, 5000)
_png_header_only(root + "/images/bomb.png", 40000, 40000)
raw = dissect_model(_Oracle().eval(), ClipSpec(frames=2, stride=1, crop=16), (0.5,) * 3, (0.25,) * 3, Broden(root),
                    ["layer4"], quantile=8 / 256, batch_size=3)
print("SKIPPED", json.dumps(raw["skipped"]))
print("RED_IOU", float(raw["layers"]["layer4"]["iou"].iou()[0, raw["concepts"].index(1)]))
"""
    rc, out, err, rss = _run_limited(code)
    assert rc == 0, err[-3000:]
    skipped = json.loads(out.split("SKIPPED ", 1)[1].splitlines()[0])
    index = f"{tmp_path / 'b'}/index.csv"
    assert skipped == {
        "big.png": f"{index}:6: image big.png claims 40000x40000 pixels (masks 40000x40000), more than the "
                   f"16777216 a concept image may have",
        "hdr.png": f"{tmp_path / 'b'}/images/hdr.png: its header claims 5000x5000 pixels, more than the 16777216 "
                   "a concept image may have",
        "bomb.png": skipped["bomb.png"],
        "../../outside.png": f"{index}:9: image '../../outside.png' is not a file inside {tmp_path / 'b'}/images",
    }
    assert "RED_IOU 1.0" in out  # the hand-built unit still finds its concept on the good images
    assert skipped["bomb.png"].startswith(f"{tmp_path / 'b'}/images/bomb.png: its header claims more than the "
                                          "16777216 pixels a concept image may have (PIL: Image size (1600000000")
    assert rss < 900


# --------------------------------------------------------------------------- the user's own --out folder
@pytest.fixture(scope="module")
def interp(tmp_path_factory):
    """A tiny synthetic test split with its Broden export, and a small checkpoint of its 24 classes."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _interpret_util import tiny_synth, write_checkpoint

    root = tmp_path_factory.mktemp("interp")
    data, broden, classes = tiny_synth(str(root))
    return data, broden, write_checkpoint(str(root / "ck.pt"), classes=classes)


@pytest.mark.parametrize("verb", ["cam", "dissect"])
def test_cam_and_dissect_never_overwrite_the_users_own_folder(interp, tmp_path, capsys, verb):
    """--out is a folder of the user's own (index.html, report.html, summary.json, table5.md):
    refused with one line, every file as it was; an empty or new folder is used, and the same
    verb may write again into the folder it made (its marker file)."""
    data, broden, ck = interp
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("index.html", "report.html", "summary.json", "table5.md"):
        (mine / name).write_text(f"my own {name}\n")
    before = _tree(mine)
    argv = (["cam", f"{data}:test", "--limit", "1"] if verb == "cam" else ["dissect", broden, "--layers", "layer4"])
    argv += ["--checkpoint", ck, "--device", "cpu"]
    rc, err = _cli(capsys, *argv, "--out", str(mine))
    assert rc == 2 and err == [f"mmit {verb}: error: --out {mine}: a folder with files of its own (index.html, "
                               f"report.html, summary.json, ...), not the output of an earlier mmit {verb}: nothing "
                               "is written there; give a new or empty folder"], err
    assert _tree(mine) == before
    out = tmp_path / "new"
    assert _cli(capsys, *argv, "--out", str(out))[0] == 0
    assert (out / ".mmit-output").read_text() == json.dumps({"verb": verb}) + "\n"
    assert _cli(capsys, *argv, "--out", str(out))[0] == 0   # its own folder: written again
    other = "dissect" if verb == "cam" else "cam"
    rc, err = _cli(capsys, *(["cam", f"{data}:test", "--limit", "1"] if other == "cam" else
                             ["dissect", broden, "--layers", "layer4"]), "--checkpoint", ck, "--device", "cpu",
                   "--out", str(out))
    assert rc == 2 and err == [f"mmit {other}: error: --out {out}: holds the output of mmit {verb}, not of mmit "
                               f"{other}: nothing is written there; give a new or empty folder"], err


# --------------------------------------------------------------------------- mmit predict: long videos, vocabularies
def _testsrc(path, seconds, size="640x360", gop=250):
    import subprocess

    from mmit_fast.pack.transcode import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate=25:duration={seconds}", "-c:v", "libx264", "-preset", "ultrafast",
                    "-crf", "40", "-g", str(gop), "-pix_fmt", "yuv420p", str(path)], check=True)
    return str(path)


def test_predict_reads_a_long_video_in_bounded_memory(interp, tmp_path):
    """A 60 s 640x360 video (1500 frames: 1 GB decoded) and a 4 s one: `mmit predict` peaks at
    the same memory for both (it decodes only the sampled frames, seeking to the keyframe
    before them, and keeps them at the view's size), and prints one line for the clip."""
    ck = interp[2]
    short, long_ = _testsrc(tmp_path / "short.mp4", 4), _testsrc(tmp_path / "long.mp4", 60)
    peaks = {}
    for name, video in (("short", short), ("long", long_)):
        out = tmp_path / f"out_{name}"
        code = f"""
from mmit_fast.cli import main
print("RC", main(["predict", {video!r}, "--checkpoint", {ck!r}, "--device", "cpu", "--out", {str(out)!r}]))
"""
        rc, stdout, err, rss = _run_limited(code)
        assert rc == 0 and "RC 0" in stdout, err[-2000:]
        assert len([l for l in stdout.splitlines() if l.startswith(f"{name}: ")]) == 1, stdout
        peaks[name] = rss
    print("PEAKS", peaks)
    assert peaks["long"] - peaks["short"] < 48, peaks


def test_video_file_clip_equals_a_full_decode_and_ffmpegs_frames(tmp_path):
    """The seeking reader's clip of a 3 s video (keyframe every 16 frames) equals the clip cut
    from a full decode of every frame (exactly), and the frames ffmpeg's own decoder gives for
    the planned indices (within 2 grey levels: another YUV->RGB rounding)."""
    import subprocess

    import numpy as np

    from mmit_fast.data.sampling import ClipSpec, plan_views
    from mmit_fast.interpret.source import _decode, _view, iter_clips
    from mmit_fast.pack.transcode import ffmpeg_exe

    video = _testsrc(tmp_path / "v.mp4", 3, size="96x64", gop=16)
    for spec in (ClipSpec(mode="consecutive", frames=8, stride=3, crop=48, flip=False),
                 ClipSpec(mode="segments", frames=6, crop=40, resize=56, flip=False)):
        (item,) = list(iter_clips(video, spec, []))
        full, plan, _ = _view(_decode(open(video, "rb").read(), video), spec)
        np.testing.assert_array_equal(item.frames, full)
        idx = plan_views(75, 64, 96, 25.0, spec, train=False)[0].indices
        sel = "+".join(f"eq(n\\,{i})" for i in sorted(set(int(i) for i in idx)))
        raw = subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", video, "-vf", f"select='{sel}'", "-vsync", "0",
                              "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
        ff = np.frombuffer(raw, np.uint8).reshape(-1, 64, 96, 3)
        order = {v: k for k, v in enumerate(sorted(set(int(i) for i in idx)))}
        from mmit_fast.data.pyav import resize_clip

        ref = resize_clip(ff[[order[int(i)] for i in idx]], plan.resize_hw)
        y, x = plan.crop_yx
        ref = ref[:, y:y + plan.crop, x:x + plan.crop]
        assert np.abs(ref.astype(int) - item.frames.astype(int)).max() <= 2


def test_predict_compares_vocabularies_by_name(interp, tmp_path, capsys):
    """The 24-class synthetic shard with a checkpoint of 4 other classes: refused with one line
    (it used to print wrong truth for every clip); with the same 24 names in another order:
    truth and predictions matched by name, said in one note line."""
    import random
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _interpret_util import write_checkpoint

    from mmit_fast.pack.writer import iter_tar_samples

    data, _, ck = interp
    classes = S.load_manifest(data).classes
    other = write_checkpoint(str(tmp_path / "four.pt"), num_classes=4, classes=["cat", "dog", "car", "tree"])
    rc, err = _cli(capsys, "predict", f"{data}:test", "--checkpoint", other, "--no-cam", "--device", "cpu")
    assert rc == 2 and err == [f"mmit predict: error: {data}: its vocabulary (24 classes: {', '.join(classes[:3])}, "
                               "...) shares no class name with the checkpoint's (4 classes: cat, dog, car, ...): "
                               "not this model's data"], err
    shuffled = list(classes)
    random.Random(0).shuffle(shuffled)
    perm = write_checkpoint(str(tmp_path / "perm.pt"), num_classes=24, classes=shuffled)
    capsys.readouterr()
    from mmit_fast.cli import main

    assert main(["predict", f"{data}:test", "--checkpoint", perm, "--no-cam", "--device", "cpu", "--top-k", "2"]) == 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [f"mmit predict: note: {data} orders its 24 classes differently from the "
                                        "checkpoint: truth and predictions are matched by name"]
    truth = {}
    for shard in S.load_manifest(data).shard_paths("test"):
        for key, mem in iter_tar_samples(shard):
            truth[key] = [classes[i] for i in S.decode_label_ids(mem["ids"])]
    lines = out.strip().splitlines()
    assert len(lines) == len(truth)
    for line in lines:
        key = line.split(":", 1)[0]
        assert line.endswith(f"(truth: {', '.join(truth[key])})"), line
