"""Packing presets (mmit_fast.pack.presets): the frame rate and keyframe spacing they promise,
read back from the packed mp4 with PyAV; the time-defined ``uniform`` sampling takes the same
source instants on full-rate and matched shards of the same clip; the loader's warning when a
clip spec needs frames the shards do not have.

The source clip encodes its own frame number: frame ``i`` is a flat grey of level ``10 + 3 i``,
so the decoded pixels say which source frame a packed frame shows."""
import io
import json
import os
import subprocess
import tarfile
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from mmit_fast import shards as S
from mmit_fast.data import ClipSpec, make_loader
from mmit_fast.pack import pack_videos
from mmit_fast.pack.presets import PRESETS, resolve

FPS, SECONDS, W, H = 25, 3.0, 64, 48
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1) * 255


def _ramp_source(path):
    """75 frames at 25 fps, frame i all grey 10 + 3 i (lossless H.264), with a 440 Hz tone."""
    import imageio_ffmpeg

    n = int(FPS * SECONDS)
    frames = np.repeat((10 + 3 * np.arange(n)).astype(np.uint8), H * W * 3).reshape(n, H, W, 3)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{W}x{H}", "-framerate", str(FPS), "-i", "-", "-f", "lavfi", "-i",
           f"sine=frequency=440:sample_rate=22050:duration={SECONDS}", "-c:v", "libx264", "-qp", "0",
           "-pix_fmt", "yuv444p", "-c:a", "aac", "-shortest", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """{(codec, preset): dataset folder} of the ramp clip (two rows: two samples)."""
    root = tmp_path_factory.mktemp("presets")
    src = root / "src"
    src.mkdir()
    _ramp_source(src / "ramp.mp4")
    (src / "train.csv").write_text("ramp.mp4,a\n")
    (src / "cats.txt").write_text("a\nb\n")
    out = {}
    for codec, preset in (("h264", "full"), ("h264", "paper-i3d"), ("h264", "tsm8"), ("vp9", "paper-i3d")):
        d = root / f"{codec}_{preset}"
        pack_videos(str(src), str(src / "train.csv"), str(src / "cats.txt"), str(d), codec=codec, short_side=H,
                    preset=preset, workers=1, progress=False)
        out[(codec, preset)] = str(d)
    return out


def _member(ds, ext):
    m = S.load_manifest(ds)
    with tarfile.open(m.shard_paths("train")[0]) as tf:
        for ti in tf:
            if ti.name.endswith("." + ext):
                return tf.extractfile(ti).read()
    raise AssertionError(f"no .{ext} member in {ds}")


def _read_back(mp4: bytes):
    """(average frame rate, frame count, keyframe positions) of an mp4, from PyAV's demuxer."""
    import av

    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        keys = [p.is_keyframe for p in c.demux(s) if p.size]
        return Fraction(s.average_rate), len(keys), [i for i, k in enumerate(keys) if k]


# --------------------------------------------------------------------------- presets
def test_resolve_rates_and_conflicts():
    assert resolve(None, 3.0) == (25.0, None, "full")
    assert resolve(None, 3.0, fps=10.0) == (10.0, None, None)      # custom: no preset name
    assert resolve("paper-i3d", 3.0) == (pytest.approx(16 / 3), 16, "paper-i3d")
    assert resolve("tsm8", 2.0) == (4.0, 8, "tsm8")
    assert resolve("full", 3.0) == (25.0, None, "full")
    assert resolve("paper-i3d", 3.0, fps=16 / 3, gop=16)[2] == "paper-i3d"   # agreeing values are fine
    with pytest.raises(ValueError, match="drop --fps 25"):
        resolve("paper-i3d", 3.0, fps=25.0)
    with pytest.raises(ValueError, match="keyframe every 16"):
        resolve("paper-i3d", 3.0, gop=4)
    with pytest.raises(ValueError, match="unknown preset 'i3d'"):
        resolve("i3d", 3.0)


@pytest.mark.parametrize("codec,preset,rate,frames,keys", [
    ("h264", "full", Fraction(25), 75, [0, 12, 24, 36, 48, 60, 72]),
    ("h264", "paper-i3d", Fraction(16, 3), 16, [0]),
    ("h264", "tsm8", Fraction(8, 3), 8, [0]),
    ("vp9", "paper-i3d", Fraction(16, 3), 16, [0]),
])
def test_presets_write_the_rate_and_keyframes_they_promise(packed, codec, preset, rate, frames, keys):
    ds = packed[(codec, preset)]
    got_rate, got_frames, got_keys = _read_back(_member(ds, "mp4"))
    assert (got_rate, got_frames, got_keys) == (rate, frames, keys)
    man = S.load_manifest(ds)
    assert man.video["preset"] == preset and man.video["fps"] == pytest.approx(float(rate))
    assert man.video["gop"] == (keys[1] - keys[0] if len(keys) > 1 else frames)
    meta = json.loads(_member(ds, "json"))
    assert meta["frames"] == frames and meta["fps"] == pytest.approx(float(rate))
    assert PRESETS[preset].settings(SECONDS)[0] == pytest.approx(float(rate))


def _source_frames(ds, spec):
    """Source frame number shown by each frame of the evaluation clip the loader cuts."""
    ld = make_loader(ds, "train", clip=spec, batch_size=1, train=False, backend="pyav", num_workers=0)
    b = next(iter(ld))
    u8 = (b.video.double() * STD.double() + MEAN.double())    # [1,3,T,h,w] in 0..255
    grey = u8.mean(dim=(0, 1, 3, 4)).numpy()
    return np.round((grey - 10) / 3).astype(int), ld


@pytest.mark.parametrize("preset,T", [("paper-i3d", 16), ("tsm8", 8)])
def test_uniform_takes_the_same_instants_on_full_and_matched_shards(packed, preset, T):
    spec = ClipSpec("uniform", frames=T, crop=H, resize=H)
    full, ld_full = _source_frames(packed[("h264", "full")], spec)
    low, ld_low = _source_frames(packed[("h264", preset)], spec)
    assert np.all(np.abs(full - low) <= 1), (full, low)        # within one source frame
    assert np.all(np.abs(low - (np.arange(T) + 0.5) * 75 / T) <= 1)   # the instants (k + 1/2) * 3 s / T
    # every decoded frame of the matched shard is used; the full shard decodes more than it keeps
    assert ld_low.decoded_frames == T
    assert ld_full.decoded_frames > 3 * T


def test_loader_warns_once_when_the_shards_lack_frames(packed):
    ds = packed[("h264", "paper-i3d")]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        make_loader(ds, "train", clip=ClipSpec("consecutive", frames=16, stride=2, crop=H, resize=H), num_workers=0)
        make_loader(ds, "train", clip=ClipSpec("consecutive", frames=16, stride=2, crop=H, resize=H),
                    train=False, num_workers=0)
        make_loader(ds, "train", clip=ClipSpec("uniform", frames=16, crop=H, resize=H), num_workers=0)
        make_loader(packed[("h264", "full")], "train", clip=ClipSpec("consecutive", frames=16, stride=2, crop=H,
                                                                     resize=H), num_workers=0)
    msgs = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1, msgs
    assert ds in msgs[0] and "31 distinct frames" in msgs[0] and "hold 16" in msgs[0] and "paper-i3d" in msgs[0]


def test_synth_preset_renders_at_the_matched_rate(tmp_path):
    from mmit_fast.cli import main

    out = tmp_path / "mms"
    assert main(["synth", str(out), "--num-videos", "3", "--size", "32", "--seconds", "1.5", "--preset", "tsm8",
                 "--splits", "1,0,0", "--workers", "1"]) == 0
    man = S.load_manifest(str(out))
    assert man.video["preset"] == "tsm8" and man.video["fps"] == pytest.approx(8 / 1.5) and man.video["gop"] == 8
    rate, frames, keys = _read_back(_member(str(out), "mp4"))
    assert (rate, frames, keys) == (Fraction(16, 3), 8, [0])


def test_short_side_presets_pack_at_the_size_a_112_crop_is_resized_to(tmp_path, packed):
    """tsm8-128 packs 8 frames per clip at short side 128: a 112 crop (resize 128) reads it as is, a
    224 crop (resize 256) would upscale it and is warned about once; a conflicting --short-side is
    refused."""
    src = os.path.dirname(_src_of(packed))
    d = str(tmp_path / "tsm8_128")
    pack_videos(src, os.path.join(src, "train.csv"), os.path.join(src, "cats.txt"), d, codec="h264", preset="tsm8-128",
                workers=1, progress=False)
    man = S.load_manifest(d)
    meta = json.loads(_member(d, "json"))
    assert man.video["short_side"] == 128 and man.video["preset"] == "tsm8-128" and meta["frames"] == 8
    assert (meta["height"], meta["width"]) == (128, 170)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = next(iter(make_loader(d, "train", clip=ClipSpec("segments", frames=8, crop=112), batch_size=1,
                                  train=False, backend="pyav", num_workers=0)))
    assert tuple(b.video.shape) == (1, 3, 8, 112, 112)
    with pytest.warns(RuntimeWarning, match=r"resizes frames to short side 256 \(crop 224\) but the shards hold 128"):
        make_loader(d, "train", clip=ClipSpec("segments", frames=8, crop=224), batch_size=1, train=False,
                    backend="pyav", num_workers=0)
    with pytest.raises(ValueError, match="preset 'tsm8-128' packs at short side 128; drop --short-side 96"):
        pack_videos(src, os.path.join(src, "train.csv"), os.path.join(src, "cats.txt"), str(tmp_path / "x"),
                    preset="tsm8-128", short_side=96, workers=1, progress=False)


def _src_of(packed):
    """The ramp clip the fixture packed (its source folder holds train.csv and cats.txt)."""
    return os.path.join(os.path.dirname(packed[("h264", "full")]), "src", "ramp.mp4")


def test_pack_cli_refuses_a_preset_with_a_different_rate(tmp_path, capsys):
    from mmit_fast.cli import main

    (tmp_path / "a.csv").write_text("x.mp4,a\n")
    (tmp_path / "c.txt").write_text("a\n")
    base = ["pack", "--videos", str(tmp_path), "--annotations", str(tmp_path / "a.csv"), "--categories",
            str(tmp_path / "c.txt"), "--out", str(tmp_path / "out"), "--preset", "paper-i3d"]
    for extra, msg in ((["--fps", "25"], "preset 'paper-i3d' packs at 5.33333 fps for 3 s clips; drop --fps 25"),
                       (["--gop", "4"], "preset 'paper-i3d' puts a keyframe every 16 frames; drop --gop 4")):
        assert main(base + extra) == 2
        assert capsys.readouterr().err.strip() == f"mmit pack: {msg} or the preset"
        assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not __import__("mmit_fast.data.dali", fromlist=["available"]).available(),
                    reason="NVIDIA DALI not installed")
def test_dali_cpu_and_pyav_agree_on_matched_shards(packed):
    """DALI's decoder gets the same frame indices (``frames=``) on a 16-frame VP9 clip."""
    spec = ClipSpec("uniform", frames=16, crop=H, resize=H)
    ds = packed[("vp9", "paper-i3d")]
    a = next(iter(make_loader(ds, "train", clip=spec, batch_size=1, train=False, backend="pyav", num_workers=0,
                              exact_color=True)))
    b = next(iter(make_loader(ds, "train", clip=spec, batch_size=1, train=False, backend="dali", num_workers=0)))
    mse = float(((a.video - b.video) * STD.view(1, 3, 1, 1, 1)).pow(2).mean())
    assert 10 * np.log10(255.0 ** 2 / max(mse, 1e-12)) > 40
    grey = (b.video.double() * STD.double() + MEAN.double()).mean(dim=(0, 1, 3, 4)).numpy()
    assert np.all(np.abs(np.round((grey - 10) / 3) - (np.arange(16) + 0.5) * 75 / 16) <= 1)


def test_paper_i3d_config_samples_what_its_preset_stores():
    import os

    from mmit_fast.config import load_config, resolve_config
    from mmit_fast.data.sampling import coverage_problem
    from mmit_fast.recipes import clip_spec

    path = "i3d_r50_wlsep"
    cfg = load_config(path)
    spec = clip_spec(cfg, cfg.model)
    assert (spec.mode, spec.frames) == ("uniform", 16)
    fps, gop = PRESETS["paper-i3d"].settings(3.0)
    assert coverage_problem(spec, fps, 3.0, "paper-i3d") is None and gop == 16
    assert "--preset paper-i3d" in open(resolve_config(path)).read()


def test_demo_configs_fit_the_demos_shards():
    """Every *demo_cpu config trains on `mmit demo`'s shards (preset tsm8, 2 s clips) without
    repeating frames (fusion_demo_cpu asked for 8 consecutive frames 4 apart, which needs 29)."""
    from mmit_fast.config import load_config, shipped_configs
    from mmit_fast.data.sampling import coverage_problem
    from mmit_fast.recipes import clip_spec

    fps, _ = PRESETS["tsm8"].settings(2.0)
    names = [n for n in shipped_configs() if n.endswith("demo_cpu")]
    assert {"demo_cpu", "tsm_demo_cpu", "fusion_demo_cpu", "i3d_demo_cpu"} <= set(names)
    for name in names:
        cfg = load_config(name)
        if cfg.model == "soundnet":
            continue
        assert coverage_problem(clip_spec(cfg, cfg.model), fps, 2.0, "tsm8") is None, name
