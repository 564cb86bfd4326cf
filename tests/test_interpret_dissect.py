"""Action Network Dissection: IoU, the Broden reader and the whole run, against oracles (thresholds:
test_interpret_quantile.py; packed masks: test_interpret_maskcache.py)."""
import csv
import json
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _interpret_util import tiny_synth, write_checkpoint  # noqa: E402

from mmit_fast.interpret.broden import Broden, BrodenError  # noqa: E402
from mmit_fast.interpret.dissect import IoUTally, assign_labels, binarise_upsampled  # noqa: E402

BACKENDS = ["torch", "cpp"]   # update_sparse's two implementations (the C++ one is built by pip install)


# ------------------------------------------------------------------ IoU vs brute force
def _brute_iou(acts, T, concepts, annotated, ccat, ncat, size, union):
    """Loop over images, units and concepts (NetDissect's rule, or 'all')."""
    K = acts[0].shape[0]
    C = len(ccat)
    inter = np.zeros((K, C))
    uni = np.zeros((K, C))
    for a, cm, ann in zip(acts, concepts, annotated):
        up = torch.nn.functional.interpolate(torch.from_numpy(a)[None].double(), size=size, mode="bilinear",
                                             align_corners=False)[0].numpy()
        for k in range(K):
            M = up[k] > T[k]
            for c in range(C):
                L = cm.get(c, np.zeros(size, bool))
                if union == "all" or ann[ccat[c]]:
                    inter[k, c] += (M & L).sum()
                    uni[k, c] += (M | L).sum()
    return np.where(uni > 0, inter / np.maximum(uni, 1), 0)


@pytest.mark.parametrize("union", ["category", "all"])
def test_iou_equals_brute_force(union):
    rng = np.random.default_rng(1)
    K, C, ncat, size = 4, 5, 2, (12, 10)
    ccat = [0, 0, 1, 1, 1]
    acts, concepts, annotated = [], [], []
    for _ in range(7):
        acts.append(rng.normal(size=(K, 4, 3)).astype(np.float32))
        ann = [bool(rng.random() < 0.8), bool(rng.random() < 0.6)]
        cm = {c: rng.random(size) < 0.3 for c in range(C) if ann[ccat[c]] and rng.random() < 0.7}
        concepts.append(cm)
        annotated.append(ann)
    T = torch.tensor([0.1, -0.2, 0.5, 0.0])
    tally = IoUTally(K, ccat, ncat)
    for i in range(0, 7, 3):   # batches of 3, 3, 1
        a = torch.from_numpy(np.stack(acts[i:i + 3]))
        present = sorted({c for cm in concepts[i:i + 3] for c in cm})
        L = torch.zeros(a.shape[0], len(present), *size, dtype=torch.bool)
        for b, cm in enumerate(concepts[i:i + 3]):
            for j, c in enumerate(present):
                if c in cm:
                    L[b, j] = torch.from_numpy(cm[c])
        tally.update(binarise_upsampled(a, size, T), torch.tensor(present, dtype=torch.long), L,
                     torch.tensor(annotated[i:i + 3]))
    ref = _brute_iou(acts, T.numpy(), concepts, annotated, ccat, ncat, size, union)
    assert np.allclose(tally.iou(union).numpy(), ref, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_tally_equals_dense_tally(backend):
    rng = np.random.default_rng(3)
    K, C, size = 6, 4, (10, 9)
    ccat = [0, 1, 1, 0]
    dense, sparse = IoUTally(K, ccat, 2), IoUTally(K, ccat, 2)
    T = torch.tensor([0.5, 1.0, 2.5, 9.0, -9.0, 0.8])     # unit 3 never fires, unit 4 always
    for _ in range(3):
        a = torch.from_numpy(rng.normal(size=(4, K, 3, 3)).astype(np.float32))
        per = []
        for b in range(4):
            idx = sorted(rng.choice(C, size=int(rng.integers(0, C + 1)), replace=False).tolist())
            per.append((torch.tensor(idx, dtype=torch.long), torch.from_numpy(rng.random((len(idx),) + size) < 0.4)))
        ann = torch.from_numpy(rng.random((4, 2)) < 0.7)
        present = sorted({i for idx, _ in per for i in idx.tolist()})
        L = torch.zeros(4, len(present), *size, dtype=torch.bool)
        for b, (idx, Lb) in enumerate(per):
            for j, c in enumerate(idx.tolist()):
                L[b, present.index(c)] = Lb[j]
        dense.update(binarise_upsampled(a, size, T), torch.tensor(present, dtype=torch.long), L, ann)
        sparse.update_sparse(a, size, T, per, ann, backend=backend)
    for u in ("category", "all"):
        assert torch.allclose(dense.iou(u), sparse.iou(u), atol=1e-12)
    assert torch.equal(dense.inter, sparse.inter) and torch.equal(dense.unit_cat, sparse.unit_cat)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h,w,H,W", [(7, 7, 112, 112), (13, 11, 40, 37), (8, 8, 5, 7), (1, 1, 4, 4), (3, 5, 3, 5),
                                     (4, 9, 70, 130)])
def test_sparse_tally_any_scale_and_chunking_equals_dense(h, w, H, W, backend):
    """The block-pruned binarisation (hot-cell quads, corner bound) and the concept-table join give
    exactly the dense sums, for enlarging, shrinking, non-integer scales and tiny chunks."""
    rng = np.random.default_rng(h * 100 + W)
    K, C, B = 5, 6, 3
    ccat = [0, 0, 1, 1, 2, 2]
    a = torch.from_numpy(rng.gamma(1.5, size=(B, K, h, w)).astype(np.float32))
    T = torch.from_numpy(np.quantile(a.numpy(), [0.5, 0.8, 0.95, 0.99, 1.0]).astype(np.float32))
    per = [(torch.tensor(sorted(rng.choice(C, 3, replace=False).tolist())),
            torch.from_numpy(rng.random((3, H, W)) < 0.5)) for _ in range(B)]
    ann = torch.from_numpy(rng.random((B, 3)) < 0.7)
    L = torch.zeros(B, C, H, W, dtype=torch.bool)
    for b, (idx, Lb) in enumerate(per):
        L[b, idx] = Lb
    dense, sparse, tiny = IoUTally(K, ccat, 3), IoUTally(K, ccat, 3), IoUTally(K, ccat, 3)
    dense.update(binarise_upsampled(a, (H, W), T), torch.arange(C), L, ann)
    sparse.update_sparse(a, (H, W), T, per, ann, backend=backend)
    tiny.update_sparse(a, (H, W), T, per, ann, max_elems=7, backend=backend, threads=2)
    for t in (sparse, tiny):
        for name in ("inter", "label", "unit_cat", "unit_all"):
            assert torch.equal(getattr(dense, name), getattr(t, name)), name
    assert dense.unit_all.sum() > 0


def test_cpp_tally_float_masks_empty_images_and_bad_concepts():
    """The C++ kernel: 0/1 float masks, images without any concept, thread counts 1 and 3 give the
    torch path's sums; a concept index outside the tally or lists that do not match the batch are
    one-line ValueErrors (nothing is written out of bounds)."""
    rng = np.random.default_rng(11)
    K, C, H, W = 7, 5, 33, 70
    a = torch.from_numpy(rng.gamma(2.0, size=(3, K, 5, 6)).astype(np.float32))
    T = torch.from_numpy(np.quantile(a.numpy(), np.linspace(0.6, 0.99, K)).astype(np.float32))
    per = [(torch.tensor([0, 4]), torch.from_numpy((rng.random((2, H, W)) < 0.3).astype(np.float32))),
           (torch.zeros(0, dtype=torch.long), torch.zeros(0, H, W)),
           (torch.tensor([2]), torch.from_numpy(rng.random((1, H, W)) < 0.6))]
    ann = torch.tensor([[True, False], [True, True], [False, True]])
    ref = IoUTally(K, [0, 0, 1, 1, 1], 2)
    ref.update_sparse(a, (H, W), T, per, ann, backend="torch")
    for threads in (1, 3):
        t = IoUTally(K, [0, 0, 1, 1, 1], 2)
        t.update_sparse(a, (H, W), T, per, ann, backend="cpp", threads=threads)
        for name in ("inter", "label", "unit_cat", "unit_all"):
            assert torch.equal(getattr(ref, name), getattr(t, name)), (name, threads)
    assert ref.inter.sum() > 0
    bad = [(torch.tensor([0, 5]), per[0][1])] + per[1:]
    with pytest.raises(ValueError, match=r"concept index 5 outside \[0, 5\)"):
        IoUTally(K, [0, 0, 1, 1, 1], 2).update_sparse(a, (H, W), T, bad, ann, backend="cpp")
    with pytest.raises(ValueError, match="3 maps but 2 concept lists"):
        IoUTally(K, [0, 0, 1, 1, 1], 2).update_sparse(a, (H, W), T, per[:2], ann, backend="cpp")
    with pytest.raises(ValueError, match="backend must be"):
        IoUTally(K, [0, 0, 1, 1, 1], 2).update_sparse(a, (H, W), T, per, ann, backend="numba")


def test_binarise_matches_torch_interpolate():
    """Our float64 bilinear upsampling = F.interpolate (float64), except within rounding of T."""
    torch.manual_seed(0)
    for size in [(112, 112), (40, 37), (5, 7)]:
        a = torch.randn(2, 6, 7, 7)
        T = torch.randn(6) * 0.5
        ref = torch.nn.functional.interpolate(a.double(), size=size, mode="bilinear", align_corners=False)
        got = binarise_upsampled(a, size, T)
        sure = (ref - T.double().view(1, -1, 1, 1)).abs() > 1e-9
        assert torch.equal(got[sure], (ref > T.double().view(1, -1, 1, 1))[sure])
        assert sure.float().mean() > 0.999


def test_binarise_in_chunks_equals_one_shot():
    a = torch.randn(2, 7, 3, 3)
    T = torch.randn(7) * 0.3
    ref = torch.nn.functional.interpolate(a, size=(9, 11), mode="bilinear", align_corners=False) > T.view(1, -1, 1, 1)
    assert torch.equal(binarise_upsampled(a, (9, 11), T, max_elems=200), ref)


def test_assign_labels_without_actions():
    iou = torch.tensor([[0.02, 0.3, 0.05], [0.01, 0.02, 0.03]])
    full = assign_labels(iou, None, 0.04)
    assert full["concept"].tolist() == [1, 2] and full["interpretable"].tolist() == [True, False]
    noact = assign_labels(iou, torch.tensor([True, False, True]), 0.04)
    assert noact["concept"].tolist() == [2, 2] and noact["interpretable"].tolist() == [True, False]


# ------------------------------------------------------------------ a hand-made Broden folder
def _png(path, labels):
    from PIL import Image

    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    Image.fromarray(rgb).save(path)


def make_broden(root, n=4, size=16, rows_extra=None):
    """n images; concept 1 'redthing' (color) where the red channel is on (a 2x4 block, 8 of 256
    pixels), concept 2 'blob' (object) elsewhere, concept 3 'sky' (scene, image level),
    concept 4 'waving' (action, a box)."""
    from PIL import Image

    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    with open(os.path.join(root, "label.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for row in ([1, "redthing", "color(4)"], [2, "blob", "object(4)"], [3, "sky", "scene(4)"],
                    [4, "waving", "action(4)"]):
            w.writerow(row + [4, 1, ""])
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        y, x = 2 + i, 3 + 2 * i
        img[y:y + 2, x:x + 4, 0] = rng.integers(200, 256, size=(2, 4))
        img[..., 1] = rng.integers(0, 40, size=(size, size))
        Image.fromarray(img).save(os.path.join(root, "images", f"im{i}.png"))
        col = np.zeros((size, size), np.int64)
        col[y:y + 2, x:x + 4] = 1
        obj = np.zeros((size, size), np.int64)
        obj[10:14, 1:9] = 2
        _png(os.path.join(root, "images", f"im{i}_color.png"), col)
        _png(os.path.join(root, "images", f"im{i}_object.png"), obj)
        rows.append([f"im{i}.png", "test", size, size, size, size, f"im{i}_color.png", f"im{i}_object.png", "3",
                     f"box:{x},{y},{x + 4},{y + 6}:4"])
    with open(os.path.join(root, "index.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "split", "ih", "iw", "sh", "sw", "color", "object", "scene", "action"])
        w.writerows(rows + (rows_extra or []))
    return root


def test_broden_reader_masks(tmp_path):
    b = Broden(make_broden(str(tmp_path / "b")))
    assert len(b) == 4 and b.categories == ["color", "object", "scene", "action"]
    assert {c.name: c.category for c in b.concepts.values()} == {"redthing": "color", "blob": "object",
                                                                  "sky": "scene", "waving": "action"}
    img, masks, ann = b.load(1)
    assert img.shape == (16, 16, 3) and ann == ["color", "object", "scene", "action"]
    assert masks[1].sum() == 8 and masks[1][3:5, 5:9].all()
    assert masks[3].all()                                   # image-level scene
    assert masks[4].sum() == 24 and masks[4][3:9, 5:9].all()   # the action box x 5..8, y 3..8


@pytest.mark.parametrize("bad,match", [
    (["imX.png", "test", "x", 16, 16, 16, "", "", "", ""], r"index.csv:6: ih 'x' is not an integer"),
    (["imX.png", "test", 16, 16, 0, 16, "", "", "", ""], r"index.csv:6: sh must be > 0"),
    (["imX.png", "test", 16, 16, 16, 16, "mask.jpg", "", "", ""], r"index.csv:6: color token 'mask.jpg' is neither"),
    (["imX.png", "test", 16, 16, 16, 16, "", "", "99", ""], r"index.csv:6: scene label 99 is not in label.csv"),
    (["", "test", 16, 16, 16, 16, "", "", "", ""], r"index.csv:6: empty image name"),
])
def test_broden_malformed_rows_are_named_errors(tmp_path, bad, match):
    root = make_broden(str(tmp_path / "b"), rows_extra=[bad])
    with pytest.raises(BrodenError, match=match):
        Broden(root)


def test_broden_missing_columns_and_files(tmp_path):
    root = make_broden(str(tmp_path / "b"))
    with pytest.raises(BrodenError, match="not a folder"):
        Broden(str(tmp_path / "nope"))
    with pytest.raises(BrodenError, match="empty concept set"):
        Broden(root, categories=["material"])
    with pytest.raises(BrodenError, match="unknown concept categories"):
        Broden(root, categories=["smell"])
    os.unlink(os.path.join(root, "label.csv"))
    with pytest.raises(BrodenError, match="label.csv: missing"):
        Broden(root)


def test_broden_unreadable_mask_is_named_when_loaded(tmp_path):
    root = make_broden(str(tmp_path / "b"))
    with open(os.path.join(root, "images", "im2_color.png"), "wb") as f:
        f.write(b"not a png")
    b = Broden(root)
    with pytest.raises(BrodenError, match="im2_color.png: mask cannot be read"):
        b.masks(2)


# ------------------------------------------------------------------ whole pipeline with a hand-built unit
class _Oracle(nn.Module):
    """Unit 0 = the red channel of the (static) clip, unit 1 = the green channel (noise)."""

    modality = "video"

    def __init__(self):
        super().__init__()
        self.layer4 = nn.Identity()
        self.classifier = nn.Linear(2, 3)

    def forward(self, x):
        f = self.layer4(x[:, :2].mean(dim=2))          # [B, 2, H, W]
        return self.classifier(f.mean(dim=(2, 3)))


def test_hand_built_unit_gets_its_concept_with_iou_one(tmp_path):
    from mmit_fast.data.sampling import ClipSpec
    from mmit_fast.interpret.dissect_run import dissect_model

    b = Broden(make_broden(str(tmp_path / "b")))
    spec = ClipSpec(frames=2, stride=1, crop=16)
    raw = dissect_model(_Oracle().eval(), spec, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), b, ["layer4"],
                        quantile=8 / 256, batch_size=3)
    iou = raw["layers"]["layer4"]["iou"].iou().numpy()
    red = raw["concepts"].index(1)
    assert iou[0, red] == pytest.approx(1.0, abs=1e-12)
    assert int(np.argmax(iou[0])) == red
    assert iou[1].max() < 0.5


class _NaNUnit(_Oracle):
    """The oracle with unit 1 broken (NaN) on the second image."""

    def forward(self, x):
        f = x[:, :2].mean(dim=2).clone()
        if f.shape[0] > 1:
            f[1, 1, 0, 0] = float("nan")
        f = self.layer4(f)
        return self.classifier(f.mean(dim=(2, 3)))


def test_input_buffer_reuse_equals_a_fresh_input():
    """The static-clip input written into a reused buffer (or its first rows, for a short last
    batch) equals a freshly built one; a buffer of another shape is not used."""
    from mmit_fast.data.sampling import ClipSpec
    from mmit_fast.interpret.dissect_inputs import static_clip as _input

    spec, mean, std = ClipSpec(frames=3, stride=1, crop=8), (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    buf = _input(a, spec, mean, std, "cpu", True)
    assert buf.shape == (4, 3, 3, 8, 8) and torch.equal(buf[:, :, 0], buf[:, :, 2])
    x = _input(b, spec, mean, std, "cpu", True, buf)
    assert x.data_ptr() == buf.data_ptr() and x.is_contiguous()
    assert torch.equal(x, _input(b, spec, mean, std, "cpu", True))
    other = torch.empty(4, 3, 5, 8, 8)
    assert _input(a, spec, mean, std, "cpu", True, other).data_ptr() != other.data_ptr()


def test_non_finite_activations_are_a_named_error(tmp_path):
    from mmit_fast.data.sampling import ClipSpec
    from mmit_fast.interpret.dissect_run import dissect_model

    b = Broden(make_broden(str(tmp_path / "b")))
    with pytest.raises(ValueError, match=r"^layer layer4, images 0\.\.2: 1 non-finite activation value\(s\)"):
        dissect_model(_NaNUnit().eval(), ClipSpec(frames=2, stride=1, crop=16), (0.5,) * 3, (0.25,) * 3, b,
                      ["layer4"], batch_size=3)


def test_run_dissect_outputs_and_bad_layer(tmp_path):
    from mmit_fast.interpret import run_dissect
    from mmit_fast.interpret.layers import UnknownLayerError

    _, broden, classes = tiny_synth(str(tmp_path / "s"))
    ck = write_checkpoint(str(tmp_path / "m.pt"), classes=classes)
    out = str(tmp_path / "d")
    s = run_dissect(ck, broden, out, device="cpu", batch_size=8)
    assert list(s["layers"]) == ["layer1", "layer2", "layer3", "layer4"]
    assert json.load(open(os.path.join(out, "summary.json")))["images"] == s["images"] > 0
    html = open(os.path.join(out, "report.html")).read()
    for key in ("fig7", "table5", "units_layer4", "fig10") if "fig10" in s["files"] else ("fig7", "units_layer4"):
        assert os.path.getsize(s["files"][key]) > 0
    assert "fig7_blockwise.png" in html and "Table 5" in html
    with open(s["files"]["units_layer4"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == s["layers"]["layer4"]["units"] == 32
    assert all(r["top_classes"].count(";") == 2 for r in rows)       # unit-to-class links on the last stage
    with pytest.raises(UnknownLayerError, match=r"'layer7' not found.*available: layer1"):
        run_dissect(ck, broden, out, layers=["layer7"], device="cpu")


def test_unit_to_class_is_the_weight_column():
    from mmit_fast.interpret.dissect_report import unit_classes

    m = _Oracle()
    with torch.no_grad():
        m.classifier.weight.copy_(torch.tensor([[0.1, 0.9], [0.5, -1.0], [0.3, 0.2]]))
        m.classifier.bias.fill_(5.0)
    # unit 0 alone (bias 0): logits = W[:, 0] = (.1, .5, .3) -> classes 1, 2, 0
    assert unit_classes(m) == [[1, 2, 0], [0, 2, 1]]


def test_cli_dissect_empty_concept_set(tmp_path, capsys):
    from mmit_fast.cli import main

    root = make_broden(str(tmp_path / "b"))
    ck = write_checkpoint(str(tmp_path / "m.pt"))
    rc = main(["dissect", root, "--checkpoint", ck, "--categories", "material", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "empty concept set" in err and len(err.splitlines()) == 1
