"""Models: shapes, gradients, the 2D->3D inflation identity, the TSM shift, the
features/classifier contract, fusion, checkpoint loading."""

import pytest
import torch

from mmit_fast.models import (
    I3D, MIN_SAMPLES, TSM, ResNet2d, SoundNet, count_flops, count_params, create_model, inflate_from_2d,
    replace_classifier, run_model, temporal_shift,
)

torch.set_num_threads(2)
C = 7
AUDIO_N = 8000  # ~0.36 s at 22,050 Hz: enough for SoundNet, cheap


def _video(b=2, t=8, s=48, seed=0):
    return torch.randn(b, 3, t, s, s, generator=torch.Generator().manual_seed(seed))


def _audio(b=2, n=AUDIO_N, seed=1):
    return torch.randn(b, 1, n, generator=torch.Generator().manual_seed(seed))


SMALL = {
    "i3d": (dict(depth=18, width=8), lambda: (_video(),)),
    "i3d50": (dict(depth=50, width=4), lambda: (_video(),)),
    "tsm": (dict(depth=18, width=8, segments=8), lambda: (_video(),)),
    "tsm50": (dict(depth=50, width=4, segments=8), lambda: (_video(),)),
    "soundnet": (dict(width=4), lambda: (_audio(),)),
    "fusion": (dict(depth=18, width=8, audio_width=4), lambda: (_video(), _audio())),
}


def _make(key, **extra):
    kw, inputs = SMALL[key]
    name = key.rstrip("0123456789")
    torch.manual_seed(0)
    return create_model(name, C, **kw, **extra), inputs()


def _randomize_bn_(model, seed=0):
    """Non-trivial BatchNorm statistics/affine parameters, so eval-mode checks mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.parametrize("key", list(SMALL))
def test_shapes_and_gradients(key):
    m, inputs = _make(key)
    m.train()
    y = m(*inputs)
    assert y.shape == (2, C)
    assert torch.isfinite(y).all()
    (y.logsumexp(1).mean()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    assert m.classifier.weight.grad.abs().sum() > 0
    first_conv = next(p for n, p in m.named_parameters() if "conv" in n and p.dim() >= 3)
    assert first_conv.grad.abs().sum() > 0  # the gradient reaches the input layer
    assert m.modality == {"soundnet": "audio", "fusion": "audio-video"}.get(key, "video")


def test_feature_map_shapes():
    m = create_model("i3d", C, depth=50, width=4)
    f = m.features(_video(t=16, s=64))
    # 16 frames -> T' = 16 / (pool1 stride 2 * pool2 stride 2) = 4; 64 px -> 64/32 = 2; K = 8*4*4
    assert f.shape == (2, 128, 4, 2, 2)
    assert m.feature_dim == 128
    t = create_model("tsm", C, depth=18, width=8, segments=4)
    assert t.features(_video(t=4, s=64)).shape == (2, 64, 4, 2, 2)
    s = create_model("soundnet", C, width=4)
    assert s.features(_audio(n=66150)).shape[:2] == (2, 256)


@pytest.mark.parametrize("key", ["i3d", "tsm", "soundnet"])
def test_logits_equal_classifier_of_pooled_features(key):
    m, inputs = _make(key, dropout=0.5)
    _randomize_bn_(m)
    m.eval()
    with torch.no_grad():
        x = inputs[0]
        f = m.features(x)
        logits = m(x)
        pooled = f.flatten(2).mean(2)
        assert torch.allclose(logits, m.classifier(pooled), atol=1e-5)
        assert torch.allclose(m.forward_features(x), pooled, atol=1e-6)
        # the CAM identity: mean over the map of sum_k W[c,k] f_k, plus the bias, is the logit
        cam = torch.einsum("ck,bk...->bc...", m.classifier.weight, f)
        assert torch.allclose(cam.flatten(2).mean(2) + m.classifier.bias, logits, atol=1e-4)


def test_fusion_concatenates_pooled_features_and_uses_both_inputs():
    m, (v, a) = _make("fusion")
    _randomize_bn_(m)
    m.eval()
    with torch.no_grad():
        y = m(v, a)
        fv, fa = m.features(v, a)
        cat = torch.cat([fv.flatten(2).mean(2), fa.flatten(2).mean(2)], 1)
        assert cat.shape[1] == m.classifier.in_features == m.video_dim + m.audio_dim
        assert torch.allclose(y, m.classifier(cat), atol=1e-5)
        # each input matters
        assert (m(v, _audio(seed=7)) - y).abs().max() > 1e-4
        assert (m(_video(seed=7), a) - y).abs().max() > 1e-4
        # missing audio: zero audio features, per row with has_audio
        no_audio = m(v, None)
        expect = m.classifier(torch.cat([cat[:, :m.video_dim], torch.zeros_like(cat[:, m.video_dim:])], 1))
        assert torch.allclose(no_audio, expect, atol=1e-5)
        mixed = m(v, a, torch.tensor([True, False]))
        assert torch.allclose(mixed[0], y[0], atol=1e-6) and torch.allclose(mixed[1], no_audio[1], atol=1e-6)
        assert torch.allclose(run_model(m, v, a), y)


def test_run_model_dispatch():
    s, (a,) = _make("soundnet")
    s.eval()
    with torch.no_grad():
        assert torch.allclose(run_model(s, video=None, audio=a), s(a))
    with pytest.raises(ValueError, match="audio"):
        run_model(s, video=_video())


# ------------------------------------------------------------------ 2D ResNet + inflation
def test_resnet2d_matches_torchvision_layout():
    """Parameter counts and key names of torchvision's resnet18/50 (known constants)."""
    r50 = ResNet2d(50)
    sd = r50.state_dict()
    assert count_params(r50) == 25_557_032  # torchvision resnet50
    assert count_params(ResNet2d(18)) == 11_689_512  # torchvision resnet18
    assert len(sd) == 320
    for k in ["conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
              "layer2.0.conv2.weight", "layer4.2.bn3.num_batches_tracked", "fc.weight", "fc.bias"]:
        assert k in sd, k
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride on the 3x3 conv
    try:
        import torchvision  # noqa: F401  (optional: a direct comparison when it is installed)
    except Exception:  # absent, or a CUDA build whose compiled ops do not load next to a CPU torch
        return
    tv = torchvision.models.resnet50()
    assert {k: tuple(v.shape) for k, v in tv.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("depth", [18, 50])
def test_inflated_i3d_reproduces_2d_net_on_static_clip(depth, tmp_path):
    torch.manual_seed(depth)
    net2d = ResNet2d(depth, num_classes=C, width=8).double()
    _randomize_bn_(net2d)
    net2d.eval()
    path = tmp_path / "r2d.pt"
    torch.save(net2d.state_dict(), path)
    i3d = create_model("i3d", C, depth=depth, width=8, temporal_padding="replicate").double()
    inflate_from_2d(i3d, str(path))  # float64 weights into a float64 model
    i3d.eval()
    # create_model(pretrained=file) does the same inflation (into float32 weights)
    i3d32 = create_model("i3d", C, depth=depth, width=8, pretrained=str(path))
    for k, v in i3d32.state_dict().items():
        assert torch.equal(v, i3d.state_dict()[k].to(v.dtype)), k
    frame = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    clip = frame.unsqueeze(2).expand(-1, -1, 8, -1, -1).contiguous()
    with torch.no_grad():  # (float64 conv3d is slow on CPU: one pass; logits == classifier(pool(features)) is tested above)
        f2 = net2d.features(frame)
        f3 = i3d.features(clip)
        assert f3.shape[2] == 2
        for t in range(f3.shape[2]):
            torch.testing.assert_close(f3[:, :, t], f2, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(i3d.pool(f3), net2d.forward_features(frame), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(i3d.classifier(i3d.pool(f3)), net2d(frame), rtol=1e-9, atol=1e-9)


def test_inflation_weights_and_zero_padding_edges():
    torch.manual_seed(0)
    net2d = ResNet2d(18, num_classes=C, width=8).double()
    _randomize_bn_(net2d)
    net2d.eval()
    i3d = I3D(C, depth=18, width=8).double()  # standard zero temporal padding
    info = inflate_from_2d(i3d, net2d.state_dict())
    assert "classifier.weight" in info["loaded"]
    w2, w3 = net2d.conv1.weight, i3d.conv1.weight
    assert w3.shape == (8, 3, 5, 7, 7)
    for t in range(5):
        torch.testing.assert_close(w3[:, :, t], w2 / 5)
    torch.testing.assert_close(w3.sum(2), w2)
    i3d.eval()
    frame = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    clip = frame.unsqueeze(2).expand(-1, -1, 48, -1, -1).contiguous()
    with torch.no_grad():
        f2, f3 = net2d.features(frame), i3d.features(clip)
    err = (f3 - f2.unsqueeze(2)).abs().amax(dim=(0, 1, 3, 4))
    mid = f3.shape[2] // 2
    assert err[mid] < 1e-9  # steps whose receptive field lies inside the clip match exactly
    assert err[0] > 1e-6 and err[-1] > 1e-6  # zero padding: edge steps see part of the kernel


def test_inflate_rejects_wrong_architecture():
    i3d = I3D(C, depth=50, width=8)
    with pytest.raises(ValueError, match="does not fit"):
        inflate_from_2d(i3d, ResNet2d(18, width=8).state_dict())
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        create_model("i3d", C, depth=18, width=8, pretrained="/nonexistent/resnet50.pth")


def test_inflate_skips_classifier_of_other_vocabulary():
    i3d = I3D(C, depth=18, width=8)
    before = i3d.classifier.weight.detach().clone()
    with pytest.warns(UserWarning, match="classifier"):
        info = inflate_from_2d(i3d, ResNet2d(18, num_classes=1000, width=8).state_dict())
    assert "classifier.weight" in info["skipped"]
    assert torch.equal(i3d.classifier.weight, before)


# ------------------------------------------------------------------ TSM
def test_temporal_shift_moves_exactly_one_eighth_each_way():
    n, t, c, h, w = 2, 5, 24, 3, 4
    x = torch.randn(n * t, c, h, w)
    y = temporal_shift(x, t).view(n, t, c, h, w)
    xv = x.view(n, t, c, h, w)
    fold = c // 8  # 3 channels each way
    # channels [0, fold): frame t takes frame t+1 (backward in time); last frame zero
    assert torch.equal(y[:, :-1, :fold], xv[:, 1:, :fold])
    assert torch.equal(y[:, -1, :fold], torch.zeros_like(y[:, -1, :fold]))
    # channels [fold, 2 fold): frame t takes frame t-1 (forward in time); first frame zero
    assert torch.equal(y[:, 1:, fold:2 * fold], xv[:, :-1, fold:2 * fold])
    assert torch.equal(y[:, 0, fold:2 * fold], torch.zeros_like(y[:, 0, fold:2 * fold]))
    # the rest unchanged
    assert torch.equal(y[:, :, 2 * fold:], xv[:, :, 2 * fold:])
    # count of changed entries: exactly 2 * fold channels moved
    moved = (y != xv).any(dim=(0, 1, 3, 4))
    assert moved[:2 * fold].all() and not moved[2 * fold:].any()
    with pytest.raises(ValueError, match="multiple of segments"):
        temporal_shift(torch.randn(7, 8, 2, 2), 4)


def test_tsm_loads_2d_resnet_and_mixes_time_only_through_the_shift(tmp_path):
    torch.manual_seed(0)
    net2d = ResNet2d(18, num_classes=C, width=8).double()
    _randomize_bn_(net2d)
    net2d.eval()
    clip = torch.randn(1, 3, 4, 48, 48, dtype=torch.float64)
    frames = clip[0].transpose(0, 1)  # [T, 3, H, W]
    # no shifted channel (fold 0): TSM == the 2D net on each frame, averaged
    plain = TSM(C, depth=18, width=8, segments=4, fold_div=10**6).double()
    info = plain.load_state_dict({("classifier." + k[3:] if k.startswith("fc.") else k): v
                                  for k, v in net2d.state_dict().items()})
    assert not info.missing_keys and not info.unexpected_keys  # same names as torchvision
    plain.eval()
    torch.save(net2d.state_dict(), tmp_path / "r18.pt")
    tsm = create_model("tsm", C, depth=18, width=8, segments=4, pretrained=str(tmp_path / "r18.pt")).double()
    tsm.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(clip), net2d(frames).mean(0, keepdim=True), rtol=1e-9, atol=1e-9)
        f = plain.features(clip)
        torch.testing.assert_close(f[0].transpose(0, 1), net2d.features(frames), rtol=1e-9, atol=1e-9)
        # with the shift, frame 0's features depend on frame 1; without it they do not
        clip2 = clip.clone()
        clip2[:, :, 1] += 1.0
        assert (tsm.features(clip2)[:, :, 0] - tsm.features(clip)[:, :, 0]).abs().max() > 1e-6
        assert torch.equal(plain.features(clip2)[:, :, 0], plain.features(clip)[:, :, 0])
        # ...and frame 3 only feels frame 1 through a chain of shifts (depth permitting): check the
        # shift never reaches across the batch
        clip3 = torch.cat([clip, clip2])
        out = tsm(clip3)
        torch.testing.assert_close(out[0], tsm(clip)[0], rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="segments"):
        tsm(torch.randn(1, 3, 5, 32, 32, dtype=torch.float64))


# ------------------------------------------------------------------ checkpoints / fine-tuning
def test_full_checkpoint_roundtrip_and_new_vocabulary(tmp_path):
    m, (x,) = _make("i3d")
    _randomize_bn_(m)
    m.eval()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"module." + k: v for k, v in m.state_dict().items()}, "epoch": 3}, path)
    m2 = create_model("i3d", C, depth=18, width=8, pretrained=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))
    with pytest.warns(UserWarning, match="classifier"):
        m3 = create_model("i3d", C + 3, depth=18, width=8, pretrained=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(m3.forward_features(x), m.forward_features(x))
    with pytest.raises(ValueError, match="does not fit"):
        create_model("i3d", C, depth=18, width=16, pretrained=str(path))


def test_replace_classifier_keeps_backbone():
    m, (x,) = _make("tsm")
    m.eval()
    with torch.no_grad():
        before = m.forward_features(x)
        replace_classifier(m, 3)
        assert m(x).shape == (2, 3) and m.num_classes == 3
        assert torch.equal(m.forward_features(x), before)


def test_fusion_loads_trained_branches(tmp_path):
    v, (x,) = _make("i3d")
    s, (a,) = _make("soundnet")
    _randomize_bn_(v, 1)
    _randomize_bn_(s, 2)
    torch.save(v.state_dict(), tmp_path / "v.pt")
    torch.save(s.state_dict(), tmp_path / "a.pt")
    f = create_model("fusion", C, depth=18, width=8, audio_width=4, video_pretrained=str(tmp_path / "v.pt"),
                     audio_pretrained=str(tmp_path / "a.pt"), freeze_backbones=True)
    f.train()
    assert not f.video.training and not f.audio.training  # frozen branches stay in eval mode
    trainable = [n for n, p in f.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.weight", "classifier.bias"]
    v.eval(), s.eval()
    with torch.no_grad():
        feats = f.forward_features(x, a)
        torch.testing.assert_close(feats, torch.cat([v.forward_features(x), s.forward_features(a)], 1))


def test_bad_inputs_raise():
    m, _ = _make("i3d")
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        m(torch.randn(2, 3, 32, 32))
    s, _ = _make("soundnet")
    with pytest.raises(ValueError, match="too short"):
        s(torch.randn(1, 1, MIN_SAMPLES - 1))
    s.eval()
    assert s(torch.randn(1, 1, MIN_SAMPLES)).shape == (1, C)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet", C)


def test_count_flops_matches_hand_count():
    m = SoundNet(C, width=1)
    n = 4574 * 4
    x = torch.randn(1, 1, n)
    # hand count: every conv output element costs Cin * kernel MACs; the linear K * C
    expect, L, cin = 0, n, 1
    for mult, k, s, p, pool in [(1, 64, 2, 32, 8), (2, 32, 2, 16, 8), (4, 16, 2, 8, 0), (8, 8, 2, 4, 0),
                                (16, 4, 2, 2, 4), (32, 4, 2, 2, 0), (64, 4, 2, 2, 0)]:
        L = (L + 2 * p - k) // s + 1
        expect += L * mult * cin * k
        L = L // pool if pool else L
        cin = mult
    expect += 64 * C
    assert count_flops(m, x) == expect


@pytest.mark.parametrize("tp,st", [("zeros", 1), ("replicate", 1), ("zeros", 2)])
def test_stem_training_path_equals_conv3d(tp, st):
    """The CPU training path of the 3-channel stem (a sum of 2D convs over time taps) gives
    F.conv3d's output and weight gradient (float64 reference)."""
    import torch.nn.functional as F
    from mmit_fast.models.resnet3d import TConv3d

    conv = TConv3d(3, 8, (5, 7, 7), (st, 2, 2), (2, 3, 3), tp).double()
    x = torch.randn(2, 3, 7, 20, 20, dtype=torch.float64)
    y = conv(x)  # grad enabled + weight requires grad: the 2D-taps path
    (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum().backward()
    w = conv.weight.detach().clone().requires_grad_()
    xp = F.pad(x, (0, 0, 0, 0, 2, 2), mode="replicate") if tp == "replicate" else x
    ref = F.conv3d(xp, w, None, (st, 2, 2), (0 if tp == "replicate" else 2, 3, 3))
    (ref * torch.linspace(-1, 1, ref.numel(), dtype=torch.float64).view_as(ref)).sum().backward()
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.weight.grad, w.grad, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref, rtol=1e-12, atol=1e-12)  # the plain conv3d path


def test_to_channels_last_every_model():
    from mmit_fast.models import to_channels_last

    for key in ("i3d", "tsm"):
        m, inputs = _make(key)
        m.eval()
        with torch.no_grad():
            before = m(*inputs)
            to_channels_last(m)
            torch.testing.assert_close(m(*inputs), before, rtol=1e-4, atol=1e-4)
    i3d, _ = _make("i3d")
    assert to_channels_last(i3d).conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    tsm, _ = _make("tsm")
    assert to_channels_last(tsm).conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_i3d_last_stride_1_is_the_dilated_net_of_stride_2():
    """``last_stride=1`` (dilated layer4) computes the stride-2 net's maps at every position: with
    the same weights, its maps sampled at even positions equal the stride-2 maps (the "a trous"
    identity: a stride-2 conv is the stride-1 conv subsampled; a conv dilated by 2 on the full map,
    subsampled, is the undilated conv on the subsampled map, zero padding included)."""
    torch.manual_seed(0)
    a = create_model("i3d", C, depth=18, width=4, conv1_t=1).double().eval()
    _randomize_bn_(a)
    b = create_model("i3d", C, depth=18, width=4, conv1_t=1, last_stride=1).double().eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 4, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        fa, fb = a.features(x), b.features(x)
    assert fa.shape[-2:] == (2, 2) and fb.shape[-2:] == (4, 4)
    torch.testing.assert_close(fb[..., ::2, ::2], fa, rtol=1e-10, atol=1e-10)
    assert b.layer4[1].conv1.dilation == (1, 2, 2) and b.layer4[0].conv1.dilation == (1, 1, 1)
    with pytest.raises(ValueError, match="last_stride must be 1 or 2"):
        create_model("i3d", C, depth=18, width=4, last_stride=3)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("l3,l4", [(1, 1), (1, 2)])
def test_i3d_layer3_stride_1_is_the_dilated_net_of_stride_32(depth, l3, l4):
    """``layer3_stride=1`` (and ``last_stride=1``: output stride 8) computes the stride-32 net's
    maps at every position: sampled every 2^(removed strides) positions they equal the plain
    net's maps (same weights, float64), for basic and bottleneck blocks; the dilations follow
    torchvision's ``replace_stride_with_dilation`` (a stage's stride-carrying conv keeps the
    previous stage's dilation)."""
    torch.manual_seed(0)
    kw = dict(depth=depth, width=4, conv1_t=1)
    a = create_model("i3d", C, **kw).double().eval()
    _randomize_bn_(a)
    b = create_model("i3d", C, layer3_stride=l3, last_stride=l4, **kw).double().eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 4, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        fa, fb = a.features(x), b.features(x)
    step = 2 ** ((l3 == 1) + (l4 == 1))
    assert fa.shape[-2:] == (2, 2) and fb.shape[-2:] == (2 * step, 2 * step)
    torch.testing.assert_close(fb[..., ::step, ::step], fa, rtol=1e-10, atol=1e-10)
    d3 = (b.layer3[0].conv1, b.layer3[1].conv1, b.layer4[0].conv1, b.layer4[1].conv1) if depth == 18 else \
        (b.layer3[0].conv2, b.layer3[1].conv2, b.layer4[0].conv2, b.layer4[1].conv2)
    want = (1, 2, 2, 4) if l4 == 1 else (1, 2, 2, 2)
    assert tuple(c.dilation[1] for c in d3) == want
    with pytest.raises(ValueError, match="layer3_stride must be 1 or 2"):
        create_model("i3d", C, depth=18, width=4, layer3_stride=4)
