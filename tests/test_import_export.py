"""Importing the Moments authors' released layouts and exporting to ONNX / TorchScript.

The oracle is a separate, compact network written here in the authors' layout (their
``ResNet3D``: conv1/bn1/layer1..4 with conv1..3/bn1..3/downsample.0/.1, head ``last_linear``;
for 2D torchvision's names, head ``fc``, applied frame by frame), with random weights AND
random BatchNorm running statistics, saved as their files are: ``{'state_dict': ...}`` with
DataParallel's ``module.`` prefix. The import must give that network's logits to 1e-5.
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmit_fast.cli import main
from mmit_fast.models import create_model, from_checkpoint
from mmit_fast.models.checkpoint import read_checkpoint

LAYERS = {18: ("basic", [2, 2, 2, 2]), 50: ("bottleneck", [3, 4, 6, 3])}


# ----------------------------------------------------------------------------- the oracle
class OracleBlock(nn.Module):
    """Authors' Bottleneck (1, 3 with the stride, 1) or BasicBlock (3 with the stride, 3)."""

    def __init__(self, conv, bn, cin, planes, stride, kind):
        super().__init__()
        out = planes * (4 if kind == "bottleneck" else 1)
        if kind == "bottleneck":
            self.conv1, self.bn1 = conv(cin, planes, 1, 1, 0, bias=False), bn(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3, stride, 1, bias=False), bn(planes)
            self.conv3, self.bn3 = conv(planes, out, 1, 1, 0, bias=False), bn(out)
        else:
            self.conv1, self.bn1 = conv(cin, planes, 3, stride, 1, bias=False), bn(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3, 1, 1, bias=False), bn(planes)
        self.kind = kind
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(conv(cin, out, 1, stride, 0, bias=False), bn(out))
        else:
            self.downsample = None

    def forward(self, x):
        r = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.kind == "bottleneck":
            y = self.bn3(self.conv3(F.relu(y)))
        return F.relu(y + r)


class OracleResNet(nn.Module):
    """dim=3: the authors' ResNet3D (7x7x7 stem, stride (1,2,2), pad 3; 3x3x3 max pool stride 2;
    stride 2 in time too at stages 2-4; head ``last_linear``). dim=2: torchvision's ResNet (``fc``)."""

    def __init__(self, dim, depth, width, num_classes):
        super().__init__()
        conv, bn = (nn.Conv3d, nn.BatchNorm3d) if dim == 3 else (nn.Conv2d, nn.BatchNorm2d)
        kind, counts = LAYERS[depth]
        self.dim = dim
        self.conv1 = conv(3, width, 7, (1, 2, 2) if dim == 3 else 2, 3, bias=False)
        self.bn1 = bn(width)
        cin = width
        for i, n in enumerate(counts):
            blocks = []
            for j in range(n):
                blocks.append(OracleBlock(conv, bn, cin, width * 2 ** i, 2 if (i > 0 and j == 0) else 1, kind))
                cin = width * 2 ** i * (4 if kind == "bottleneck" else 1)
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        head = nn.Linear(cin, num_classes)
        if dim == 3:
            self.last_linear = head
        else:
            self.fc = head

    def forward(self, x):
        pool = F.max_pool3d if self.dim == 3 else F.max_pool2d
        x = pool(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.flatten(2).mean(2)
        return self.last_linear(x) if self.dim == 3 else self.fc(x)

    def clip_logits(self, video):
        """[B, 3, T, H, W] -> logits; the 2D net runs frame by frame and averages the logits."""
        if self.dim == 3:
            return self(video)
        return torch.stack([self(video[:, :, t]) for t in range(video.shape[2])]).mean(0)


def randomise_(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return net.eval()


def save_authors_layout(net, path, wrap=True, prefix="module."):
    sd = {prefix + k: v for k, v in net.state_dict().items()}
    torch.save({"epoch": 30, "arch": "resnet3d50", "state_dict": sd, "best_prec1": 27.5} if wrap else sd, path)


def write_categories(path, n):
    path.write_text("".join(f"action{i:03d}\n" for i in range(n)))
    return path


# ----------------------------------------------------------------------------- import: exactness
@pytest.mark.parametrize("depth", [50, 18])
def test_authors_resnet3d_imports_with_identical_logits(tmp_path, depth, capsys):
    oracle = randomise_(OracleResNet(3, depth, 4, 7), seed=depth)
    save_authors_layout(oracle, tmp_path / "moments.pth.tar")
    cats = write_categories(tmp_path / "categories.txt", 7)
    out = tmp_path / "imported.pt"
    assert main(["import-weights", str(tmp_path / "moments.pth.tar"), "--format", "moments-resnet3d50",
                 "--categories", str(cats), "--out", str(out)]) == 0
    assert f"depth {depth} width 4, 7 classes" in capsys.readouterr().out
    model = from_checkpoint(out)
    assert not model.training and model.class_names == [f"action{i:03d}" for i in range(7)]
    assert model.preprocess["frames"] == 16 and model.preprocess["crop"] == 224
    assert model.preprocess["mean"] == [0.485, 0.456, 0.406] and model.preprocess["std"] == [0.229, 0.224, 0.225]
    x = torch.randn(2, 3, 16, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():  # float64 both sides: the comparison sees the weights, not float32 rounding
        ref, got = oracle.double().clip_logits(x), model.double()(x)
    assert ref.abs().max() > 0.1  # the comparison is not between two near-zero vectors
    assert (got - ref).abs().max() <= 1e-5
    ck = read_checkpoint(out)
    assert ck["model_spec"] == {"name": "moments-resnet3d", "num_classes": 7, "kwargs": {"depth": depth, "width": 4}}
    assert ck["config"]["clip_mode"] == "segments" and ck["config"]["frames"] == 16
    # the running statistics came across, not the fresh ones
    assert torch.equal(ck["model"]["layer3.1.bn2.running_var"], oracle.layer3[1].bn2.running_var.float())
    assert torch.equal(ck["model"]["classifier.weight"], oracle.last_linear.weight.float())


@pytest.mark.parametrize("fmt,depth,wrap", [("moments-resnet50", 50, True), ("torchvision-resnet", 18, False)])
def test_2d_resnet_imports_per_frame_with_identical_logits(tmp_path, fmt, depth, wrap):
    oracle = randomise_(OracleResNet(2, depth, 4, 5), seed=depth + 1)
    save_authors_layout(oracle, tmp_path / "r2d.pth", wrap=wrap, prefix="module." if wrap else "")
    cats = write_categories(tmp_path / "c.txt", 5)
    assert main(["import-weights", str(tmp_path / "r2d.pth"), "--format", fmt, "--categories", str(cats),
                 "--out", str(tmp_path / "ck.pt")]) == 0
    model = from_checkpoint(tmp_path / "ck.pt")
    x = torch.randn(2, 3, 6, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        ref, got = oracle.double().clip_logits(x), model.double()(x)
        feats = model.features(x)
    assert ref.abs().max() > 0.1
    assert (got - ref).abs().max() <= 1e-5
    assert feats.shape[:3] == (2, model.classifier.in_features, 6)  # [B, K, T, h, w]: mCAM works per frame


def test_full_size_resnet3d50_matches_the_released_key_set(tmp_path):
    """The released file's tensors (names and shapes of a 305-class ResNet3D-50) are exactly ours."""
    oracle_sd = OracleResNet(3, 50, 64, 305).state_dict()
    model = create_model("moments-resnet3d", 305).eval()
    ours = model.state_dict()
    mapped = {("classifier" + k[len("last_linear"):] if k.startswith("last_linear") else k): tuple(v.shape)
              for k, v in oracle_sd.items()}
    assert mapped == {k: tuple(v.shape) for k, v in ours.items()}
    assert mapped["conv1.weight"] == (64, 3, 7, 7, 7) and mapped["classifier.weight"] == (305, 2048)
    with torch.no_grad():
        f = model.features(torch.zeros(1, 3, 16, 112, 112))
    assert tuple(f.shape) == (1, 2048, 1, 4, 4)  # time 16 -> 8 (pool) -> 4, 2, 1


# ----------------------------------------------------------------------------- import: bad input
def _import(tmp_path, src, fmt="moments-resnet3d50", n=7):
    cats = write_categories(tmp_path / "cats.txt", n)
    return main(["import-weights", str(src), "--format", fmt, "--categories", str(cats),
                 "--out", str(tmp_path / "out.pt")])


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and err.startswith("mmit import-weights: error: ")
    return err


def test_file_of_another_layout_names_keys_and_formats(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MMIT_DEBUG", raising=False)
    save_authors_layout(randomise_(OracleResNet(2, 18, 4, 7), 0), tmp_path / "r2d.pth")
    assert _import(tmp_path, tmp_path / "r2d.pth") == 2
    err = _one_line_error(capsys)
    assert "not a moments-resnet3d50 file" in err
    assert "missing (2): last_linear.weight, last_linear.bias" in err
    assert "unexpected (2): fc.weight, fc.bias" in err
    assert "conv1.weight (4, 3, 7, 7) (needs (4, 3, 7, 7, 7))" in err
    assert "it fits --format moments-resnet50" in err
    assert "formats: moments-resnet3d50, moments-resnet50, torchvision-resnet" in err
    assert not (tmp_path / "out.pt").exists()
    # something that is no ResNet at all
    torch.save({"state_dict": {"encoder.proj.weight": torch.zeros(3, 3)}}, tmp_path / "other.pth")
    assert _import(tmp_path, tmp_path / "other.pth") == 2
    err = _one_line_error(capsys)
    assert "missing (" in err and "conv1.weight" in err and "unexpected (1): encoder.proj.weight" in err
    assert "it fits" not in err


def test_category_count_differs_from_head(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MMIT_DEBUG", raising=False)
    save_authors_layout(randomise_(OracleResNet(3, 18, 4, 7), 0), tmp_path / "m.pth")
    assert _import(tmp_path, tmp_path / "m.pth", n=292) == 2
    err = _one_line_error(capsys)
    assert "lists 292 classes" in err and "has 7 outputs (last_linear.weight rows)" in err
    assert not (tmp_path / "out.pt").exists()


class _Planted:
    def __reduce__(self):
        return (os.system, ("touch planted_ran",))


def test_planted_pickle_is_refused_and_never_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MMIT_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Planted()}, tmp_path / "evil.pth")
    assert _import(tmp_path, tmp_path / "evil.pth") == 2
    assert "refused" in _one_line_error(capsys)
    assert not (tmp_path / "planted_ran").exists()


def test_other_bad_sources(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MMIT_DEBUG", raising=False)
    assert _import(tmp_path, tmp_path / "absent.pth") == 2
    assert "no such file (nothing is downloaded" in _one_line_error(capsys)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    assert _import(tmp_path, tmp_path / "list.pth") == 2
    assert "holds no state dict" in _one_line_error(capsys)
    (tmp_path / "text.pth").write_text("not a torch file")
    assert _import(tmp_path, tmp_path / "text.pth") == 2
    assert "text.pth" in _one_line_error(capsys)
    save_authors_layout(randomise_(OracleResNet(3, 18, 4, 7), 0), tmp_path / "m.pth")
    assert _import(tmp_path, tmp_path / "m.pth") == 0
    assert _import(tmp_path, tmp_path / "out.pt") == 2  # an mmit checkpoint is not a released file
    assert "already an mmit checkpoint" in _one_line_error(capsys)
    net = randomise_(OracleResNet(3, 18, 4, 7), 0)
    with torch.no_grad():
        net.layer2[0].bn1.running_var[3] = float("nan")
    save_authors_layout(net, tmp_path / "nan.pth")
    assert _import(tmp_path, tmp_path / "nan.pth") == 2
    assert "non-finite values (NaN/inf) in 1 tensors: layer2.0.bn1.running_var" in _one_line_error(capsys)


# ----------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def imported_3d(tmp_path_factory):
    d = tmp_path_factory.mktemp("imp3d")
    save_authors_layout(randomise_(OracleResNet(3, 18, 4, 6), 7), d / "m.pth")
    write_categories(d / "c.txt", 6)
    assert main(["import-weights", str(d / "m.pth"), "--format", "moments-resnet3d50", "--categories",
                 str(d / "c.txt"), "--out", str(d / "ck.pt")]) == 0
    return d / "ck.pt"


def test_onnx_export_dynamic_batch_matches_pytorch(imported_3d, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", str(imported_3d), "--format", "onnx", "--out", str(out), "--frames", "8",
                 "--crop", "48"]) == 0
    assert "matches PyTorch (onnxruntime" in capsys.readouterr().out
    side = json.loads((tmp_path / "m.onnx.json").read_text())
    assert side["input"] == {"name": "video", "dtype": "float32", "shape": ["batch", 3, 8, 48, 48],
                             "layout": "B,3,T,H,W"}
    assert side["preprocess"]["mean"] == [0.485, 0.456, 0.406] and side["preprocess"]["sampling"] == "segments"
    assert side["classes"] == [f"action{i:03d}" for i in range(6)] and side["check"]["tolerance"] == 1e-4
    # independently of the export's own check: a batch size it never saw
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 8, 48, 48, generator=torch.Generator().manual_seed(11))
    y = sess.run(["logits"], {"video": x.numpy()})[0]
    with torch.no_grad():
        ref = from_checkpoint(imported_3d)(x).numpy()
    assert y.shape == (3, 6)
    assert np.abs(y - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    # a fixed batch: the graph's input says so
    assert main(["export", str(imported_3d), "--format", "onnx", "--out", str(tmp_path / "b2.onnx"), "--frames", "8",
                 "--crop", "48", "--batch", "2"]) == 0
    assert json.loads((tmp_path / "b2.onnx.json").read_text())["input"]["shape"] == [2, 3, 8, 48, 48]
    sess = ort.InferenceSession(str(tmp_path / "b2.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [2, 3, 8, 48, 48]


def test_torchscript_export_matches_pytorch(tmp_path):
    from mmit_fast.export import export_checkpoint

    save_authors_layout(randomise_(OracleResNet(2, 18, 4, 5), 2), tmp_path / "r.pth")
    write_categories(tmp_path / "c.txt", 5)
    assert main(["import-weights", str(tmp_path / "r.pth"), "--format", "moments-resnet50", "--categories",
                 str(tmp_path / "c.txt"), "--out", str(tmp_path / "ck.pt")]) == 0
    side = export_checkpoint(tmp_path / "ck.pt", "torchscript", tmp_path / "m.ts", frames=4, crop=32)
    assert side["check"]["runtime"] == "torch.jit.load"
    ts = torch.jit.load(str(tmp_path / "m.ts"))
    x = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref, got = from_checkpoint(tmp_path / "ck.pt")(x), ts(x)
    assert (got - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))


def test_export_of_a_trained_i3d_checkpoint_reads_its_clip_settings(tmp_path):
    from mmit_fast.export import export_checkpoint

    kw = {"depth": 18, "width": 4, "conv1_t": 1}
    net = create_model("i3d", 3, **kw)
    spec = {"name": "i3d", "num_classes": 3, "kwargs": kw}
    torch.save({"format": "mmit-checkpoint", "version": 2, "model_spec": spec,
                "classes": ["a", "b", "c"], "modality": "video", "model": net.state_dict(),
                "config": {"model": "i3d", "frames": 4, "stride": 3, "crop": 32, "resize": 0}}, tmp_path / "i3d.pt")
    side = export_checkpoint(tmp_path / "i3d.pt", "torchscript", tmp_path / "i3d.ts")
    assert side["input"]["shape"] == ["batch", 3, 4, 32, 32]
    pre = side["preprocess"]
    assert (pre["sampling"], pre["stride"], pre["crop"], pre["resize"]) == ("consecutive", 3, 32, 37)
    assert side["check"]["max_rel_diff"] <= 1e-4 and side["classes"] == ["a", "b", "c"]


def test_failed_export_check_writes_nothing(imported_3d, tmp_path, monkeypatch):
    import mmit_fast.export as ex

    real = ex.run_exported
    monkeypatch.setattr(ex, "run_exported", lambda p, f, x: real(p, f, x) + 1e-2)  # a runtime that drifts
    with pytest.raises(RuntimeError, match="differ from PyTorch"):
        ex.export_checkpoint(imported_3d, "torchscript", tmp_path / "m.ts", frames=4, crop=32)
    assert os.listdir(tmp_path) == []


def test_export_refuses_bad_requests(imported_3d, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MMIT_DEBUG", raising=False)
    assert main(["export", str(imported_3d), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--batch", "0"]) == 2
    assert "--batch must be >= 1" in capsys.readouterr().err
    assert main(["export", str(imported_3d), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--frames", "0"]) == 2
    assert "--frames must be >= 1, got 0" in capsys.readouterr().err
    i3d = create_model("i3d", 3, depth=18, width=4)
    torch.save({"format": "mmit-checkpoint", "version": 2, "model_spec": {"name": "i3d", "num_classes": 3,
                "kwargs": {"depth": 18, "width": 4}}, "model": i3d.state_dict()}, tmp_path / "i3d.pt")
    assert main(["export", str(tmp_path / "i3d.pt"), "--format", "onnx", "--out", str(tmp_path / "i.onnx"),
                 "--frames", "2", "--crop", "32"]) == 2
    assert "clip of 2 frames is too short" in capsys.readouterr().err
    snd = create_model("soundnet", 3)
    torch.save({"format": "mmit-checkpoint", "version": 2, "model_spec": {"name": "soundnet", "num_classes": 3,
                "kwargs": {}}, "model": snd.state_dict(), "modality": "audio"}, tmp_path / "snd.pt")
    assert main(["export", str(tmp_path / "snd.pt"), "--format", "onnx", "--out", str(tmp_path / "s.onnx")]) == 2
    assert "export supports video models" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["i3d.pt", "snd.pt"]


# ----------------------------------------------------------------------------- end to end
def test_import_finetunes_one_step_and_evaluates(tmp_path, monkeypatch):
    """import -> eval as is (same vocabulary) -> finetune one step -> eval, on the synthetic shards."""
    from train_helpers import tiny_dataset

    from mmit_fast.shards import load_manifest

    monkeypatch.delenv("MMIT_DEBUG", raising=False)
    data = tiny_dataset()
    classes = load_manifest(data).classes
    oracle = randomise_(OracleResNet(3, 18, 4, len(classes)), 9)
    save_authors_layout(oracle, tmp_path / "m.pth")
    (tmp_path / "c.txt").write_text("\n".join(classes) + "\n")
    ck = tmp_path / "imported.pt"
    assert main(["import-weights", str(tmp_path / "m.pth"), "--format", "moments-resnet3d50", "--categories",
                 str(tmp_path / "c.txt"), "--out", str(ck)]) == 0
    common = ["--num-workers", "0", "--no-progress", "--batch-size", "2"]
    assert main(["eval", str(ck), "--data", data, "--split", "test", "--out", str(tmp_path / "ev0"),
                 "--no-chance"] + common) == 0
    scores = np.load(tmp_path / "ev0" / "test_scores.npz")
    assert scores["scores"].shape == (load_manifest(data).splits["test"]["samples"], len(classes))
    assert np.isfinite(scores["scores"]).all()
    assert main(["finetune", "--from", str(ck), "--data", data, "--out", str(tmp_path / "ft"), "--max-steps", "1",
                 "--epochs", "1", "--frames", "4", "--crop", "32", "--resize", "36", "--threads", "1",
                 "--no-tensorboard", "--eval-every", "0", "--lr", "0.01"] + common) == 0
    last = read_checkpoint(tmp_path / "ft" / "checkpoints" / "last.pt")
    assert last["model_spec"]["name"] == "moments-resnet3d" and last["model_spec"]["kwargs"]["depth"] == 18
    before = read_checkpoint(ck)["model"]["layer4.1.conv2.weight"]
    assert not torch.equal(last["model"]["layer4.1.conv2.weight"], before)  # it trained
    assert main(["eval", str(tmp_path / "ft" / "checkpoints" / "last.pt"), "--data", data, "--split", "test",
                 "--out", str(tmp_path / "ev1"), "--no-chance"] + common) == 0
    metrics = json.loads((tmp_path / "ev1" / "test_metrics.json").read_text())
    assert 0.0 <= metrics["micro_map"] <= 1.0
