"""`mmit report`: the page of a run, its pictures, and a real browser rendering it.

The run folder is built here with the project's own writers (``evaluate.write_outputs`` for
the eval files, ``TrainConfig.save`` for the config) so the test reads what a run writes.
The browser test renders the page with headless Chromium (skipped where it is absent):
a script injected into a copy of the page counts images that failed to decode
(``naturalWidth == 0``), and the screenshot must not be blank.
"""
import base64
import csv
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from mmit_fast import report
from mmit_fast.evaluate import chance_metrics, table_row, write_outputs
from mmit_fast.metrics import evaluate

CLASSES = [f"action_{i}" for i in range(8)]


def _png_bytes(w=64, h=32, color=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def make_run(root, *, cam=True, dissect=True, classes=CLASSES):
    """A demo-like folder: root/train (config, CSVs, summary, eval/) + root/cam + root/dissect."""
    train = root / "train"
    ev = train / "eval"
    ev.mkdir(parents=True)
    (train / "config.yaml").write_text("model: i3d\ndepth: 18\nloss: wlsep\nlr: 0.002\nepochs: 2\ndata: /nonexistent\n")
    with open(train / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "batch", "loss", "lr", "grad_norm", "clips", "clips_per_s", "elapsed_s", "skipped"])
        for s in range(1, 41):
            w.writerow([s, (s - 1) // 20, (s - 1) % 20, 2.0 / s ** 0.3, 0.002 * min(1, s / 10), 1.0, 8 * s, 30, s, 0])
    with open(train / "val_metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "split", "top1", "top5", "micro_map", "macro_map", "pooled_ap", "num_videos"])
        w.writerow([0, 20, "val", 0.3, 0.7, 0.4, 0.3, 0.3, 60])
        w.writerow([1, 40, "val", 0.5, 0.9, 0.6, 0.4, 0.5, 60])
    json.dump({"steps": 40, "epochs_done": 2, "elapsed_s": 12.5, "clips_per_s": 30.0, "device": "cpu"},
              open(train / "summary.json", "w"))
    rng = np.random.default_rng(0)
    y = rng.random((60, 8)) < 0.2
    y[np.arange(60), rng.integers(0, 8, 60)] = True
    s = y * 1.5 + rng.normal(size=y.shape)
    for split in ("val", "test"):
        m = evaluate(s, y)
        m["chance"] = chance_metrics(y)
        write_outputs(str(ev), split, m, classes, y.astype(np.float32), [f"k{i}" for i in range(60)], s.astype(np.float32),
                      table_row("I3D-R18", "wLSEP", m), {"model": "I3D-R18", "loss": "wLSEP", "chance": m["chance"]})
    if cam:
        (root / "cam").mkdir()
        recs = []
        for i in range(3):
            (root / "cam" / f"clip{i}.png").write_bytes(_png_bytes(color=(40 * i, 120, 200)))
            recs.append({"key": f"clip{i}", "truth": ["action_1"], "pred": [["action_1", 0.9], ["action_2", 0.3]],
                         "png": f"clip{i}.png", "gif": None})
        json.dump({"records": recs, "skipped": []}, open(root / "cam" / "cams.json", "w"))
        (root / "cam" / "index.html").write_text("<html><body>gallery</body></html>")
    if dissect:
        (root / "dissect").mkdir()
        json.dump({"layers": {"layer4": {"units": 128, "interpretable": 37, "interpretable_without_actions": 30,
                                         "unique_concepts": 9, "per_category": {"object": 10, "color": 20, "action": 7},
                                         "units_per_concept": {"red-c": 12, "zigzagging": 7}}},
                   "images": 24, "iou_threshold": 0.04}, open(root / "dissect" / "summary.json", "w"))
        (root / "dissect" / "fig7_blockwise.png").write_bytes(_png_bytes(80, 40))
        (root / "dissect" / "report.html").write_text("<html><body>dissection</body></html>")
    return y, s


def img_sources(page: str):
    return re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", page)


def assert_images_resolve(page: str, base: str):
    """Every <img> is a decodable PNG data URI, or a path to an existing non-empty image."""
    srcs = img_sources(page)
    for src in srcs:
        if src.startswith("data:"):
            assert src.startswith("data:image/png;base64,"), src[:40]
            im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
            im.verify()
        else:
            p = os.path.join(base, src)
            assert os.path.getsize(p) > 0
            Image.open(p).verify()
    return srcs


def test_report_sections_and_images(tmp_path):
    y, s = make_run(tmp_path)
    out = report.build_report(str(tmp_path))
    assert out == str(tmp_path / "report.html")
    page = open(out).read()
    for title in ("Configuration", "Training curves", "Results (Table 1", "Per-class AP (val)",
                  "Worst-confused classes (val)", "mCAM gallery", "Network dissection"):
        assert title in page, title
    assert "Not present" not in page
    srcs = assert_images_resolve(page, str(tmp_path))
    assert len(srcs) == 2 + 3 + 1      # curves, per-class AP, three mCAM pictures (gallery=4 > 3 records), fig7
    assert "<td>layer4</td><td>128</td><td>37</td><td>30</td>" in page and "red-c (12)" in page
    # the Table 1 rows: the model's numbers and the chance level, as in val_metrics.json
    m = json.load(open(tmp_path / "train/eval/val_metrics.json"))
    assert f"<td>{100 * m['micro_map']:.1f}</td>" in page and f"<td>{100 * m['chance']['micro_map']:.1f}</td>" in page
    # links to the full gallery and the dissection report are relative and resolve
    for href in re.findall(r"href='([^']+)'", page):
        assert os.path.isfile(os.path.join(tmp_path, href)), href
    # a page with no network access needed: no http(s) resource
    assert "http://" not in page and "https://" not in page
    # given the demo's train/ folder, the mCAM and dissection beside it are found too
    (tmp_path / "demo_summary.json").write_text("{}")
    page2 = open(report.build_report(str(tmp_path / "train"))).read()
    assert "Not present" not in page2 and len(img_sources(page2)) == 6


def test_worst_confusions_brute_force():
    rng = np.random.default_rng(3)
    y = rng.random((40, 5)) < 0.3
    s = rng.normal(size=(40, 5))
    names = list("abcde")
    got = report.worst_confusions(s, y, names, top=100)
    brute = {}
    for i in range(40):
        p = int(np.argmax(s[i]))
        if not y[i, p]:
            for b in np.flatnonzero(y[i]):
                brute[(names[b], names[p])] = brute.get((names[b], names[p]), 0) + 1
    assert {(g["labelled"], g["predicted"]): g["count"] for g in got} == brute
    assert [g["count"] for g in got] == sorted((g["count"] for g in got), reverse=True)
    for g in got:
        assert g["share"] == pytest.approx(g["count"] / y[:, names.index(g["labelled"])].sum())


def test_missing_parts_are_named(tmp_path):
    make_run(tmp_path, cam=False, dissect=False)
    os.remove(tmp_path / "train/val_metrics.csv")
    page = open(report.build_report(str(tmp_path / "train"), str(tmp_path / "r.html"))).read()
    assert "Not present: cam/cams.json" in page and "Not present: dissect/summary.json" in page
    assert "Not present: val_metrics.csv" in page
    assert_images_resolve(page, str(tmp_path))


def test_bad_inputs(tmp_path, capsys):
    from mmit_fast import cli

    with pytest.raises(ValueError, match="no training run here"):
        report.build_report(str(tmp_path))
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmit report: error:") and "nope: not a folder" in err
    make_run(tmp_path / "r", cam=False, dissect=False)
    with pytest.raises(ValueError, match="no evaluation 'train'"):
        report.build_report(str(tmp_path / "r"), split="train")
    (tmp_path / "r/train/eval/val_scores.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="val_scores.npz: unreadable scores file"):
        report.build_report(str(tmp_path / "r"))
    os.remove(tmp_path / "r/train/eval/val_scores.npz")
    (tmp_path / "r/train/config.yaml").write_text("model: [i3d\n")
    with pytest.raises(ValueError, match="config.yaml: not valid YAML"):
        report.build_report(str(tmp_path / "r"))
    (tmp_path / "r/train/config.yaml").write_text("model: i3d\n")
    (tmp_path / "r/train/summary.json").write_text("{broken")
    with pytest.raises(ValueError, match="summary.json: not valid JSON"):
        report.build_report(str(tmp_path / "r"))


def test_cli_report_help_and_run(tmp_path, capsys):
    from mmit_fast import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["report", "--help"])
    assert e.value.code == 0 and "report.html" in capsys.readouterr().out
    make_run(tmp_path)
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "x.html"), "--split", "test"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "x.html")
    assert "Per-class AP (test)" in open(tmp_path / "x.html").read()


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _run_chromium(exe, tmp_path, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=5000"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(_chromium() is None, reason="Chromium not installed (.ci/run installs it: apt-get install -y chromium)")
def test_report_in_headless_chromium(tmp_path):
    exe = _chromium()
    make_run(tmp_path)
    out = report.build_report(str(tmp_path))
    page = open(out).read()
    # a copy of the page whose script writes the number of undecodable images into the DOM
    probe = page.replace("</body>", "<script>window.addEventListener('load',()=>{const bad=[...document.images]"
                         ".filter(i=>!i.complete||i.naturalWidth===0).length;document.body.setAttribute("
                         "'data-broken',bad);document.body.setAttribute('data-images',document.images.length);});"
                         "</script></body>")
    probe_path = tmp_path / "probe.html"
    probe_path.write_text(probe)
    dom = _run_chromium(exe, tmp_path, "--dump-dom", f"file://{probe_path}").stdout
    assert 'data-images="6"' in dom and 'data-broken="0"' in dom, dom[:300]
    shot = tmp_path / "shot.png"
    _run_chromium(exe, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", f"file://{out}")
    im = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert im.shape == (1600, 1200)
    assert im.std() > 10 and (im < 128).mean() > 0.005   # text and plots, not a blank page


# --------------------------------------------------------------------------- a stranger's run folder
SCRIPT = "<script>document.body.setAttribute('data-pwned','1')</script>"
ONERROR = "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">"


def make_hostile_run(root, secret):
    """A run folder doctored to leak a file and run scripts: cams.json naming a file outside the
    folder (relative and absolute), a symlink out of it, a text file called .png; markup in every
    string the page shows; class names with mathtext."""
    classes = [f"action_{i}" for i in range(6)] + [r"a$\foo{$b", ONERROR]
    make_run(root, classes=classes)
    cam = root / "cam"
    (cam / "link.png").symlink_to(secret)
    (cam / "fake.png").write_text("not an image")
    (cam / "ok.jpg").write_bytes(_jpeg_bytes())
    recs = [{"key": f"k{i}", "png": p, "truth": [ONERROR], "pred": [[SCRIPT, 0.9], ["x", "<b>"]]}
            for i, p in enumerate(["../../" + os.path.relpath(secret, "/"), str(secret), "link.png", "fake.png",
                                   "clip0.png", "ok.jpg", "a\x00b.png"])]
    recs[4]["key"] = SCRIPT
    json.dump({"records": recs, "skipped": []}, open(cam / "cams.json", "w"))
    json.dump({"layers": {"layer4": {"units": SCRIPT, "interpretable": 3, "per_category": {"object": SCRIPT, ONERROR: 2},
                                     "units_per_concept": {SCRIPT: ONERROR}}}, "images": SCRIPT},
              open(root / "dissect" / "summary.json", "w"))
    (root / "dissect" / "fig9_evil.png").symlink_to(secret)
    return classes


def _jpeg_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (10, 200, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def test_hostile_run_folder_embeds_no_foreign_file_and_no_markup(tmp_path):
    from html.parser import HTMLParser

    secret = tmp_path / "private.txt"
    secret.write_text("SECRET-TOKEN-42")
    run = tmp_path / "run"
    classes = make_hostile_run(run, secret)
    page = open(report.build_report(str(run), gallery=10)).read()
    assert "SECRET-TOKEN-42" not in page and base64.b64encode(b"SECRET-TOKEN-42").decode()[:12] not in page
    srcs = img_sources(page)
    # curves, per-class AP, the two images inside cam/ (clip0.png, ok.jpg), fig7; nothing else
    assert [s.split(";")[0] for s in srcs] == ["data:image/png"] * 2 + ["data:image/png", "data:image/jpeg",
                                                                      "data:image/png"]
    for why in ("outside", "link.png: outside", "fake.png: not a PNG, JPEG or GIF image", "fig9_evil.png: outside",
                "not a usable file name"):
        assert why in page, why

    class Tags(HTMLParser):
        found = []

        def handle_starttag(self, tag, attrs):
            self.found.append((tag, [a for a, _ in attrs]))

    t = Tags()
    t.feed(page)
    assert not [tag for tag, _ in t.found if tag == "script"]
    assert not [a for _, attrs in t.found for a in attrs if a.startswith("on")]
    assert html_escaped(SCRIPT) in page and html_escaped(ONERROR) in page
    assert classes[6] == r"a$\foo{$b"      # the mathtext name was plotted as text (no error above)


def html_escaped(s):
    import html

    return html.escape(s)


def test_class_names_are_text_not_mathtext(monkeypatch):
    """A class name with dollar signs reaches matplotlib escaped (no mathtext parse), and a class
    without positives is marked "no positives", not drawn as a zero-length bar."""
    import matplotlib.axes

    from mmit_fast import report_plots

    texts = []
    orig = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, x, y, s, *a, **k: texts.append((x, y, s))
                        or orig(self, x, y, s, *a, **k))
    png = report_plots.per_class_ap_png([r"a$\foo{$b", "b", "c"], [0.5, float("nan"), 0.25], [3, 0, 2])
    assert png.startswith(b"\x89PNG")
    assert texts == [(1, 2, "no positives in this split")]     # sorted: a (0.5), c (0.25), then b (no AP)
    assert report_plots._text(r"a$\foo{$b") == r"a\$\foo{\$b"


def test_dissection_figures_share_one_colour_per_category(tmp_path):
    """Fig. 7 (grouped bars) and Fig. 9 (bars) paint each category in the same colour, with a legend."""
    from mmit_fast.interpret import render

    def colours(path):
        a = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
        return {tuple(c) for c in np.unique(a, axis=0)}

    def rgb(h):
        return tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))

    f7 = render.grouped_bar_chart(str(tmp_path / "f7.png"), ["layer1", "layer2"],
                                  {"color": [5, 2], "object": [1, 4]}, title="t", ylabel="units")
    f9 = render.bar_chart(str(tmp_path / "f9.png"), ["red-c", "square"], [3, 2], title="t", ylabel="units",
                          colors=[render.CATEGORY_COLORS["color"], render.CATEGORY_COLORS["object"]],
                          legend={"color": render.CATEGORY_COLORS["color"], "object": render.CATEGORY_COLORS["object"]})
    for f in (f7, f9):
        c = colours(f)
        assert rgb(render.CATEGORY_COLORS["color"]) in c and rgb(render.CATEGORY_COLORS["object"]) in c


@pytest.mark.skipif(_chromium() is None, reason="Chromium not installed (.ci/run installs it: apt-get install -y chromium)")
def test_hostile_page_runs_no_script_in_headless_chromium(tmp_path):
    secret = tmp_path / "private.txt"
    secret.write_text("SECRET-TOKEN-42")
    run = tmp_path / "run"
    make_hostile_run(run, secret)
    out = report.build_report(str(run), gallery=10)
    dom = _run_chromium(_chromium(), tmp_path, "--dump-dom", f"file://{out}").stdout
    assert "<body" in dom and "mmit report" in dom
    assert 'data-pwned="1"' not in dom and 'data-pwned="2"' not in dom


@pytest.mark.skipif(_chromium() is None, reason="Chromium not installed (.ci/run installs it: apt-get install -y chromium)")
def test_report_pictures_legible_at_page_width_in_chromium(tmp_path):
    """Screenshot test: at a 1200 px window the mCAM strips (rows of 4 frames of 112 px at scale 2,
    as mmit cam draws them) and the dissection figures are shown at their own size (not shrunk),
    one per row; the page is not blank."""
    from mmit_fast.interpret import render

    make_run(tmp_path)
    frames = np.full((8, 112, 112, 3), 128, np.uint8)
    heat = np.zeros((8, 112, 112), np.float32)
    heat[:, 20:60, 20:60] = 1
    strip = render.clip_strip(frames, heat, np.where(heat > 0, 0, -1), ["moving_left"])
    render.save_png(str(tmp_path / "cam" / "clip0.png"), strip)
    render.grouped_bar_chart(str(tmp_path / "dissect" / "fig7_blockwise.png"), ["layer1", "layer2"],
                             {"color": [5, 2], "object": [1, 4]}, title="t", ylabel="units")
    out = report.build_report(str(tmp_path))
    probe = open(out).read().replace("</body>", "<script>window.addEventListener('load',()=>{const r=[...document."
                                     "images].map(i=>(i.getBoundingClientRect().width/i.naturalWidth).toFixed(3)+':'+i.alt"
                                     ");document.body.setAttribute('data-scales',r.join('|'));});</script></body>")
    (tmp_path / "probe.html").write_text(probe)
    dom = _run_chromium(_chromium(), tmp_path, "--window-size=1200,1600", "--dump-dom",
                        f"file://{tmp_path / 'probe.html'}").stdout
    scales = dict(reversed(s.split(":", 1)) for s in re.search(r'data-scales="([^"]*)"', dom).group(1).split("|"))
    assert strip.shape[1] < 1100 and float(scales["clip0"]) == 1.0, scales
    assert float(scales["fig7_blockwise.png"]) == 1.0, scales
    shot = tmp_path / "shot.png"
    _run_chromium(_chromium(), tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", f"file://{out}")
    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[:2] == (3000, 1200) and im.std() > 10
    # the strip's red mCAM overlay is on screen at its own size: a run of >= 70 red pixels in one row
    red = (im[..., 0] > 200) & (im[..., 1] < 90) & (im[..., 2] < 90)
    def longest_run(row):
        edges = np.flatnonzero(np.diff(np.r_[0, row, 0]))
        return int((edges[1::2] - edges[::2]).max(initial=0))

    assert max(longest_run(r) for r in red.astype(int)) >= 70
