"""`mmit pack` paths that used to lose or corrupt data silently (issue 8, cases 4-9), plus
the exit status of a run that packed nothing, ``--part auto`` and ``--merge`` checks.

Each test builds its input (tiny ffmpeg test clips, 64x48, 0.5-2 s) and asserts the exact
outcome. Oracles: the flash/beep instants the source was made with (A/V sync), the
annotation rows (labels), the kernel's own errors (a file-size limit)."""
import errno
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from mmit_fast import shards as S
from mmit_fast.cli import main
from mmit_fast.pack import AnnotationError, merge_parts, pack_videos, transcode
from mmit_fast.pack.annotations import read_annotations, read_categories, slurm_part
from mmit_fast.pack.transcode import AttemptFailed, decode_audio_bytes, decode_video_bytes, ffmpeg_exe, run_ffmpeg

CLASSES = ["walking", "biking", "running", "jumping"]
KW = dict(short_side=32, seconds=0.5, workers=1, progress=False)


def _ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _clip(path, seconds=0.5, hue=0, audio=True):
    a = ["-f", "lavfi", "-i", f"anoisesrc=d={seconds}:c=pink:r=22050:a=0.3"] if audio else []
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=64x48:rate=25:duration={seconds}", *a, "-vf", f"hue=h={hue}",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *(["-c:a", "aac"] if audio else []),
            "-shortest", str(path))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    for i in range(4):
        _clip(d / f"c{i}.mp4", hue=60 * i)
    (d / "bad.mp4").write_bytes(b"not a video" * 50)
    (d / "cats.txt").write_text("\n".join(CLASSES) + "\n")
    return d


def _ann(path, rows):
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _packed(out, split="train"):
    """{source: (labels, has_audio)} of every sample in the shards, read with tarfile."""
    got = {}
    for name in sorted(os.listdir(out)):
        if name.startswith(split) and name.endswith(".tar"):
            with tarfile.open(os.path.join(out, name)) as tf:
                for ti in tf:
                    if ti.name.endswith(".json"):
                        m = json.loads(tf.extractfile(ti).read())
                        assert m["source"] not in got
                        got[m["source"]] = (m["labels"], m["has_audio"])
    return got


def _cli(capsys, *argv):
    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, [l for l in out.err.splitlines() if l.strip() and not l.startswith("pack train")]   # tqdm


# --------------------------------------------------------------------------- case 4: A/V sync
def _ffmpeg_binaries():
    """Every distinct ffmpeg this machine has: the one on PATH (Debian's, say) and imageio-ffmpeg's
    static build. The packer must keep A/V sync with whichever the user has."""
    import shutil

    found = {}
    for label, get in (("PATH", lambda: shutil.which("ffmpeg")),
                       ("imageio-ffmpeg", lambda: __import__("imageio_ffmpeg").get_ffmpeg_exe())):
        try:
            exe = get()
        except Exception:
            exe = None
        if exe and os.path.realpath(exe) not in {os.path.realpath(e) for e in found.values()}:
            found[label] = exe
    return found


def _stream_starts(path):
    """{'video': s, 'audio': s}: each stream's first timestamp, read by PyAV (an independent reader)."""
    import av

    with av.open(str(path)) as c:
        return {s.type: float(s.start_time * s.time_base) for s in c.streams if s.type in ("video", "audio")}


@pytest.fixture(params=sorted(_ffmpeg_binaries()), ids=lambda k: k)
def packer_ffmpeg(request, monkeypatch):
    """Run the packer with each ffmpeg binary in turn (``transcode._FFMPEG`` is what MMIT_FFMPEG sets)."""
    monkeypatch.setattr(transcode, "_FFMPEG", _ffmpeg_binaries()[request.param])
    return request.param


@pytest.mark.parametrize("audio_late", [0.45, -0.32])
def test_av_start_offset_is_kept(tmp_path, audio_late, packer_ffmpeg):
    """A white flash (video) and a 1 kHz beep (audio) both at t = 1.0 s of the source, whose
    audio stream starts ``audio_late`` s after (or before) its video stream.

    The source is written with ``-fps_mode:v passthrough``: without it, ffmpeg 5.1 (Debian 12's)
    fills a late-starting video stream with copies of its first frame from t = 0 (mp4 defaults
    to constant frame rate), so the source itself has no offset -- which is what made this test
    fail with Debian's ffmpeg; the packer was right. The offsets are checked on the source with
    PyAV before the packer runs, so that a source built differently fails here, by name."""
    src = tmp_path / "src.mp4"
    v_off, a_off = max(0.0, -audio_late), max(0.0, audio_late)
    flash = 1.0 - v_off                    # in the video stream's own time
    beep = 1.0 - a_off                     # in the audio stream's own time
    _ffmpeg("-itsoffset", str(v_off), "-f", "lavfi", "-i",
            f"color=black:s=64x64:r=25:d=2,drawbox=enable='between(t,{flash - 0.001},{flash + 0.039})':c=white:t=fill",
            "-itsoffset", str(a_off), "-f", "lavfi", "-i",
            f"aevalsrc='if(between(t,{beep},{beep + 0.05}),sin(2*PI*1000*t),0)':s=44100:d={2.3 - a_off}",
            "-fps_mode:v", "passthrough", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", str(src))
    starts = _stream_starts(src)
    assert abs(starts["video"] - v_off) < 0.03 and abs(starts["audio"] - a_off) < 0.03, f"source built wrong: {starts}"
    clip = transcode.transcode_file(str(src), transcode.EncodeSpec(short_side=32, seconds=2.0))
    _, _, _, frames = decode_video_bytes(clip.video, keep=True)
    t_flash = np.flatnonzero(frames.mean(axis=(1, 2, 3)) > 100)[0] / 25.0
    wave = decode_audio_bytes(clip.audio)
    t_beep = np.flatnonzero(np.abs(wave) > 0.3 * np.abs(wave).max())[0] / 22050.0
    # the flash sits where the source shows it, relative to the first video frame
    assert abs(t_flash - (1.0 - v_off)) <= 1 / 25 + 1e-6
    assert abs(t_beep - t_flash) <= 1 / 25, (t_flash, t_beep)
    assert clip.warnings == []


# --------------------------------------------------------------------------- case 5: transient failures
def _wrapper(tmp_path, body):
    """An ffmpeg stand-in: a shell script that runs ``body`` and then the real ffmpeg."""
    script = tmp_path / "ffmpeg-wrapper.sh"
    script.write_text(f"#!/bin/sh\n{body}\nexec '{ffmpeg_exe()}' \"$@\"\n")
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def wrapped(monkeypatch):
    """Use a given ffmpeg wrapper in this process (workers=1 runs the jobs here)."""
    monkeypatch.setattr(transcode, "RETRY_PAUSE_S", 0.0)
    ffmpeg_exe()

    def use(path):
        monkeypatch.setattr(transcode, "_FFMPEG", path)
    return use


def test_killed_ffmpeg_is_retried_and_keeps_the_audio(clips, tmp_path, wrapped):
    count = tmp_path / "count"
    wrapped(_wrapper(tmp_path, f"n=$(cat '{count}' 2>/dev/null || echo 0); echo $((n+1)) > '{count}'\n"
                               f"[ \"$n\" -lt 1 ] && kill -KILL $$"))      # only the very first run dies
    ann = _ann(tmp_path / "a.csv", ["c0.mp4,walking", "c1.mp4,biking"])
    man = pack_videos(str(clips), ann, str(clips / "cats.txt"), str(tmp_path / "o"), **KW)
    assert man.rejected == []
    assert _packed(tmp_path / "o") == {"c0.mp4": (["walking"], True), "c1.mp4": (["biking"], True)}
    assert int(count.read_text()) == 3   # 1 killed + 1 retry + 1 for c1


def test_failed_attempts_are_not_rejections_and_resume_retries_them(clips, tmp_path, wrapped, capsys):
    real = transcode._FFMPEG or ffmpeg_exe()
    wrapped(_wrapper(tmp_path, "case \"$*\" in *c1.mp4*) kill -KILL $$;; esac"))   # every try on c1 dies
    ann = _ann(tmp_path / "a.csv", ["c0.mp4,walking", "c1.mp4,biking", "bad.mp4,running", "c2.mp4,jumping"])
    out = str(tmp_path / "o")
    rc, stdout, err = _cli(capsys, "pack", "--videos", str(clips), "--annotations", ann, "--categories",
                           str(clips / "cats.txt"), "--out", out, "--short-side", "32", "--seconds", "0.5",
                           "--workers", "1")
    assert rc == 1
    assert err == ["mmit pack: 1 sample(s) not packed for a non-input reason (see 'failed' above): "
                   "run the same command again with --resume to retry them"]
    man = S.load_manifest(out)
    rej = {r["source"]: r for r in man.rejected}
    assert rej["c1.mp4"]["retry"] is True and rej["bad.mp4"]["retry"] is False
    assert rej["c1.mp4"]["reason"] == ("not packed, to retry: ffmpeg was killed by SIGKILL (the out-of-memory "
                                       "killer?) (all 3 attempts failed; not a fault of the input)")
    assert "  failed c1.mp4: not packed, to retry: ffmpeg was killed by SIGKILL" in stdout
    assert man.splits["train"]["to_retry"] == 1
    assert _packed(out) == {"c0.mp4": (["walking"], True), "c2.mp4": (["jumping"], True)}

    wrapped(real)
    rc, stdout, err = _cli(capsys, "pack", "--videos", str(clips), "--annotations", ann, "--categories",
                           str(clips / "cats.txt"), "--out", out, "--short-side", "32", "--seconds", "0.5",
                           "--workers", "1", "--resume")
    assert rc == 0 and err == []
    man = S.load_manifest(out)
    assert [(r["source"], r["retry"]) for r in man.rejected] == [("bad.mp4", False)]   # input-bad stays rejected
    assert man.splits["train"]["to_retry"] == 0 and man.splits["train"]["samples"] == 3
    assert _packed(out) == {"c0.mp4": (["walking"], True), "c1.mp4": (["biking"], True),
                            "c2.mp4": (["jumping"], True)}


def test_file_size_limit_kill_is_a_failed_attempt(tmp_path):
    script = _wrapper(tmp_path, "ulimit -f 1")   # 1 block: ffmpeg dies of SIGXFSZ writing its output
    src = tmp_path / "s.mp4"
    _clip(src, seconds=1.0)
    args = ["-i", str(src), "-c:v", "mjpeg", "-f", "mp4", str(tmp_path / "o.mp4")]
    old = transcode._FFMPEG
    try:
        transcode._FFMPEG = script
        with pytest.raises(AttemptFailed, match=r"^x: ffmpeg was killed by SIGXFSZ \(a file-size limit: ulimit -f\)"):
            run_ffmpeg(args, what="x")
    finally:
        transcode._FFMPEG = old


def test_losing_the_audio_track_rejects_the_sample(clips, tmp_path, wrapped):
    """An audio track that fails while the video alone transcodes: rejected, never packed mute."""
    wrapped(_wrapper(tmp_path, "case \"$*\" in *c0.mp4*a.flac*) echo 'Error while decoding stream #0:1' >&2; "
                               "exit 1;; esac"))
    ann = _ann(tmp_path / "a.csv", ["c0.mp4,walking", "c1.mp4,biking"])
    man = pack_videos(str(clips), ann, str(clips / "cats.txt"), str(tmp_path / "o"), **KW)
    assert _packed(tmp_path / "o") == {"c1.mp4": (["biking"], True)}
    (r,) = man.rejected
    assert r["source"] == "c0.mp4" and r["retry"] is False
    assert r["reason"].startswith("audio track does not decode (c0.mp4: ffmpeg exited with 1: Error while decoding")
    assert r["reason"].endswith("the video does, but a sample is never packed without its audio")


# --------------------------------------------------------------------------- case 6: write errors
def test_file_size_limit_on_the_shard_is_one_line(clips, tmp_path):
    ann = _ann(tmp_path / "a.csv", [f"c{i}.mp4,{CLASSES[i]}" for i in range(4)])
    out = tmp_path / "o"
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000)); "
            "from mmit_fast.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "pack", "--videos", str(clips), "--annotations", ann,
                           "--categories", str(clips / "cats.txt"), "--out", str(out), "--short-side", "64",
                           "--seconds", "0.5", "--workers", "1", "--crf", "4"],
                          capture_output=True, text=True, timeout=300)
    err = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("pack train")]   # tqdm lines
    assert proc.returncode == 1, proc.stderr
    assert err == [f"mmit pack: cannot write shard {out / 'train-000000.tar'}: file too large (a file-size limit "
                   "such as `ulimit -f`, or the filesystem's largest file) [EFBIG]; the shards finished before "
                   "it are kept: fix this, then run again with --resume"]
    assert not [n for n in os.listdir(out) if n.endswith((".tar", ".partial"))]


def test_disk_full_is_one_line_and_resume_finishes(clips, tmp_path, monkeypatch, capsys):
    ann = _ann(tmp_path / "a.csv", ["c0.mp4,walking", "c1.mp4,biking", "c2.mp4,running"])
    out = tmp_path / "o"
    real, calls = tarfile.TarFile.addfile, []

    def full_on_third_sample(self, *a, **k):   # 4 members a sample: call 9 is the 3rd sample's first
        calls.append(1)
        if len(calls) == 9:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(tarfile.TarFile, "addfile", full_on_third_sample)
    argv = ["pack", "--videos", str(clips), "--annotations", ann, "--categories", str(clips / "cats.txt"),
            "--out", str(out), "--short-side", "32", "--seconds", "0.5", "--workers", "1", "--shard-samples", "2"]
    rc, _, err = _cli(capsys, *argv)
    assert rc == 1
    assert err == [f"mmit pack: cannot write shard {out / 'train-000001.tar'}: no space left on the device "
                   "(disk full) [ENOSPC]; the shards finished before it are kept: fix this, then run again with --resume"]
    assert _packed(out) == {"c0.mp4": (["walking"], True), "c1.mp4": (["biking"], True)}
    monkeypatch.setattr(tarfile.TarFile, "addfile", real)
    rc, _, err = _cli(capsys, *argv, "--resume")
    assert rc == 0 and len(_packed(out)) == 3


# --------------------------------------------------------------------------- case 7: spellings
def test_one_file_under_several_spellings_is_packed_once(clips, tmp_path):
    root = tmp_path / "v"
    (root / "sub").mkdir(parents=True)
    os.link(clips / "c0.mp4", root / "a.mp4")
    os.link(clips / "c1.mp4", root / "sub" / "b.mp4")
    os.symlink(root / "a.mp4", root / "link.mp4")
    os.link(root / "a.mp4", root / "hard.mp4")
    ann = _ann(tmp_path / "a.csv", ["a.mp4,walking", "./a.mp4,biking", "sub/../a.mp4,walking", "sub//b.mp4,running",
                                    "sub/b.mp4,running", "link.mp4,jumping", "hard.mp4,walking"])
    rows, rejected = read_annotations(ann, CLASSES, video_root=str(root))
    assert [(a.path, a.labels) for a in rows] == [("a.mp4", ["walking"]), ("sub//b.mp4", ["running"])]
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (2, "duplicate: the same file is already listed as 'a.mp4' on line 1; its labels ['biking'] differ from "
            "that row's ['walking'], which are kept"),
        (3, "duplicate: the same file is already listed as 'a.mp4' on line 1"),
        (5, "duplicate: the same file is already listed as 'sub//b.mp4' on line 4"),
        (6, "duplicate: the same file is already listed as 'a.mp4' on line 1; its labels ['jumping'] differ from "
            "that row's ['walking'], which are kept"),
        (7, "duplicate: the same file is already listed as 'a.mp4' on line 1"),
    ]
    man = pack_videos(str(root), ann, str(clips / "cats.txt"), str(tmp_path / "o"), **KW)
    assert _packed(tmp_path / "o") == {"a.mp4": (["walking"], True), "sub//b.mp4": (["running"], True)}
    assert man.class_counts("train").tolist() == [1, 0, 1, 0]
    assert sorted(r["source"] for r in man.rejected) == ["./a.mp4", "hard.mp4", "link.mp4", "sub/../a.mp4",
                                                         "sub/b.mp4"]


# --------------------------------------------------------------------------- case 8: encodings
def test_non_utf8_annotation_and_categories_name_file_and_line(clips, tmp_path, capsys):
    ann = tmp_path / "a.csv"
    ann.write_bytes(b"c0.mp4,walking\nc\xe91.mp4,biking\n")
    with pytest.raises(AnnotationError) as e:
        read_annotations(str(ann), CLASSES)
    assert str(e.value) == f"{ann}:2: not UTF-8 text (byte 0xe9 at column 2); save the file as UTF-8"
    rc, _, err = _cli(capsys, "pack", "--videos", str(clips), "--annotations", str(ann), "--categories",
                      str(clips / "cats.txt"), "--out", str(tmp_path / "o"))
    assert rc == 2 and err == [f"mmit pack: {ann}:2: not UTF-8 text (byte 0xe9 at column 2); save the file as UTF-8"]
    cats = tmp_path / "cats.txt"
    cats.write_bytes("walking\nbiking\nrunning\n".encode("utf-16"))
    with pytest.raises(AnnotationError, match=rf"^{cats}:1: not UTF-8 text \(byte 0xff at column 1\)"):
        read_categories(str(cats))
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffc0.mp4,walking\n".encode("utf-8"))   # a UTF-8 BOM is fine
    assert [a.path for a in read_annotations(str(bom), CLASSES)[0]] == ["c0.mp4"]


# --------------------------------------------------------------------------- case 9: resume + changed rows
def test_resume_with_changed_annotations_refuses_and_names_the_rows(clips, tmp_path):
    rows = ["c0.mp4,walking", "c1.mp4,biking", "c2.mp4,running"]
    out = tmp_path / "o"
    kw = dict(KW, shard_samples=1)
    pack_videos(str(clips), _ann(tmp_path / "a.csv", rows), str(clips / "cats.txt"), str(out), **kw)
    # as if the run had been killed while writing the last shard
    for name in ("manifest.json", "train-000002.tar", "train-000002.idx"):
        os.unlink(out / name)
    fixed = ["c0.mp4,walking", "c1.mp4,running", "c2.mp4,running"]
    with pytest.raises(ValueError) as e:
        pack_videos(str(clips), _ann(tmp_path / "b.csv", fixed), str(clips / "cats.txt"), str(out), resume=True, **kw)
    assert str(e.value) == (f"--resume in {out}: 1 annotation row(s) changed since their samples were packed "
                            "(line 2 'c1.mp4': labels ['biking'] -> ['running']): the shards hold the old labels; "
                            "pack into a new folder or pass --overwrite")
    # a change to a row not yet packed is simply packed with its new labels
    later = ["c0.mp4,walking", "c1.mp4,biking", "c2.mp4,jumping"]
    man = pack_videos(str(clips), _ann(tmp_path / "c.csv", later), str(clips / "cats.txt"), str(out), resume=True,
                      **kw)
    assert _packed(out) == {"c0.mp4": (["walking"], True), "c1.mp4": (["biking"], True), "c2.mp4": (["jumping"], True)}
    assert man.class_counts("train").tolist() == [1, 1, 0, 1]


# --------------------------------------------------------------------------- nothing packed
def test_every_input_rejected_exits_1(clips, tmp_path, capsys):
    ann = _ann(tmp_path / "a.csv", ["bad.mp4,walking", "missing.mp4,biking"])
    rc, stdout, err = _cli(capsys, "pack", "--videos", str(clips), "--annotations", ann, "--categories",
                           str(clips / "cats.txt"), "--out", str(tmp_path / "o"), "--workers", "1")
    assert rc == 1
    assert err == ["mmit pack: every input was rejected (2 of 2): nothing was packed"]
    assert "rejected missing.mp4: missing file" in stdout


# --------------------------------------------------------------------------- cluster parts
def test_part_auto_reads_the_slurm_array():
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3",
           "SLURM_ARRAY_TASK_MAX": "6"}
    assert slurm_part(env) == (2, 4)
    assert slurm_part({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1"}) == (0, 1)
    with pytest.raises(ValueError, match="not set"):
        slurm_part({})
    with pytest.raises(ValueError, match="contiguous job array"):
        slurm_part(dict(env, SLURM_ARRAY_TASK_STEP="2"))
    with pytest.raises(ValueError, match="contiguous job array"):
        slurm_part(dict(env, SLURM_ARRAY_TASK_MAX="9"))   # --array=3,4,5,9


def test_merge_names_missing_and_unfinished_parts(clips, tmp_path, monkeypatch, wrapped):
    ann = _ann(tmp_path / "a.csv", ["c0.mp4,walking", "c1.mp4,biking", "c2.mp4,running", "c3.mp4,jumping"])
    out = tmp_path / "o"
    real = transcode._FFMPEG or ffmpeg_exe()
    for tid in ("10", "11"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", tid)
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
        wrapped(_wrapper(tmp_path, "case \"$*\" in *c1.mp4*) kill -KILL $$;; esac") if tid == "11" else real)
        pack_videos(str(clips), ann, str(clips / "cats.txt"), str(out), part="auto", **KW)
    assert sorted(n for n in os.listdir(out) if n.startswith("manifest")) == ["manifest-p0000.json",
                                                                            "manifest-p0001.json"]
    state = out / ".manifest-p0000.json.train.state.json"
    st = json.loads(state.read_text())
    state.write_text(json.dumps(dict(st, finished=False)))   # as if part 0 had been killed mid-run
    with pytest.raises(ValueError) as e:
        merge_parts(str(out))
    assert str(e.value) == (
        f"{out}: cannot merge: parts [2] of 3 are missing (have [0, 1]; a part writes its manifest when it "
        "finishes); part 0 split train did not finish (interrupted, or still running): run it again with "
        "--part 0/3 --resume; part 1 split train has 1 sample(s) not packed for a non-input reason: run it again "
        "with --part 1/3 --resume")
    wrapped(real)
    for p in ("0/3", "1/3", "2/3"):
        pack_videos(str(clips), ann, str(clips / "cats.txt"), str(out), part=p, resume=True, **KW)
    man = merge_parts(str(out))
    assert man.num_samples("train") == 4 and man.rejected == []
    assert man.integrity == {"digest": "crc32"}


# --------------------------------------------------------------------------- the packing guide's first example
def test_packing_guide_first_example_runs_without_test_extras(tmp_path):
    """The first `mmit pack` example of docs/packing.md needs only what `pip install -e ".[all]"`
    brings (no scikit-video): run its bash block as written and check what it packed."""
    guide = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "packing.md")).read()
    block = guide[guide.index("<!-- example -->\n```bash\n") + len("<!-- example -->\n```bash\n"):]
    block = block[: block.index("```")]
    assert "skvideo" not in block and "mmit pack" in block
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.rstrip().endswith("OK")
    man = S.load_manifest(str(tmp_path / "data" / "demo"))
    assert man.splits["train"]["samples"] == 3 and man.rejected == []
    assert man.splits["train"]["without_audio"] == 2


# --------------------------------------------------------------------------- issue 18: annotation files
def test_a_rejected_row_does_not_claim_its_file(clips, tmp_path):
    """c0 listed first with no usable label (only an unknown one, dropped), then again with a
    valid label: the second row is packed, the first is rejected for its labels, not as a
    duplicate of a row that was never kept."""
    ann = _ann(tmp_path / "a.csv", ["c0.mp4,flying", "c1.mp4,biking", "./c0.mp4,walking"])
    rows, rejected = read_annotations(ann, CLASSES, drop_unknown=True, video_root=str(clips))
    assert [(a.path, a.labels, a.line) for a in rows] == [("c1.mp4", ["biking"], 2), ("./c0.mp4", ["walking"], 3)]
    assert [(r["line"], r["reason"]) for r in rejected] == [(1, "no known labels (dropped unknown ['flying'])")]
    pack_videos(str(clips), ann, str(clips / "cats.txt"), str(tmp_path / "o"), drop_unknown=True, **KW)
    assert _packed(tmp_path / "o") == {"c1.mp4": (["biking"], True), "./c0.mp4": (["walking"], True)}


@pytest.mark.parametrize("name, text", [("empty.csv", ""), ("blank.csv", "\n  \n\n"), ("header.csv", "path,labels\n"),
                                        ("empty.jsonl", "\n")])
def test_an_annotation_file_listing_no_video_is_named(clips, tmp_path, capsys, name, text):
    ann = tmp_path / name
    ann.write_text(text)
    want = f"{ann}: the annotation file lists no video (empty, blank lines or a header only)"
    with pytest.raises(AnnotationError) as e:
        read_annotations(str(ann), CLASSES)
    assert str(e.value) == want
    rc, _, err = _cli(capsys, "pack", "--videos", str(clips), "--annotations", str(ann), "--categories",
                      str(clips / "cats.txt"), "--out", str(tmp_path / "o"))
    assert rc == 2 and err == [f"mmit pack: {want}"]
    assert not os.path.exists(tmp_path / "o" / "manifest.json")


def test_an_enormous_csv_field_is_bad_input_naming_file_and_line(clips, tmp_path, capsys):
    ann = tmp_path / "a.csv"
    ann.write_text("c0.mp4,walking\nc1.mp4," + "x" * 200_000 + "\nc2.mp4,running\n")
    want = f"{ann}:2: a field longer than 131072 characters (csv's limit): not an annotation row"
    with pytest.raises(AnnotationError) as e:
        read_annotations(str(ann), CLASSES)
    assert str(e.value) == want
    rc, _, err = _cli(capsys, "pack", "--videos", str(clips), "--annotations", str(ann), "--categories",
                      str(clips / "cats.txt"), "--out", str(tmp_path / "o"))
    assert rc == 2 and err == [f"mmit pack: {want}"]
