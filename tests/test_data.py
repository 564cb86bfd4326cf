"""mmit_fast.data loaders against independent oracles: ffmpeg's own decode, the shards read
with ``tarfile``, and set arithmetic over keys. Fixture shards come from the synth generator
(tiny: 64 px, 1.5 s)."""
import io
import json
import os
import shutil
import subprocess
import tarfile
import warnings

import numpy as np
import pytest
import torch

from mmit_fast import shards as S
from mmit_fast.data import ClipSpec, make_loader, resolve_backend
from mmit_fast.data import dali as D

HAS_DALI = D.available()
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI not installed")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1) * 255


# --------------------------------------------------------------------------- fixtures
def _gen(out, codec, n):
    from mmit_fast.pack.synth import generate_dataset

    return generate_dataset(str(out), num_videos=n, size=64, seconds=1.5, fps=25.0, codec=codec, workers=2,
                            shard_samples=4, progress=False)


@pytest.fixture(scope="session")
def vp9_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data_vp9") / "ds"
    _gen(d, "vp9", 12)
    return str(d)


@pytest.fixture(scope="session")
def h264_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data_h264") / "ds"
    _gen(d, "h264", 8)
    return str(d)


@pytest.fixture(scope="session")
def wide_dir(tmp_path_factory):
    """Non-square footage (ffmpeg test patterns, 96x64 -> short side 64) packed by pack_videos."""
    import imageio_ffmpeg

    from mmit_fast.pack import pack_videos

    root = tmp_path_factory.mktemp("data_wide")
    src = root / "src"
    src.mkdir()
    rows = []
    for i in range(4):
        name = f"clip{i}.mp4"
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc2=size=96x64:rate=25:duration=1.2", "-vf", f"hue=h={40 * i}", "-pix_fmt", "yuv420p",
                        "-c:v", "libx264", "-preset", "ultrafast", str(src / name)], check=True)
        rows.append(f"{name},{'a' if i % 2 else 'b'}" + (",c" if i == 3 else ""))
    (src / "train.csv").write_text("\n".join(rows) + "\n")
    (src / "cats.txt").write_text("a\nb\nc\n")
    out = root / "ds"
    pack_videos(str(src), str(src / "train.csv"), str(src / "cats.txt"), str(out), codec="vp9", short_side=64,
                seconds=1.2, workers=2, progress=False)
    return str(out)


def read_samples(ds, split):
    """Independent reader: {key: {ext: bytes}} of a split, straight from the tars."""
    m = S.load_manifest(ds)
    out = {}
    for p in m.shard_paths(split):
        with tarfile.open(p) as tf:
            for ti in tf:
                key, ext = ti.name.split(".", 1)
                out.setdefault(key, {})[ext] = tf.extractfile(ti).read()
    return out


def _wds2idx(tar, idx):
    exe = shutil.which("wds2idx")
    if exe:
        subprocess.run([exe, tar, idx], check=True, capture_output=True)
    elif os.path.exists(idx):
        os.remove(idx)  # the loader scans the tar instead


def _black_mp4(tmpdir):
    import imageio_ffmpeg

    out = os.path.join(str(tmpdir), "black.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=c=black:s=64x64:r=25:d=2", "-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", out], check=True)
    with open(out, "rb") as f:
        return f.read()


@pytest.fixture(scope="session")
def bad_dir(vp9_dir, tmp_path_factory):
    """A copy of the VP9 train split whose first shard holds a corrupt and a truncated mp4, a
    member that is not a video at all and an all-black video (what a broken decode gives)."""
    d = str(tmp_path_factory.mktemp("data_bad") / "ds")
    shutil.copytree(vp9_dir, d)
    m = S.load_manifest(d)
    tar = m.shard_paths("train")[0]
    with tarfile.open(tar) as tf:
        members = [(ti.name, tf.extractfile(ti).read()) for ti in tf]
    keys = sorted({n.split(".", 1)[0] for n, _ in members})
    bad = {keys[0]: "corrupt", keys[1]: "truncated", keys[2]: "garbage", keys[3]: "black"}
    rng = np.random.default_rng(0)
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            key, ext = name.split(".", 1)
            if ext == "mp4" and key in bad:
                kind = bad[key]
                if kind == "corrupt":   # keep the container, scramble the coded frames
                    b = bytearray(data)
                    start = data.find(b"mdat") + 8
                    b[start: len(b) - 16] = rng.integers(0, 256, len(b) - 16 - start, dtype=np.uint8).tobytes()
                    data = bytes(b)
                elif kind == "black":   # a valid video whose every frame is black
                    data = _black_mp4(tmp_path_factory.mktemp("black"))
                elif kind == "truncated":
                    data = data[: len(data) * 2 // 5]
                else:
                    data = b"this is not an mp4 file" * 20
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    _wds2idx(tar, S.index_name(tar))
    return d, bad


# --------------------------------------------------------------------------- oracle
def ffmpeg_frames(mp4: bytes, tmpdir, size=None):
    """All frames decoded by the ffmpeg binary: uint8 [F,H,W,3] (optionally scaled)."""
    import imageio_ffmpeg

    path = os.path.join(str(tmpdir), "oracle.mp4")
    with open(path, "wb") as f:
        f.write(mp4)
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", path], capture_output=True, text=True).stderr
    import re

    w, h = map(int, re.search(r"Video: .*?(\d{2,5})x(\d{2,5})", probe).groups())
    # BT.601, bilinear chroma upsampling, exact rounding. H.264 without VUI has left-sited
    # chroma (spec default, chroma_sample_loc_type 0), which libavcodec reports but the
    # ffmpeg CLI's scaler does not assume; VP9 does not signal siting.
    if size is not None:
        h, w = size
    loc = ":in_chroma_loc=left" if re.search(r"Video: h264", probe) else ""
    vf = ["-sws_flags", "bilinear+full_chroma_int+accurate_rnd", "-vf", f"scale={w}:{h}{loc}"]
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", path] + vf
                         + ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def psnr(a, b):
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def to_u8(video):
    """Undo the normalisation: [N,3,T,H,W] float -> [N,T,H,W,3] float64 in 0..255."""
    return (video.double() * STD.double() + MEAN.double()).permute(0, 2, 3, 4, 1).numpy()


def oracle_clip(ds_samples, loader, key, tmpdir, scale_with_ffmpeg=True):
    """What the loader's (evaluation) clip of ``key`` must be, cut from ffmpeg's frames."""
    from mmit_fast.data.sampling import plan_views

    meta = json.loads(ds_samples[key]["json"])
    plan = plan_views(meta["frames"], meta["height"], meta["width"], meta["fps"], loader.spec, train=False)[0]
    frames = ffmpeg_frames(ds_samples[key]["mp4"], tmpdir, plan.resize_hw if scale_with_ffmpeg else None)
    assert len(frames) == meta["frames"]
    y, x = plan.crop_yx
    c = plan.crop
    return frames[plan.indices][:, y: y + c, x: x + c].astype(np.float64), plan


# --------------------------------------------------------------------------- tests
def test_backend_choice(vp9_dir):
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, "h264") == "pyav"
    assert resolve_backend("pyav", cpu, "vp9") == "pyav"
    if HAS_DALI:
        from mmit_fast.data import loader as L

        assert resolve_backend("auto", cpu, "vp9") == ("dali" if L.CPU_AUTO == "dali" else "pyav")
        assert resolve_backend("dali", cpu, "vp9") == "dali"
        assert resolve_backend("auto", torch.device("cuda"), "h264") == "dali"
        with pytest.raises(ValueError, match="h264"):
            resolve_backend("dali", cpu, "h264")
    with pytest.raises(ValueError):
        resolve_backend("opencv", cpu, "vp9")


@pytest.mark.parametrize("backend", ["pyav", pytest.param("dali", marks=needs_dali)])
def test_eval_epoch_labels_and_frames_match_oracles(vp9_dir, backend, tmp_path):
    """Every sample once, with the manifest's labels, and the frames ffmpeg decodes."""
    samples = read_samples(vp9_dir, "train")
    m = S.load_manifest(vp9_dir)
    spec = ClipSpec("consecutive", frames=8, stride=2, crop=56, resize=64)   # no resize: native 64 px
    ld = make_loader(vp9_dir, "train", clip=spec, batch_size=4, train=False, backend=backend, num_workers=1, with_audio=True,
                     exact_color=True)
    fast = make_loader(vp9_dir, "train", clip=spec, batch_size=4, train=False, backend="pyav", num_workers=0,
                       exact_color=False)
    fast_video = {k: v for b in fast for k, v in zip(b.keys, b.video)}
    assert ld.backend == backend and len(ld) == -(-len(samples) // 4)
    seen = []
    checked = 0
    counts = np.zeros(m.num_classes, np.int64)
    for batch in ld:
        B = len(batch.keys)
        assert batch.video.shape == (B, 3, 8, 56, 56) and batch.video.dtype == torch.float32
        assert batch.targets.shape == (B, m.num_classes)
        assert batch.audio.shape[:2] == (B, 1) and batch.audio.shape[2] == round(spec.span / 25.0 * 22050)
        for i, key in enumerate(batch.keys):
            ids = np.frombuffer(samples[key]["ids"], "<i4")
            meta = json.loads(samples[key]["json"])
            expect = np.zeros(m.num_classes, np.float32)
            expect[ids] = 1
            assert np.array_equal(batch.targets[i].numpy(), expect), key
            assert sorted(ids.tolist()) == sorted(meta["label_ids"])
            assert bool(batch.has_audio[i]) == ("flac" in samples[key] or "wav" in samples[key])
            if not batch.has_audio[i]:
                assert torch.all(batch.audio[i] == 0)
            else:
                assert batch.audio[i].abs().max() > 0
            if checked < 3:   # frames: ffmpeg's decode of the same clip
                ref, _ = oracle_clip(samples, ld, key, tmp_path)
                assert psnr(to_u8(batch.video[i: i + 1])[0], ref) > 45
                # PyAV's default (fast, fixed-point) colour conversion: close, not exact
                assert psnr(to_u8(fast_video[key][None])[0], ref) > 32
                checked += 1
        seen += batch.keys
        counts += batch.targets.sum(0).numpy().astype(np.int64)
    assert sorted(seen) == sorted(samples) and ld.skipped == 0
    assert np.array_equal(counts, m.class_counts("train"))   # the manifest's per-class counts
    assert getattr(ld, "dali_fallbacks", 0) == 0       # DALI really decoded every batch


@needs_dali
def test_dali_cpu_and_pyav_agree_with_resize_flip_and_views(vp9_dir, tmp_path):
    """Same shard, same seed: same keys, labels, frames (PSNR), in training and multi-view eval."""
    spec = ClipSpec("segments", frames=4, crop=40, resize=48)
    samples = read_samples(vp9_dir, "train")
    for train, views in ((True, 1), (False, 6)):
        outs = {}
        for backend in ("pyav", "dali"):
            ld = make_loader(vp9_dir, "train", clip=spec, batch_size=3, train=train, backend=backend, num_workers=0,
                             seed=7, views=views, exact_color=True)
            ld.set_epoch(2)
            outs[backend] = list(ld)
            assert ld.dali_fallbacks == 0
        for a, b in zip(outs["pyav"], outs["dali"]):
            assert a.keys == b.keys
            assert torch.equal(a.targets, b.targets)
            assert a.video.shape == b.video.shape == (len(a.keys) * views, 3, 4, 40, 40)
            assert psnr(to_u8(a.video), to_u8(b.video)) > 40
    # and the resized clip is what ffmpeg's decode + ffmpeg's bilinear scaler give
    ld = make_loader(vp9_dir, "train", clip=spec, batch_size=12, train=False, backend="dali", num_workers=0)
    batch = next(iter(ld))
    assert ld.dali_fallbacks == 0
    key = batch.keys[0]
    ref, plan = oracle_clip(samples, ld, key, tmp_path)
    assert plan.resize_hw == (48, 48)
    assert psnr(to_u8(batch.video[:1])[0], ref) > 28


@needs_dali
def test_non_square_frames_agree_and_crops_slide(wide_dir, tmp_path):
    """Wide frames (short side 64): resize keeps the aspect ratio, crops slide along the long
    side, and DALI CPU and PyAV agree in training (random crops/flips) and 3-crop evaluation."""
    samples = read_samples(wide_dir, "train")
    spec = ClipSpec("consecutive", frames=4, stride=3, crop=40, resize=48)
    for train, views in ((True, 1), (False, 3)):
        out = {}
        for backend in ("pyav", "dali"):
            ld = make_loader(wide_dir, "train", clip=spec, batch_size=4, train=train, backend=backend, num_workers=0,
                             seed=5, views=views, exact_color=True)
            out[backend] = next(iter(ld))
            assert ld.dali_fallbacks == 0
        a, b = out["pyav"], out["dali"]
        assert a.keys == b.keys and torch.equal(a.targets, b.targets)
        assert a.video.shape == (len(a.keys) * views, 3, 4, 40, 40)
        assert psnr(to_u8(a.video), to_u8(b.video)) > 40
    # evaluation views: left, centre, right windows of the 48x72 resized frame, cut from ffmpeg's frames
    key = b.keys[0]
    meta = json.loads(samples[key]["json"])
    assert (meta["width"], meta["height"]) == (96, 64)
    from mmit_fast.data.sampling import plan_views

    plans = plan_views(meta["frames"], 64, 96, meta["fps"], spec, train=False, views=3)
    assert [p.resize_hw for p in plans] == [(48, 72)] * 3 and [p.crop_yx for p in plans] == [(4, 0), (4, 16), (4, 32)]
    frames = ffmpeg_frames(samples[key]["mp4"], tmp_path, (48, 72))
    for v, p in enumerate(plans):
        ref = frames[p.indices][:, 4: 44, p.crop_yx[1]: p.crop_yx[1] + 40]
        assert psnr(to_u8(b.video[v: v + 1])[0], ref) > 28


def test_h264_pyav_matches_ffmpeg(h264_dir, tmp_path):
    samples = read_samples(h264_dir, "train")
    spec = ClipSpec("consecutive", frames=6, stride=3, crop=64, resize=64)    # the whole frame, no resize
    ld = make_loader(h264_dir, "train", clip=spec, batch_size=8, train=False, num_workers=0, exact_color=True)
    assert ld.backend == "pyav"                 # auto: DALI's CPU decoder has no H.264
    batch = next(iter(ld))
    assert sorted(batch.keys) == sorted(samples)
    for i, key in enumerate(batch.keys[:3]):
        ref, _ = oracle_clip(samples, ld, key, tmp_path)
        assert psnr(to_u8(batch.video[i: i + 1])[0], ref) > 45


@pytest.mark.parametrize("train", [True, False])
def test_two_ranks_disjoint_equal_batches(vp9_dir, train):
    samples = read_samples(vp9_dir, "train")
    spec = ClipSpec("segments", frames=2, crop=32, resize=32)
    keys, lens = [], []
    for rank in range(2):
        ld = make_loader(vp9_dir, "train", clip=spec, batch_size=3, rank=rank, world_size=2, train=train,
                         backend="pyav", num_workers=0, seed=3)
        ld.set_epoch(1)
        batches = list(ld)
        assert len(batches) == len(ld)
        lens.append(len(ld))
        keys.append([k for b in batches for k in b.keys])
    assert lens[0] == lens[1]
    assert not set(keys[0]) & set(keys[1])
    if not train:
        assert sorted(keys[0] + keys[1]) == sorted(samples)
    else:
        assert len(keys[0]) == len(keys[1]) == (len(samples) // 2) // 3 * 3


def test_set_epoch_reshuffles_and_resumes(vp9_dir):
    spec = ClipSpec("segments", frames=2, crop=32, resize=32)
    ld = make_loader(vp9_dir, "train", clip=spec, batch_size=2, train=True, backend="pyav", num_workers=0, seed=0)
    order = {}
    for e in (0, 1, 0):
        ld.set_epoch(e)
        order.setdefault(e, []).append([k for b in ld for k in b.keys])
    assert order[0][0] == order[0][1] and order[0][0] != order[1][0]
    ld.set_epoch(0, start_batch=2)
    resumed = [k for b in ld for k in b.keys]
    assert resumed == order[0][0][4:]
    # iterating again without set_epoch moves on to the next epoch
    assert [k for b in ld for k in b.keys] == order[1][0]


@pytest.mark.parametrize("backend", ["pyav", pytest.param("dali", marks=needs_dali)])
def test_corrupt_and_truncated_members_are_skipped_and_counted(bad_dir, backend):
    d, bad = bad_dir
    samples = read_samples(d, "train")
    spec = ClipSpec("consecutive", frames=4, stride=2, crop=48, resize=56)
    # the decoders' own checks, behind the member digests (which catch all four first: test_integrity.py)
    ld = make_loader(d, "train", clip=spec, batch_size=4, train=False, backend=backend, num_workers=1,
                     verify_digests=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = [k for b in ld for k in b.keys]
    assert ld.skipped == len(bad)
    assert {k for _, k, _ in ld.skipped_samples} == set(bad)
    assert sorted(got) == sorted(set(samples) - set(bad))
    reasons = {k: r for _, k, r in ld.skipped_samples}
    assert "truncated" in reasons[[k for k, v in bad.items() if v == "truncated"][0]]


def test_missing_and_corrupt_shards_are_named(vp9_dir, tmp_path):
    d = str(tmp_path / "ds")
    shutil.copytree(vp9_dir, d)
    m = S.load_manifest(d)
    victim = m.shard_paths("train")[1]
    os.remove(victim)
    with pytest.raises(FileNotFoundError, match=os.path.basename(victim)):
        make_loader(d, "train", backend="pyav")
    shutil.copy(os.path.join(vp9_dir, os.path.basename(victim)), victim)
    with open(victim, "r+b") as f:   # cut the tar short
        f.truncate(os.path.getsize(victim) // 2 + 100)
    with pytest.raises(S.ShardFormatError, match=os.path.basename(victim)):
        make_loader(d, "train", backend="pyav")


def test_training_batches_keep_their_size_when_samples_are_bad(bad_dir):
    d, bad = bad_dir
    spec = ClipSpec("segments", frames=2, crop=32, resize=32)
    ld = make_loader(d, "train", clip=spec, batch_size=4, train=True, backend="pyav", num_workers=0, seed=1)
    planned = {ld.table.samples[i].key for b in ld.plan(0) for i in b}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(ld)
    assert ld.skipped == len(planned & set(bad))
    for b in batches:
        assert not set(b.keys) & set(bad)
        assert len(b.keys) in (0, 4) and b.video.shape[0] == len(b.keys) == b.targets.shape[0]


@pytest.mark.gpu
@needs_dali
@pytest.mark.parametrize("which", ["vp9", "h264"])
def test_dali_gpu_matches_pyav(vp9_dir, h264_dir, which):
    """GPU machines: NVDEC decode + GPU resize/crop agree with the CPU PyAV path."""
    d = vp9_dir if which == "vp9" else h264_dir
    spec = ClipSpec("consecutive", frames=8, stride=2, crop=48, resize=56)
    a = make_loader(d, "train", clip=spec, batch_size=4, train=False, backend="pyav", num_workers=0, exact_color=True)
    g = make_loader(d, "train", clip=spec, batch_size=4, train=False, backend="dali", device="cuda", num_workers=0)
    assert g.backend == "dali" and g.device.type == "cuda"
    for x, y in zip(a, g):
        assert y.video.is_cuda and y.targets.is_cuda
        assert x.keys == y.keys
        assert torch.equal(x.targets, y.targets.cpu())
        assert psnr(to_u8(x.video), to_u8(y.video.cpu())) > 30   # NVDEC's colour conversion differs slightly
    assert g.dali_fallbacks == 0 and g.skipped == 0
