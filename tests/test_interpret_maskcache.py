"""Packed concept masks: the bit-packed tally equals the byte-mask tally (both backends), the cache
gives back exactly what the Broden reader reads, cold and warm, and a changed concept set or a
damaged cache file is never used (named, rebuilt)."""
import json
import os
import struct
import sys
import warnings

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_interpret_dissect import _Oracle, _png, make_broden  # noqa: E402

from mmit_fast.interpret.broden import Broden  # noqa: E402
from mmit_fast.interpret.dissect import IoUTally, unpack_concepts  # noqa: E402
from mmit_fast.interpret.maskcache import MaskCache, pack_bits  # noqa: E402


def _packed(per, H, W):
    """(bits, word, offsets, concept, area) of per-image (indices, bool masks); all-ones masks as -1."""
    words, word, concept, area, offsets = [], [], [], [], [0]
    n = 0
    for idx, L in per:
        for c, m in zip(idx.tolist(), L.numpy()):
            concept.append(c)
            area.append(float(m.sum()))
            if m.all():
                word.append(-1)
            else:
                word.append(n)
                words.append(pack_bits(m[None]).reshape(-1))
                n += words[-1].size
        offsets.append(len(concept))
    bits = torch.from_numpy(np.concatenate(words).view(np.int64)) if words else torch.zeros(0, dtype=torch.int64)
    return (bits, torch.tensor(word, dtype=torch.int64), torch.tensor(offsets), torch.tensor(concept, dtype=torch.int64),
            torch.tensor(area, dtype=torch.float64))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("H,W", [(33, 70), (112, 112), (5, 64), (9, 130)])
def test_packed_tally_equals_byte_mask_tally(backend, H, W):
    """update_packed (masks read as bits in place; whole-image labels as no bits) = update_sparse on
    the same masks, every sum, with float64 thresholds."""
    rng = np.random.default_rng(H * W)
    K, C, B = 7, 5, 4
    a = torch.from_numpy(rng.gamma(2.0, size=(B, K, 5, 6)).astype(np.float32))
    T = torch.from_numpy(np.quantile(a.numpy().astype(np.float64), np.linspace(0.5, 0.99, K)))
    per = []
    for b in range(B):
        idx = torch.tensor(sorted(rng.choice(C, int(rng.integers(0, C + 1)), replace=False).tolist()), dtype=torch.long)
        L = torch.from_numpy(rng.random((len(idx), H, W)) < 0.4)
        if len(idx) > 1:
            L[0] = True                                        # a whole-image label (a scene)
        per.append((idx, L))
    ann = torch.from_numpy(rng.random((B, 2)) < 0.7)
    ref, got = IoUTally(K, [0, 0, 1, 1, 1], 2), IoUTally(K, [0, 0, 1, 1, 1], 2)
    ref.update_sparse(a, (H, W), T, per, ann, backend="torch")
    got.update_packed(a, (H, W), T, *_packed(per, H, W), ann, backend=backend)
    for name in ("inter", "label", "unit_cat", "unit_all"):
        assert torch.equal(getattr(ref, name), getattr(got, name)), name
    assert ref.inter.sum() > 0


def test_packed_tally_rejects_masks_outside_the_bits():
    bits, word, off, cpt, area = _packed([(torch.tensor([0]), torch.rand(1, 8, 8) < 0.5)], 8, 8)
    with pytest.raises(ValueError, match="mask 0 lies outside the packed bits"):
        IoUTally(2, [0], 1).update_packed(torch.ones(1, 2, 2, 2), (8, 8), torch.zeros(2, dtype=torch.float64),
                                          bits, word + 1, off, cpt, area, torch.ones(1, 1, dtype=torch.bool))


def _all_rows(cache, b):
    out = {}
    for i in range(len(b)):
        pm = cache.batch([i])
        if pm.rows:
            idx, L = unpack_concepts(pm.bits, pm.word, pm.offsets, pm.concept, (b.rows[i].sh, b.rows[i].sw))[0]
            out[i] = ({int(c): m.numpy() for c, m in zip(idx, L)}, pm.annotated[0].tolist(), pm.area.tolist())
        else:
            out[i] = pm.bad[0][1]
    return out


def _reader_rows(b, index):
    out = {}
    for i in range(len(b)):
        m, ann = b.masks(i)
        out[i] = ({index[c]: v for c, v in m.items()}, [c in ann for c in b.categories])
    return out


def test_cache_cold_and_warm_give_the_reader_s_masks(tmp_path):
    b = Broden(make_broden(str(tmp_path / "b"), n=5, size=70))
    index = {c: j for j, c in enumerate(sorted(b.concepts))}
    truth = _reader_rows(b, index)
    cold = MaskCache(b, index, cache_dir=str(tmp_path / "cache"), threads=2).open()
    got_cold = _all_rows(cold, b)
    cold.close()
    warm = MaskCache(b, index, cache_dir=str(tmp_path / "cache"), threads=1).open()
    got_warm = _all_rows(warm, b)
    warm.close()
    off = MaskCache(b, index, cache_dir=None).open()
    got_off = _all_rows(off, b)
    off.close()
    assert (cold.status, warm.status, off.status) == ("built", "hit", "off")
    assert not os.path.exists(off.path)                       # no cache folder: the temporary file is gone
    for got in (got_cold, got_warm, got_off):
        for i, (masks, ann) in truth.items():
            m, a, area = got[i]
            assert sorted(m) == sorted(masks) and a == ann
            assert all(np.array_equal(m[c], masks[c]) for c in masks)
            assert area == [float(masks[c].sum()) for c in sorted(masks)]
    assert len(os.listdir(tmp_path / "cache")) == 1            # one file, no temporary left behind


def test_changed_mask_file_rebuilds_the_cache(tmp_path):
    root = make_broden(str(tmp_path / "b"), n=4)
    b = Broden(root)
    index = {c: j for j, c in enumerate(sorted(b.concepts))}
    cache = str(tmp_path / "cache")
    MaskCache(b, index, cache_dir=cache).open().close()
    new = np.zeros((16, 16), np.int64)
    new[0:3, 0:3] = 1
    _png(os.path.join(root, "images", "im1_color.png"), new)     # same name, other content
    with pytest.warns(RuntimeWarning, match="out of date"):
        c = MaskCache(Broden(root), index, cache_dir=cache).open()
    assert c.status.startswith("rebuilt: is out of date")
    assert np.array_equal(_all_rows(c, b)[1][0][index[1]], new == 1)
    c.close()
    assert MaskCache(Broden(root), index, cache_dir=cache).open().status == "hit"


@pytest.mark.parametrize("damage", ["flip", "truncate", "huge", "garbage"])
def test_damaged_cache_file_is_named_and_rebuilt(tmp_path, damage):
    b = Broden(make_broden(str(tmp_path / "b"), n=4))
    index = {c: j for j, c in enumerate(sorted(b.concepts))}
    cache = str(tmp_path / "cache")
    c = MaskCache(b, index, cache_dir=cache).open()
    truth = _all_rows(c, b)
    c.close()
    path = c.path
    raw = bytearray(open(path, "rb").read())
    if damage == "flip":
        raw[64 + 3] ^= 0x10                                    # one bit of a mask
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "huge":                                     # a header that claims 2^40 words: nothing allocated
        body = struct.unpack("<Q", bytes(raw[-16:-8]))[0]
        head = json.loads(bytes(raw[body:-16]))
        head["n_words"] = 1 << 40
        raw = raw[:body] + json.dumps(head).encode() + struct.pack("<Q", body) + raw[-8:]
    else:
        raw = bytearray(b"x" * 200)
    open(path, "wb").write(bytes(raw))
    with pytest.warns(RuntimeWarning, match=r"\.masks: mask cache is damaged"):
        c = MaskCache(b, index, cache_dir=cache).open()
    assert c.status.startswith("rebuilt: is damaged")
    assert _all_rows(c, b).keys() == truth.keys()
    for i in truth:
        assert all(np.array_equal(_all_rows(c, b)[i][0][k], truth[i][0][k]) for k in truth[i][0])
    c.close()


def test_unreadable_masks_are_skipped_and_named_cold_and_warm(tmp_path):
    from mmit_fast.data.sampling import ClipSpec
    from mmit_fast.interpret.dissect_run import dissect_model

    root = make_broden(str(tmp_path / "b"), n=5)
    with open(os.path.join(root, "images", "im2_color.png"), "wb") as f:
        f.write(b"not a png")
    b = Broden(root)
    spec = ClipSpec(frames=2, stride=1, crop=16)
    runs = []
    for _ in range(2):
        raw = dissect_model(_Oracle().eval(), spec, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), b, ["layer4"],
                            quantile=8 / 256, batch_size=3, mask_cache=str(tmp_path / "cache"))
        runs.append(raw)
        assert list(raw["skipped"]) == ["im2.png"] and "im2_color.png: mask cannot be read" in raw["skipped"]["im2.png"]
    assert [r["mask_cache"] for r in runs] == ["built", "hit"]
    assert torch.equal(runs[0]["layers"]["layer4"]["iou"].inter, runs[1]["layers"]["layer4"]["iou"].inter)
    off = dissect_model(_Oracle().eval(), spec, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), b, ["layer4"],
                        quantile=8 / 256, batch_size=3, mask_cache=None)
    assert off["mask_cache"] == "off"
    for name in ("inter", "label", "unit_cat"):
        assert torch.equal(getattr(off["layers"]["layer4"]["iou"], name), getattr(runs[0]["layers"]["layer4"]["iou"], name))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # a hit warns about nothing
        MaskCache(b, {c: j for j, c in enumerate(sorted(b.concepts))}, cache_dir=str(tmp_path / "cache"),
                  rows=5).open().close()
