"""Multi-Moving-Shapes: the labels, the ground truth and the pixels agree with each other and
with the definitions of the actions; the dataset goes through the packer; Broden export."""
import csv
import io
import json
import os

import numpy as np
import pytest

from mmit_fast import shards as S
from mmit_fast.pack import validate_dataset
from mmit_fast.pack.synth import (AUDIO_ACTIONS, CLASSES, COLOR_RGB, OBJECTS, TEXTURES, VISUAL_ACTIONS,
                                  SynthConfig, _sample_video, export_broden, generate_dataset, render_video,
                                  sample_labels)
from mmit_fast.pack.layout import box_gap
from mmit_fast.pack.transcode import decode_audio_bytes, decode_video_bytes
from mmit_fast.pack.writer import iter_tar_samples

SMALL = dict(num_videos=12, size=64, fps=12.5, seconds=2.0, workers=2, progress=False)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    man = generate_dataset(str(out), seed=3, no_audio_prob=0.5, **SMALL)
    return out, man


def _samples(man, split):
    return [(k, m) for p in man.shard_paths(split) for k, m in iter_tar_samples(p)]


def test_vocabulary_and_dataset_layout(ds):
    out, man = ds
    assert len(VISUAL_ACTIONS) >= 20 and len(AUDIO_ACTIONS) >= 2
    assert man.classes == list(CLASSES) and len(set(CLASSES)) == len(CLASSES)
    assert {s: man.num_samples(s) for s in S.SPLITS} == {"train": 10, "val": 1, "test": 1}
    assert validate_dataset(str(out), decode=True)["errors"] == []
    counts = np.zeros(len(CLASSES), int)
    n_audio = 0
    for key, mem in _samples(man, "train"):
        meta = json.loads(mem["json"])
        ids = S.decode_label_ids(mem["ids"]).tolist()
        assert 1 <= len(ids) <= 4 and meta["labels"] == [CLASSES[i] for i in ids]
        counts[ids] += 1
        n_audio += meta["has_audio"]
        assert meta["frames"] == 25 and (meta["width"], meta["height"]) == (64, 64)
    assert man.class_counts("train").tolist() == counts.tolist()
    assert man.splits["train"]["without_audio"] == 10 - n_audio
    assert 0 < n_audio < 10  # both the audio and the no-audio paths are exercised


def test_finished_dataset_is_reused_not_rerendered(ds):
    out, man = ds
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
    again = generate_dataset(str(out), seed=3, no_audio_prob=0.5, **SMALL)
    assert again.to_dict() == man.to_dict()
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)} == before
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(str(out), seed=4, no_audio_prob=0.5, **SMALL)


def test_broden_export_is_not_skipped_when_the_dataset_already_exists(ds, tmp_path):
    """``mmit synth DIR --broden X`` on a finished DIR reuses the shards but still exports X."""
    out, man = ds
    bd = tmp_path / "broden"
    again = generate_dataset(str(out), seed=3, no_audio_prob=0.5, broden=str(bd), **SMALL)
    assert again.to_dict() == man.to_dict()
    with open(bd / "videos.csv") as f:
        keys = {r["key"] for r in csv.DictReader(f)}
    assert keys == {k for k, _ in _samples(man, "test")}


def test_deterministic_and_seed_dependent():
    cfg = SynthConfig(size=48, fps=10, seconds=1.0, seed=5)
    a, b = render_video(cfg, 4), render_video(cfg, 4)
    assert np.array_equal(a["frames"], b["frames"]) and a["labels"] == b["labels"]
    assert all(np.array_equal(a["gt"][k], b["gt"][k]) for k in a["gt"])
    c = render_video(SynthConfig(size=48, fps=10, seconds=1.0, seed=6), 4)
    assert not np.array_equal(a["frames"], c["frames"])


def test_packed_pixels_agree_with_ground_truth_masks(ds):
    """Decoded packed frames show each actor's colour inside its mask and the background outside."""
    out, man = ds
    checked = 0
    for key, mem in _samples(man, "train"):
        with np.load(io.BytesIO(mem["gt.npz"]), allow_pickle=False) as z:
            gt = {k: z[k] for k in z.files}
        _, w, h, frames = decode_video_bytes(mem["mp4"], keep=True)
        amap = gt["actor_map"]
        assert amap.shape == frames.shape[:3]
        present = set(gt["present"].tolist())
        assert set(json.loads(mem["json"])["label_ids"]) <= present
        acts = [int(a) for a in gt["actor_action"]]
        assert sorted(acts) == sorted(c for c in present if c < len(VISUAL_ACTIONS))
        for a, act in enumerate(acts):
            if TEXTURES[gt["actor_texture"][a]] != "solid" or VISUAL_ACTIONS[act] in ("fading_in", "fading_out"):
                continue
            for t in range(0, amap.shape[0], 6):
                m = amap[t] == a + 1
                # erode by one pixel: compression blurs the edges
                core = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
                if core.sum() < 12:
                    continue
                got = frames[t, 1:-1, 1:-1][core].astype(float).mean(0)
                want = COLOR_RGB[gt["actor_color"][a, t]]
                assert np.abs(got - want).max() < 40, (key, a, t, got, want)
                # the box holds the visible mask
                ys, xs = np.nonzero(m)
                x0, y0, x1, y1 = gt["boxes"][a, t]
                assert xs.min() >= x0 - 0.5 and xs.max() < x1 + 0.5 and ys.min() >= y0 - 0.5 and ys.max() < y1 + 0.5
                checked += 1
        bg = amap == 0
        assert frames[bg].astype(float).mean() < 110  # dim background, bright actors
    assert checked >= 10


def test_actions_follow_their_definitions_over_time():
    """Check each visual action against its meaning using the per-frame boxes."""
    cfg = SynthConfig(size=64, fps=10, seconds=2.0, seed=1, tail=0.0, action_count_probs=(0, 0, 0, 1))
    seen = set()
    for i in range(40):
        r = render_video(cfg, i)
        gt = r["gt"]
        boxes, vis = gt["boxes"].astype(float), gt["visible"]
        T = boxes.shape[1]
        for a, act in enumerate(gt["actor_action"]):
            name = VISUAL_ACTIONS[int(act)]
            cx, cy = (boxes[a, :, 0] + boxes[a, :, 2]) / 2, (boxes[a, :, 1] + boxes[a, :, 3]) / 2
            area = (boxes[a, :, 2] - boxes[a, :, 0]) * (boxes[a, :, 3] - boxes[a, :, 1])
            d = {"moving_left": cx[0] - cx[-1], "moving_right": cx[-1] - cx[0],
                 "moving_up": cy[0] - cy[-1], "moving_down": cy[-1] - cy[0], "falling": cy[-1] - cy[0],
                 "growing": area[-1] - area[0], "shrinking": area[0] - area[-1]}
            if name in d:
                assert d[name] > 5, (i, name, d[name])
            if name == "falling":  # accelerating: more distance in the second half
                h = T // 2
                assert cy[-1] - cy[h] > 1.5 * (cy[h] - cy[0])
            if name == "moving_down":  # uniform speed
                h = T // 2
                assert abs((cy[-1] - cy[h]) - (cy[h] - cy[0])) < 3
            if name == "fading_in":
                assert not vis[a, 0] and vis[a, -1]
            if name == "fading_out":
                assert vis[a, 0] and not vis[a, -1]
            if name == "blinking":
                assert 0 < vis[a].mean() < 1
            if name == "color_changing":
                assert len(set(gt["actor_color"][a].tolist())) > 1
            if name in ("shaking", "orbiting", "bouncing", "zigzagging", "swinging"):
                assert np.ptp(cx) + np.ptp(cy) > 4
            seen.add(name)
    assert len(seen) >= 15


def test_long_tail_and_label_dropout():
    cfg = SynthConfig(tail=1.0, seed=2, label_dropout=0.4)
    p = cfg.class_probs()
    assert abs(p.sum() - 1) < 1e-9 and p.max() / p.min() > 10
    counts = np.zeros(len(CLASSES))
    dropped = kept = 0
    for i in range(1500):
        v = _sample_video(cfg, i)
        counts[v["present"]] += 1
        assert set(v["labels"]) <= set(v["present"]) and len(v["labels"]) >= 1
        assert 1 <= len(v["present"]) <= 4
        dropped += len(v["present"]) - len(v["labels"])
        kept += len(v["labels"])
    # frequencies follow the configured long tail (rank correlation with the probabilities)
    rank = lambda x: np.argsort(np.argsort(x))
    assert np.corrcoef(rank(counts), rank(p))[0, 1] > 0.9
    assert 0.3 < dropped / (dropped + kept) < 0.45
    flat = SynthConfig(tail=0.0).class_probs()
    assert np.allclose(flat, 1 / len(CLASSES))


def test_auditory_classes_are_in_the_audio_track(ds):
    """Auditory labels <-> spectral content of the packed (lossless) audio."""
    cfg = SynthConfig(seed=0, size=48, fps=10, seconds=2.0)
    freqs = {"beeping": 1000, "humming": 140}
    found = 0
    for i in range(200):
        v = _sample_video(cfg, i)
        names = {CLASSES[c] for c in v["audio_actions"]}
        if not names & set(freqs) or found >= 4:
            continue
        r = render_video(cfg, i)
        x = r["audio"]
        spec = np.abs(np.fft.rfft(x))
        f = np.fft.rfftfreq(x.size, 1 / 22050)
        for name, f0 in freqs.items():
            band = spec[(f > f0 * 0.85) & (f < f0 * 1.15)].max()
            floor = np.median(spec)
            assert (band > 50 * floor) == (name in names), (i, name, names)
        found += 1
    assert found >= 2
    # packed audio decodes back to the rendered waveform (FLAC, 16 bit)
    out, man = ds
    for key, mem in _samples(man, "train"):
        meta = json.loads(mem["json"])
        if meta["has_audio"]:
            r = render_video(SynthConfig(seed=3, no_audio_prob=0.5, **{k: SMALL[k] for k in ("num_videos", "size", "fps", "seconds")}),
                             meta["synth_index"])
            a = decode_audio_bytes(mem["flac"])
            assert a.size == r["audio"].size and np.abs(a - r["audio"]).max() < 1e-4
            break


def test_broden_export_layout(ds, tmp_path):
    out, man = ds
    bd = export_broden(str(out), str(tmp_path / "broden"), split="train", frames_per_video=2, max_videos=3)
    with open(os.path.join(bd, "index.csv")) as f:
        rd = csv.DictReader(f)
        rows = list(rd)
        assert rd.fieldnames[:12] == ["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part",
                                      "material", "scene", "texture"]
    assert len(rows) == 6
    with open(os.path.join(bd, "label.csv")) as f:
        labels = {int(r["number"]): r for r in csv.DictReader(f)}
    with open(os.path.join(bd, "category.csv")) as f:
        cats = {r["name"]: r for r in csv.DictReader(f)}
    assert set(cats) == {"color", "object", "texture", "scene", "action"}
    for cat in cats:
        with open(os.path.join(bd, f"c_{cat}.csv")) as f:
            c_rows = list(csv.DictReader(f))
        assert [int(r["code"]) for r in c_rows] == list(range(1, len(c_rows) + 1))
        assert all(labels[int(r["number"])]["category"].startswith(cat + "(") for r in c_rows)
    with open(os.path.join(bd, "videos.csv")) as f:
        clips = {r["image"]: r for r in csv.DictReader(f)}
    gts = {k: np.load(io.BytesIO(m["gt.npz"])) for k, m in _samples(man, "train")}
    from PIL import Image

    for row in rows:
        img = np.asarray(Image.open(os.path.join(bd, "images", row["image"])))
        assert img.shape == (int(row["ih"]), int(row["iw"]), 3)
        clip = clips[row["image"]]
        gt = gts[clip["key"]]
        amap = gt["actor_map"][int(clip["frame"])]
        first, last = int(cats["object"]["first"]), int(cats["object"]["last"])
        if row["object"]:
            png = np.asarray(Image.open(os.path.join(bd, "images", row["object"])))
            lab = png[..., 0].astype(int) + 256 * png[..., 1].astype(int)   # Broden's encoding
            assert np.array_equal(lab > 0, amap > 0)
            assert lab[lab > 0].min() >= first and lab.max() <= last
            for a in np.unique(amap[amap > 0]):
                name = labels[int(lab[amap == a][0])]["name"]
                assert name == OBJECTS[gt["actor_object"][a - 1]]
        assert int(row["scene"]) in range(int(cats["scene"]["first"]), int(cats["scene"]["last"]) + 1)
        for fn in filter(None, row["action"].split(";")):
            png = np.asarray(Image.open(os.path.join(bd, "images", fn)))
            lab = png[..., 0].astype(int) + 256 * png[..., 1].astype(int)
            name = labels[int(lab.max())]["name"]
            assert name in VISUAL_ACTIONS and CLASSES.index(name) in gt["present"].tolist()


def test_cli_synth(tmp_path, capsys):
    from mmit_fast.cli import main

    rc = main(["synth", str(tmp_path / "d"), "--num-videos", "3", "--size", "32", "--fps", "8", "--seconds", "1",
               "--workers", "1", "--splits", "1,0,0", "--codec", "mjpeg"])
    assert rc == 0
    man = S.load_manifest(str(tmp_path / "d"))
    assert man.num_samples("train") == 3 and man.video["codec"] == "mjpeg" and "val" not in man.splits
    assert main(["inspect", str(tmp_path / "d")]) == 0
    # --overwrite with other settings replaces the whole dataset
    (tmp_path / "d" / "notes.txt").write_text("kept")
    assert main(["synth", str(tmp_path / "d"), "--num-videos", "4", "--size", "48", "--fps", "8", "--seconds", "1",
                 "--workers", "1", "--splits", "0.5,0.5,0", "--overwrite"]) == 0
    man = S.load_manifest(str(tmp_path / "d"))
    assert man.video["codec"] == "vp9" and man.video["short_side"] == 48
    assert sorted(n for n in os.listdir(tmp_path / "d") if not n.startswith(".")) == [
        "manifest.json", "notes.txt", "train-000000.idx", "train-000000.tar", "val-000000.idx", "val-000000.tar"]


# --------------------------------------------------------------------------- the "anywhere" layout
def _box_centres(cfg, n):
    cs = []
    for i in range(n):
        b = render_video(cfg, i)["gt"]["boxes"]
        ok = b[..., 2] > b[..., 0]
        cs.append(((b[..., 0] + b[..., 2]) / 2 / cfg.size)[ok])
        cs.append(((b[..., 1] + b[..., 3]) / 2 / cfg.size)[ok])
    return np.concatenate(cs)


def test_anywhere_layout_boxes_match_the_rendered_frames():
    """Every actor is wholly inside the frame in every frame, actors of a clip do not overlap, and
    each box is exactly the bounding box of the pixels the actor changed in the rendered frame
    (the frame compared with its background, re-rendered from the video's own seed)."""
    from mmit_fast.pack.synth import _background

    cfg = SynthConfig(size=64, fps=8, seconds=1.0, seed=11, layout="anywhere", action_count_probs=(0, 0.5, 0.5))
    checked = multi = 0
    for i in range(12):
        v, r = _sample_video(cfg, i), render_video(cfg, i)
        bg = np.clip(_background(v["scene"], cfg.size, v["bg_seed"]) + 0.5, 0, 255).astype(np.uint8)
        boxes, vis, amap = r["gt"]["boxes"], r["gt"]["visible"], r["gt"]["actor_map"]
        A = boxes.shape[0]
        multi += A >= 2
        for t in range(boxes.shape[1]):
            changed = (r["frames"][t] != bg).any(-1)
            for a in range(A):
                x0, y0, x1, y1 = boxes[a, t].astype(int)
                assert 1 <= x0 < x1 <= cfg.size - 1 and 1 <= y0 < y1 <= cfg.size - 1, (i, a, t, boxes[a, t])
                for o in range(a + 1, A):   # actors of one clip stand apart
                    p = boxes[o, t]
                    assert min(x1, p[2]) <= max(x0, p[0]) or min(y1, p[3]) <= max(y0, p[1]), (i, a, o, t)
                if not vis[a, t]:
                    continue
                ys, xs = np.nonzero(amap[t] == a + 1)
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
                own = np.zeros_like(changed)
                own[y0:y1, x0:x1] = True
                cy, cx = np.nonzero(changed & own)
                assert (cx.min(), cy.min(), cx.max() + 1, cy.max() + 1) == (x0, y0, x1, y1), (i, a, t)
                checked += 1
            inside = np.zeros_like(changed)
            for a in range(A):
                x0, y0, x1, y1 = boxes[a, t].astype(int)
                inside[y0:y1, x0:x1] = True
            assert not (changed & ~inside).any()   # nothing drawn outside the boxes
    assert checked > 100 and multi >= 10


def test_anywhere_layout_spreads_actors_over_the_frame():
    """Box centres per frame: the centre layout keeps them in the middle, "anywhere" spreads them
    (share of centre coordinates, x and y, more than 1/6 of the side from the middle; uniform over
    the part of the frame a 0.1-radius actor can use gives 0.57)."""
    kw = dict(size=64, fps=8, seconds=1.0, seed=2, action_count_probs=(0.3, 0.4, 0.3))
    far = {lay: float((np.abs(_box_centres(SynthConfig(layout=lay, **kw), 40) - 0.5) > 1 / 6).mean())
           for lay in ("centre", "anywhere")}
    assert far["centre"] < 0.4 < 0.5 < far["anywhere"], far


def test_close_layout_boxes_match_the_rendered_frames():
    """The close layout: every actor wholly inside the frame; the actors of a clip side by side
    (each actor's box within 0.05 of the side of its nearest neighbour's in about half the frames, boxes
    overlapping by at most 0.08 of it along one axis in every frame); each box is the bounding box of the actor's whole shape: exactly its own
    pixels' box for the actor drawn last, and for an actor partly covered by later ones its own
    pixels lie in its box, and the box is that of its pixels with the covering actors' pixels in it."""
    from mmit_fast.pack.synth import _background

    cfg = SynthConfig(size=112, fps=4, seconds=2.0, seed=11, layout="close", action_count_probs=(0, 0.5, 0.5))
    checked = multi = near = pairs = covered = 0
    for i in range(16):
        v, r = _sample_video(cfg, i), render_video(cfg, i)
        bg = np.clip(_background(v["scene"], cfg.size, v["bg_seed"]) + 0.5, 0, 255).astype(np.uint8)
        boxes, vis, amap = r["gt"]["boxes"], r["gt"]["visible"], r["gt"]["actor_map"]
        A = boxes.shape[0]
        multi += A >= 2
        for t in range(boxes.shape[1]):
            changed = (r["frames"][t] != bg).any(-1)
            for a in range(A):
                x0, y0, x1, y1 = boxes[a, t].astype(int)
                assert 1 <= x0 < x1 <= cfg.size - 1 and 1 <= y0 < y1 <= cfg.size - 1, (i, a, t, boxes[a, t])
                gaps = [box_gap(tuple(boxes[a, t]), tuple(boxes[o, t])) for o in range(A) if o != a]
                if gaps:   # its nearest neighbour
                    assert min(gaps) >= -0.08 * cfg.size - 1e-3, (i, a, t, gaps)
                    pairs, near = pairs + 1, near + (min(gaps) <= 0.05 * cfg.size)
                if not vis[a, t]:
                    continue
                ys, xs = np.nonzero(amap[t] == a + 1)
                later = np.isin(amap[t], np.arange(a + 2, A + 1)) & changed
                if not later[y0:y1, x0:x1].any():   # nothing drawn over it: its pixels' box exactly
                    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1), (i, a, t)
                    checked += 1
                    continue
                covered += 1
                assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
                win = np.zeros_like(changed)
                win[y0:y1, x0:x1] = True
                cy, cx = np.nonzero((amap[t] == a + 1) | (later & win))
                assert (cx.min(), cy.min(), cx.max() + 1, cy.max() + 1) == (x0, y0, x1, y1), (i, a, t)
            inside = np.zeros_like(changed)
            for a in range(A):
                x0, y0, x1, y1 = boxes[a, t].astype(int)
                inside[y0:y1, x0:x1] = True
            assert not (changed & ~inside).any()   # nothing drawn outside the boxes
    print(checked, multi, covered, near, pairs)
    assert checked > 100 and multi >= 10 and covered >= 5, (checked, multi, covered)
    assert near / pairs > 0.4, (near, pairs)   # moving actors pass by: about half the frames (anywhere: ~0)


def test_close_layout_puts_actors_nearer_than_anywhere():
    """Per frame, the gap between the boxes of two actors of a clip: the close layout's median is
    under 0.05 of the side, the anywhere layout's over 0.1; the clips' classes are the same."""
    def gaps(lay):
        cfg = SynthConfig(size=112, fps=4, seconds=2.0, seed=3, layout=lay, action_count_probs=(0, 1))
        out = []
        for i in range(30):
            b = render_video(cfg, i)["gt"]["boxes"]
            if len(b) == 2:   # two visual actions (not an auditory one)
                out += [box_gap(tuple(b[0, t]), tuple(b[1, t])) / cfg.size for t in range(b.shape[1])]
        assert len(out) > 100
        return np.median(out)

    close, anywhere = gaps("close"), gaps("anywhere")
    assert close < 0.05 and anywhere > 0.1, (close, anywhere)
    assert sample_labels(SynthConfig(seed=3, layout="close"), 4) == sample_labels(SynthConfig(seed=3, layout="anywhere"), 4)


def test_layout_is_recorded_and_the_default_is_unchanged(tmp_path):
    from mmit_fast.cli import main

    with pytest.raises(ValueError, match="layout must be one of centre, anywhere, close"):
        SynthConfig(layout="middle")
    # the default layout renders what it rendered before layouts existed (same draws, same pixels)
    a = render_video(SynthConfig(size=48, fps=10, seconds=1.0, seed=5), 3)
    b = render_video(SynthConfig(size=48, fps=10, seconds=1.0, seed=5, layout="centre"), 3)
    assert np.array_equal(a["frames"], b["frames"])
    c = render_video(SynthConfig(size=48, fps=10, seconds=1.0, seed=5, layout="anywhere"), 3)
    assert not np.array_equal(a["frames"], c["frames"])
    args = ["--num-videos", "2", "--size", "32", "--fps", "8", "--seconds", "1", "--workers", "1", "--splits", "1,0,0",
            "--codec", "mjpeg"]
    for lay in ("anywhere", "close"):
        assert main(["synth", str(tmp_path / lay), "--layout", lay, *args]) == 0
        man = S.load_manifest(str(tmp_path / lay))
        assert man.source["splits"]["train"]["config"]["layout"] == lay
    # a dataset recorded before layouts existed is the centre layout: reused, not re-rendered
    assert main(["synth", str(tmp_path / "e"), *args]) == 0
    mpath = tmp_path / "e" / "manifest.json"
    m = json.loads(mpath.read_text())
    del m["source"]["splits"]["train"]["config"]["layout"]
    mpath.write_text(json.dumps(m))
    before = os.path.getmtime(tmp_path / "e" / "train-000000.tar")
    assert main(["synth", str(tmp_path / "e"), *args]) == 0
    assert os.path.getmtime(tmp_path / "e" / "train-000000.tar") == before
