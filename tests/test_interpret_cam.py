"""mCAM maths, Grad-CAM, scoring and the pictures, each against an independent oracle."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _interpret_util import tiny_synth, write_checkpoint  # noqa: E402

from mmit_fast.interpret import cam as C  # noqa: E402
from mmit_fast.interpret import render as R  # noqa: E402


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tiny_synth(str(tmp_path_factory.mktemp("synth")))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from mmit_fast.pack.synth import CLASSES

    return write_checkpoint(str(tmp_path_factory.mktemp("ck") / "m.pt"), classes=list(CLASSES))


def test_cam_equals_hand_computed_weighted_sum():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 5, 3, 4, 4, generator=g)
    W = torch.randn(7, 5, generator=g)
    ids = torch.tensor([[1, 6], [0, 3]])
    got = C.class_activation_maps(f, W, ids).double()
    for b in range(2):
        for j in range(2):
            ref = sum(W[ids[b, j], k].double() * f[b, k].double() for k in range(5))
            assert torch.allclose(got[b, j], ref, atol=1e-5)


def test_cam_mean_is_logit_minus_bias_and_logits_match_forward():
    from mmit_fast.models import create_model

    torch.manual_seed(0)
    m = create_model("i3d", 6, depth=18, width=4, conv1_t=1).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        f, logits = C.features_and_logits(m, x)
        ref = m(x)
        cams = C.class_activation_maps(f, m.classifier.weight, torch.arange(6).repeat(2, 1))
    assert torch.allclose(logits, ref, atol=1e-5)
    assert torch.allclose(cams.flatten(2).mean(2) + m.classifier.bias, logits, atol=1e-4)


def _two_maps():
    a = torch.zeros(1, 3, 8, 8)
    a[0, 0, 0:5, 0:5] = 1.0        # class 0 region
    a[0, 1, 3:8, 3:8] = 1.0        # class 1 region, overlapping at [3:5, 3:5]
    a[0, 0, 7, 0] = 0.3            # a low value (not "high"), on class 0 and class 1
    a[0, 1, 7, 0] = 0.3
    a[0, 2] = a[0, 0]              # class 2: the same map as class 0 (cosine distance 0)
    return a


def test_separation_zeroes_only_high_overlaps_of_differing_classes():
    a = _two_maps()
    s = C.separate(a, separation=1e-4, high=0.5)
    # class 0 vs 1 differ: their overlap [3:5, 3:5] is zeroed in both ...
    assert (s[0, 0, 3:5, 3:5] == 0).all() and (s[0, 1, 3:5, 3:5] == 0).all()
    # ... and nothing else changes: class 0's own pixels, low values, class 2 vs class 0 (identical maps)
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[3:5, 3:5] = False
    assert torch.equal(s[0, 0][keep], a[0, 0][keep]) and torch.equal(s[0, 1][keep], a[0, 1][keep])
    # class 2 overlaps class 1 at [3:5, 3:5] too (it equals class 0, which differs from class 1): zeroed there
    assert (s[0, 2, 3:5, 3:5] == 0).all() and torch.equal(s[0, 2][keep], a[0, 2][keep])
    assert s[0, 0, 7, 0] == 0.3 and s[0, 1, 7, 0] == 0.3


def test_identical_maps_kept_at_default_threshold_and_separated_at_zero():
    a = torch.zeros(1, 2, 6, 6)
    a[0, :, 1:4, 1:4] = 1.0     # two classes, exactly the same map
    kept = C.separate(a, separation=1e-4)
    assert torch.equal(kept, a)
    cut = C.separate(a, separation=0.0)
    assert (cut == 0).all()


def test_separation_ignores_invalid_slots():
    a = _two_maps()
    valid = torch.tensor([[True, False, False]])
    s = C.separate(a, valid, separation=1e-4)
    assert torch.equal(s[0, 0], a[0, 0]) and (s[0, 1:] == 0).all()


def test_owner_and_gaussian_smoothing_against_brute_force():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(1, 3, 2, 9, 7, generator=g)
    heat, owner = C.own_and_smooth(maps)
    m = maps.double().numpy()[0]
    assert np.array_equal(owner.numpy()[0], m.argmax(0))
    k1 = np.array([1, 4, 6, 4, 1], float)
    K = np.outer(k1, k1) / 256
    mx = m.max(0)
    for t in range(2):
        p = np.pad(mx[t], 2, mode="edge")
        ref = np.array([[np.sum(p[y:y + 5, x:x + 5] * K) for x in range(7)] for y in range(9)])
        assert np.allclose(heat.numpy()[0, t], ref, atol=1e-6)


def test_normalise_and_cosine_distance():
    a = torch.tensor([[[1.0, 3.0, 5.0], [2.0, 2.0, 2.0]]])
    n = C.normalise_maps(a)
    assert torch.allclose(n[0, 0], torch.tensor([0.0, 0.5, 1.0])) and (n[0, 1] == 0).all()
    d = C.cosine_distance(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]]))
    assert torch.allclose(d[0], torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), atol=1e-6)


def test_gradcam_at_last_layer_is_relu_cam_over_area():
    from mmit_fast.interpret.gradcam import GradCAM
    from mmit_fast.models import create_model

    torch.manual_seed(0)
    m = create_model("i3d", 5, depth=18, width=4, conv1_t=1).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    ids = torch.tensor([[0, 3], [4, 1]])
    with GradCAM(m, "layer4") as gc:
        g = gc(x, ids)
    with torch.no_grad():
        f = m.features(x)
    cam = C.class_activation_maps(f, m.classifier.weight, ids)
    assert torch.allclose(g, torch.relu(cam) / f[0, 0].numel(), atol=1e-6)
    assert not m.layer4._forward_hooks   # hooks removed on exit


def test_unknown_layer_lists_available_ones():
    from mmit_fast.interpret.gradcam import GradCAM
    from mmit_fast.interpret.layers import UnknownLayerError
    from mmit_fast.models import create_model

    m = create_model("i3d", 5, depth=18, width=4)
    with pytest.raises(UnknownLayerError, match=r"layer 'layer9' not found.*available: layer1, .*layer4"):
        GradCAM(m, "layer9")


def test_mcam_batched_equals_one_clip_at_a_time():
    from mmit_fast.models import create_model

    torch.manual_seed(0)
    m = create_model("i3d", 6, depth=18, width=4, conv1_t=1).eval()
    x = torch.randn(3, 3, 4, 32, 32)
    full = C.mcam(m, x, top_k=3)
    for b in range(3):
        one = C.mcam(m, x[b:b + 1], top_k=3)
        assert torch.equal(one.class_ids[0], full.class_ids[b])
        assert torch.allclose(one.heat[0], full.heat[b], atol=1e-5)
        assert torch.equal(one.owner[0], full.owner[b])
    assert full.heat.shape == (3, 4, 32, 32) and full.owner.shape == (3, 4, 32, 32)
    avg = C.mcam(m, x, top_k=2, per_frame=False)
    assert avg.heat.shape == (3, 32, 32)


def test_threshold_selection_marks_invalid_slots():
    logits = torch.tensor([[3.0, -3.0, 0.5, -1.0]])
    ids, scores, valid = C.select_classes(logits, top_k=3, threshold=0.5)
    assert ids.tolist() == [[0, 2, 3]] and valid.tolist() == [[True, True, False]]


def _grey_frame():
    return np.full((20, 20, 3), 128, np.uint8)


def test_overlay_colours_where_the_regions_are(tmp_path):
    heat = np.zeros((20, 20), np.float32)
    owner = -np.ones((20, 20), int)
    heat[2:18, 2:10] = 1.0
    owner[2:18, 2:10] = 0
    heat[2:18, 10:18] = 1.0
    owner[2:18, 10:18] = 1
    img = R.overlay_frame(_grey_frame(), heat, owner, ["", ""], alpha=0.6)
    r, g, b = (img[..., i].astype(int) for i in range(3))
    # inside a region, away from the boundary: red dominates
    assert r[5, 4] > 170 and g[5, 4] < 80 and b[5, 4] < 80
    # the boundary between the two classes (columns 9/10): blue
    assert b[5, 10] == 255 and r[5, 10] == 0 or (b[5, 9] == 255 and r[5, 9] == 0)
    # background untouched
    assert tuple(img[0, 0]) == (128, 128, 128)
    # no blue boundary between a region and the background
    assert not ((b[1, :] > 200) & (r[1, :] < 50)).any()
    p = R.save_png(str(tmp_path / "x.png"), img)
    from PIL import Image

    assert os.path.getsize(p) > 0 and np.array_equal(np.asarray(Image.open(p)), img)


def test_labels_drawn_near_their_regions():
    heat = np.zeros((64, 64), np.float32)
    owner = -np.ones((64, 64), int)
    heat[0:20, 0:30] = 1.0
    owner[0:20, 0:30] = 0
    img = R.overlay_frame(np.zeros((64, 64, 3), np.uint8), heat, owner, ["run"], scale=2)
    white = (img.min(axis=2) > 240)
    ys, xs = np.nonzero(white)
    assert ys.size > 0
    assert abs(ys.mean() - 20) < 12 and abs(xs.mean() - 30) < 20   # centre of the region, at scale 2


def test_run_cam_writes_gallery_and_pictures(tmp_path, synth, ckpt):
    from mmit_fast.interpret import run_cam

    data, _, _ = synth
    out = str(tmp_path / "cam")
    index = run_cam(ckpt, data + ":test", out, top_k=2, limit=3, device="cpu")
    html = open(index).read()
    pngs = [f for f in os.listdir(out) if f.endswith(".png")]
    gifs = [f for f in os.listdir(out) if f.endswith(".gif")]
    assert len(pngs) == 3 and len(gifs) == 3
    assert all(p in html for p in pngs)
    from PIL import Image

    with Image.open(os.path.join(out, pngs[0])) as im:
        a = np.asarray(im.convert("RGB"))
    assert a.shape == (64, 4 * 64 + 3 * 2, 3) and a.std() > 0   # 4 frames at scale 2, 2-pixel gaps


def test_predict_top_k_on_a_video_file(tmp_path, synth, ckpt):
    from mmit_fast.interpret import predict
    from mmit_fast.pack.writer import iter_tar_samples
    from mmit_fast.shards import load_manifest

    data, _, _ = synth
    shard = load_manifest(data).shard_paths("test")[0]
    key, mem = next(iter_tar_samples(shard))
    video = tmp_path / "clip.mp4"
    video.write_bytes(mem["mp4"])
    r = predict(ckpt, str(video), top_k=4, out_dir=str(tmp_path / "p"), device="cpu")
    assert len(r) == 1 and len(r[0]["top"]) == 4
    scores = [s for _, s in r[0]["top"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert os.path.getsize(r[0]["png"]) > 0


def test_score_checkpoint_runs_on_synthetic_truth(synth, ckpt):
    from mmit_fast.interpret.score import METHODS, score_checkpoint

    data, _, _ = synth
    seen = []
    r = score_checkpoint(ckpt, data + ":test", limit=2, device="cpu", keep=lambda k, maps, item: seen.append(k))
    assert set(r["methods"]) == set(METHODS) and r["pairs"] >= 2 and len(seen) == r["clips"]
    assert r["tolerance"] == 15 * 32 / 224 and len(r["grid"]) == 3
    for v in r["methods"].values():
        assert 0 <= v["pointing"] <= 1 and 0 <= v["iou_area"] <= 1 and len(v["iou_curve"]) == 19
    # this tiny model's maps are 1 x 1 cell (32 px input, stride 32): a constant map points nowhere,
    # so even the ceiling (a perfect map at that resolution) and CAM never hit; the centre prior can
    assert r["grid"][1:] == [1, 1]
    assert r["methods"]["ceiling"]["pointing"] == 0.0 and r["methods"]["CAM"]["pointing"] == 0.0


# ------------------------------------------------------------------ bad input, through the CLI
def _cli(argv, capsys):
    from mmit_fast.cli import main

    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


def test_cli_checkpoint_without_classifier(tmp_path, synth, capsys):
    ck = write_checkpoint(str(tmp_path / "noclf.pt"), drop_classifier=True)
    rc, err = _cli(["cam", synth[0], "--checkpoint", ck, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "has no classifier" in err and len(err.splitlines()) == 1


def test_cli_undecodable_video(tmp_path, ckpt, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    rc, err = _cli(["predict", str(bad), "--checkpoint", ckpt, "--no-cam"], capsys)
    assert rc == 2 and "broken.mp4" in err and len(err.splitlines()) == 1


def test_cli_predict_prints_top_k(tmp_path, synth, ckpt, capsys):
    from mmit_fast.cli import main

    rc = main(["predict", synth[0] + ":test", "--checkpoint", ckpt, "--top-k", "2", "--limit", "2", "--no-cam",
               "--device", "cpu"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 2 and all(line.count(",") >= 1 and "truth:" in line for line in out)


@pytest.mark.parametrize("name,kw,frames", [("tsm", dict(depth=18, width=4, segments=4), 4),
                                            ("fusion", dict(depth=18, width=4, conv1_t=1, audio_width=4), 4)])
def test_mcam_on_tsm_and_fusion(name, kw, frames):
    from mmit_fast.models import create_model

    torch.manual_seed(0)
    m = create_model(name, 5, **kw).eval()
    x = torch.randn(2, 3, frames, 32, 32)
    res = C.mcam(m, x, top_k=2)
    with torch.no_grad():
        ref = m(x)
        f, _ = C.features_and_logits(m, x)
    assert torch.allclose(res.logits, ref, atol=1e-5)
    assert res.heat.shape == (2, frames, 32, 32)
    W = C.video_weight(m)
    assert W.shape == (5, f.shape[1])          # fusion: the video half of the classifier only


def test_audio_model_is_refused():
    from mmit_fast.models import create_model

    m = create_model("soundnet", 3).eval()
    with pytest.raises(ValueError, match="need a video model"):
        C.mcam(m, torch.randn(1, 1, 22050))


def test_damaged_shard_sample_is_skipped_and_named(tmp_path, synth, ckpt):
    import io
    import json
    import tarfile

    from mmit_fast.interpret import run_cam
    from mmit_fast.shards import load_manifest

    src = load_manifest(synth[0]).shard_paths("test")[0]
    bad = str(tmp_path / "damaged.tar")
    first = None
    with tarfile.open(src) as tin, tarfile.open(bad, "w") as tout:
        for m in tin:
            data = tin.extractfile(m).read()
            if m.name.endswith(".mp4") and first is None:
                first, data = m.name[:-4], b"\x00\x00\x00\x18ftypisom" + b"\x11" * 200
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    out = str(tmp_path / "cam")
    run_cam(ckpt, bad, out, top_k=1, device="cpu")
    d = json.load(open(os.path.join(out, "cams.json")))
    assert len(d["skipped"]) == 1 and first in d["skipped"][0]
    assert len(d["records"]) == 3 and first not in [r["key"] for r in d["records"]]
