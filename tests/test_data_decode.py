"""What the PyAV path decodes: seeking to the keyframe before the first needed frame and
stopping after the last one decodes fewer frames and gives the same pixels as decoding from the
start (and ffmpeg's own decode); an audio-only model (SoundNet) decodes no video at all and
gets the whole clip's audio (checked against ffmpeg's decode of the audio member)."""
import io
import os
import re
import subprocess
import tarfile

import numpy as np
import pytest

from mmit_fast import shards as S
from mmit_fast.data import ClipSpec, make_loader
from mmit_fast.data import dali as D
from mmit_fast.data import pyav as P
from mmit_fast.data.sampling import frame_indices

SIDE = 48


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """{codec: dataset} of two 3 s test-pattern clips with a tone, packed at 25 fps (keyframe every 12)."""
    import imageio_ffmpeg

    from mmit_fast.pack import pack_videos

    root = tmp_path_factory.mktemp("decode")
    src = root / "src"
    src.mkdir()
    for i in range(2):
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=64x48:rate=25:duration=3", "-f", "lavfi", "-i",
                        f"sine=frequency={300 + 200 * i}:sample_rate=22050:duration=3", "-vf", f"hue=h={90 * i}",
                        "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest",
                        str(src / f"c{i}.mp4")], check=True)
    (src / "train.csv").write_text("c0.mp4,a\nc1.mp4,b\n")
    (src / "cats.txt").write_text("a\nb\n")
    out = {}
    for codec in ("h264", "vp9"):
        d = root / codec
        pack_videos(str(src), str(src / "train.csv"), str(src / "cats.txt"), str(d), codec=codec, short_side=SIDE,
                    workers=1, progress=False)
        out[codec] = str(d)
    return out


def _members(ds, ext):
    m = S.load_manifest(ds)
    out = []
    with tarfile.open(m.shard_paths("train")[0]) as tf:
        for ti in tf:
            if ti.name.endswith("." + ext):
                out.append(tf.extractfile(ti).read())
    return out


def _ffmpeg(data: bytes, tmp_path, args, name):
    import imageio_ffmpeg

    path = os.path.join(str(tmp_path), name)
    with open(path, "wb") as f:
        f.write(data)
    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", path] + args,
                          capture_output=True, check=True).stdout


def _ffmpeg_frames(mp4, tmp_path, codec):
    """All frames by the ffmpeg binary at native size, BT.601, bilinear chroma, exact rounding
    (H.264 without VUI: left-sited chroma, which the CLI's scaler must be told)."""
    import av

    with av.open(io.BytesIO(mp4)) as c:
        w, h = c.streams.video[0].width, c.streams.video[0].height
    loc = ":in_chroma_loc=left" if codec == "h264" else ""
    raw = _ffmpeg(mp4, tmp_path, ["-sws_flags", "bilinear+full_chroma_int+accurate_rnd", "-vf", f"scale={w}:{h}{loc}",
                                  "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], "v.mp4")
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def _psnr(a, b):
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


# --------------------------------------------------------------------------- seeking
@pytest.mark.parametrize("codec", ["h264", "vp9"])
@pytest.mark.parametrize("spec", [ClipSpec("consecutive", frames=16, stride=2), ClipSpec("segments", frames=8)],
                         ids=["consecutive16x2", "segments8"])
def test_seeking_decodes_less_and_gives_the_same_pixels(full, codec, spec, tmp_path):
    mp4 = _members(full[codec], "mp4")[0]
    idx = frame_indices(75, spec, train=False)
    seek, start = {}, {}
    dm = P.Demuxed(mp4, 75)
    a = P.decode_frames(dm, idx, P.SWS_EXACT, seek=True, stats=seek)
    dm.close()
    dm = P.Demuxed(mp4, 75)
    b = P.decode_frames(dm, idx, P.SWS_EXACT, seek=False, stats=start)
    keys = dm.key_pos.tolist()
    dm.close()
    assert keys == [0, 12, 24, 36, 48, 60, 72]
    last = int(idx.max())
    assert start["decoded"] == last + 1                   # from the start, stopping at the last needed frame
    # seeking decodes exactly what it must: each needed frame and the frames back to its keyframe
    # (no B-frames), e.g. 12..22, 24..34, 36..46, 48..52 for the clip 22, 24, ..., 52
    must = set()
    for i in idx.tolist():
        kf = max(k for k in keys if k <= i)
        must.update(range(kf, i + 1))
    assert seek["decoded"] == len(must) < start["decoded"]
    if spec.mode == "consecutive":
        assert len(must) == 38 and start["decoded"] == 53
    assert sorted(a) == sorted(b) == sorted(set(idx.tolist()))
    for i in a:
        assert np.array_equal(a[i], b[i]), i              # identical pixels
    ref = _ffmpeg_frames(mp4, tmp_path, codec)
    assert len(ref) == 75
    for i in a:
        assert _psnr(a[i], ref[i]) > 45, (i, _psnr(a[i], ref[i]))


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_frames_are_resized_in_swscale_like_ffmpegs_scale_filter(full, codec, tmp_path):
    """The default path converts each needed frame to RGB at the view's size in one swscale call; the
    crops equal ffmpeg's own decode + scale filter (same flags) at those frames, and differ from the
    exact-colour path (native conversion, then DALI's antialiased resize) only by resampling."""
    from mmit_fast.data.sampling import plan_views

    mp4 = _members(full[codec], "mp4")[0]
    spec = ClipSpec("segments", frames=8, crop=24, resize=32)
    plans = plan_views(75, SIDE, 64, 25.0, spec, train=False, seed=0, epoch=0, sample=0)
    got = P.decode_clip(mp4, plans, 75)
    assert got.shape == (1, 8, 24, 24, 3)
    (h, w), (y, x) = plans[0].resize_hw, plans[0].crop_yx
    loc = ":in_chroma_loc=left" if codec == "h264" else ""
    raw = _ffmpeg(mp4, tmp_path, ["-sws_flags", "bilinear+full_chroma_int", "-vf", f"scale={w}:{h}{loc}", "-f",
                                  "rawvideo", "-pix_fmt", "rgb24", "-"], "s.mp4")
    ref = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)[plans[0].indices][:, y:y + 24, x:x + 24]
    assert _psnr(got[0], ref) > 40, _psnr(got[0], ref)   # identical here; another libswscale may round otherwise
    exact = P.decode_clip(mp4, plans, 75, exact_color=True)
    assert 28 < _psnr(got[0], exact[0]) < 99


@pytest.fixture(scope="module")
def bframes(full, tmp_path_factory):
    """The same two clips packed with --preset full-bframes (H.264, 3 non-reference B-frames)."""
    from mmit_fast.pack import pack_videos

    src = os.path.join(os.path.dirname(full["h264"]), "src")
    d = str(tmp_path_factory.mktemp("bframes") / "h264b")
    pack_videos(src, os.path.join(src, "train.csv"), os.path.join(src, "cats.txt"), d, codec="h264",
                short_side=SIDE, preset="full-bframes", workers=1, progress=False)
    return d


@pytest.mark.parametrize("spec", [ClipSpec("uniform", frames=16), ClipSpec("segments", frames=8),
                                  ClipSpec("consecutive", frames=16, stride=2)], ids=["uniform16", "segments8", "cons16x2"])
def test_non_reference_b_frames_are_skipped_and_the_pixels_stay(bframes, spec, tmp_path):
    """On full-bframes shards the seeking path skips the B-frames nothing refers to unless they are
    needed: fewer frames decoded than from the start, the same pixels, and ffmpeg's decode."""
    mp4 = _members(bframes, "mp4")[0]
    dm = P.Demuxed(mp4, 75)
    assert dm.ctx.has_b_frames and 0.3 < dm.disposable.mean() < 0.8          # many frames are disposable B-frames
    assert (dm.pos_of_rank != np.arange(75)).any()                        # decode order differs from display order
    assert np.array_equal(dm.rank_of_pos[dm.pos_of_rank], np.arange(75))
    idx = frame_indices(75, spec, train=False)
    seek, start = {}, {}
    a = P.decode_frames(dm, idx, P.SWS_EXACT, seek=True, stats=seek)
    dm.close()
    dm = P.Demuxed(mp4, 75)
    b = P.decode_frames(dm, idx, P.SWS_EXACT, seek=False, stats=start)
    dm.close()
    assert seek["decoded"] < 0.75 * start["decoded"], (seek, start)
    assert sorted(a) == sorted(b) == sorted(set(idx.tolist()))
    ref = _ffmpeg_frames(mp4, tmp_path, "h264")
    for i in a:
        assert np.array_equal(a[i], b[i]), i
        assert _psnr(a[i], ref[i]) > 45, (i, _psnr(a[i], ref[i]))
    assert S.load_manifest(bframes).video["bframes"] == 3


def test_b_frame_preset_needs_h264(full, tmp_path):
    from mmit_fast.pack import pack_videos

    src = os.path.join(os.path.dirname(full["h264"]), "src")
    with pytest.raises(ValueError, match="preset 'full-bframes' packs H.264 B-frames; use --codec h264"):
        pack_videos(src, os.path.join(src, "train.csv"), os.path.join(src, "cats.txt"), str(tmp_path / "x"),
                    codec="vp9", preset="full-bframes", workers=1, progress=False)


def test_loader_counts_the_frames_it_decodes(full):
    spec = ClipSpec("consecutive", frames=16, stride=2, crop=SIDE, resize=SIDE)
    ld = make_loader(full["h264"], "train", clip=spec, batch_size=2, train=False, backend="pyav", num_workers=0,
                     decoder_threads=1)   # frame threads run ahead of the output by a frame or two
    n = sum(len(b.keys) for b in ld)
    assert n == 2 and ld.decoded_frames == 2 * 38      # 12..22, 24..34, 36..46, 48..52 per clip (see above)


# --------------------------------------------------------------------------- modality
class _NoVideo(Exception):
    pass


def test_audio_only_model_decodes_no_video_and_hears_the_whole_clip(full, tmp_path, monkeypatch):
    ds = full["h264"]
    spec = ClipSpec("consecutive", frames=16, stride=2, crop=SIDE, resize=SIDE)

    def refuse(*a, **k):
        raise _NoVideo("an audio-only loader opened a video member")

    monkeypatch.setattr(P, "Demuxed", refuse)
    ld = make_loader(ds, "train", clip=spec, batch_size=2, train=False, backend="pyav", num_workers=0,
                     modality="audio")
    batches = list(ld)
    assert ld.decoded_frames == 0 and ld.skipped == 0
    b = batches[0]
    assert tuple(b.video.shape) == (2, 3, 0, SIDE, SIDE)
    n = int(3.0 * S.AUDIO_SAMPLE_RATE)
    assert tuple(b.audio.shape) == (2, 1, n) and bool(b.has_audio.all())
    # the waveform is the whole audio member, as ffmpeg decodes it
    flac = dict(zip([k for k in _keys(ds)], _members(ds, "flac")))
    for i, key in enumerate(b.keys):
        ref = np.frombuffer(_ffmpeg(flac[key], tmp_path, ["-f", "f32le", "-ac", "1", "-ar", "22050", "-"], "a.flac"),
                            np.float32)
        m = min(len(ref), n)
        assert m > 0.95 * n
        assert np.allclose(b.audio[i, 0, :m].numpy(), ref[:m], atol=1e-4)
    # a video model with audio hears the clip's span only (1.24 s of 3 s): what SoundNet got before
    monkeypatch.undo()
    lv = make_loader(ds, "train", clip=spec, batch_size=2, train=False, backend="pyav", num_workers=0, with_audio=True)
    bv = next(iter(lv))
    assert bv.audio.shape[-1] == round(31 / 25 * S.AUDIO_SAMPLE_RATE) and bv.video.shape[2] == 16
    assert lv.decoded_frames > 0
    # a fusion decodes frames and hears the whole clip
    lf = make_loader(ds, "train", clip=spec, batch_size=2, train=False, backend="pyav", num_workers=0,
                     modality="audio-video")
    bf = next(iter(lf))
    assert bf.audio.shape[-1] == n and bf.video.shape[2] == 16
    with pytest.raises(ValueError, match="modality must be one of"):
        make_loader(ds, "train", clip=spec, modality="sound")


def _keys(ds):
    return [re.sub(r"\.flac$", "", n) for n in _names(ds) if n.endswith(".flac")]


def _names(ds):
    m = S.load_manifest(ds)
    with tarfile.open(m.shard_paths("train")[0]) as tf:
        return tf.getnames()


@pytest.mark.skipif(not D.available(), reason="NVIDIA DALI not installed")
def test_audio_only_model_never_starts_dali(full):
    spec = ClipSpec("consecutive", frames=16, stride=2, crop=SIDE, resize=SIDE)
    ld = make_loader(full["vp9"], "train", clip=spec, batch_size=2, train=False, backend="dali", num_workers=0,
                     modality="audio")
    b = next(iter(ld))
    assert ld.backend == "pyav" and ld._pipe is None and ld.decoded_frames == 0
    assert tuple(b.video.shape) == (2, 3, 0, SIDE, SIDE) and b.audio.shape[-1] == int(3.0 * S.AUDIO_SAMPLE_RATE)
