"""Shards in object storage and over HTTP, against real loopback servers (tests/loopback.py):
moto's S3 server (a subprocess) behind a fault-injecting proxy, and a range-capable HTTP
server. Oracles: the same dataset read from local disk (identical batches), the proxy's own
request log (what went over the wire), and the bytes of shards packed locally."""
import io
import json
import os
import re
import shutil
import sys
import time
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

sys.path.insert(0, os.path.dirname(__file__))
from loopback import FaultProxy, MotoS3, RangeHTTPServer  # noqa: E402

from mmit_fast import shards as S  # noqa: E402
from mmit_fast import storage  # noqa: E402
from mmit_fast.cli import main  # noqa: E402
from mmit_fast.data import ClipSpec, make_loader  # noqa: E402
from mmit_fast.pack.packer import Job, merge_parts, write_split  # noqa: E402
from mmit_fast.pack.synth import generate_dataset  # noqa: E402
from mmit_fast.pack.transcode import EncodeSpec  # noqa: E402
from mmit_fast.pack.writer import ShardWriteError, make_sample, read_index  # noqa: E402

SECRET = "mmitSECRETkey-9f3a7c"
HTTP_PASSWORD = "pw-SECRET-4242"
SYNTH = dict(num_videos=6, size=32, seconds=0.6, splits=(1, 0, 0), shard_samples=2, workers=1, progress=False)
CLIP = ClipSpec("segments", frames=4, crop=32)
LOADING_GUIDE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "loading.md")


@pytest.fixture(scope="module")
def servers():
    moto = MotoS3()
    proxy = FaultProxy(moto.url)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ENDPOINT_URL", proxy.url)
            mp.setenv("AWS_ACCESS_KEY_ID", "mmit-test-key")
            mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.delenv("AWS_PROFILE", raising=False)
            mp.setenv("MMIT_STORAGE_BACKOFF", "0.01")
            mp.setenv("MMIT_STORAGE_TIMEOUT", "1")
            import s3fs

            s3fs.S3FileSystem(skip_instance_cache=True).mkdir("mmit")
            yield proxy
    finally:
        proxy.stop()
        moto.stop()


@pytest.fixture(scope="module")
def local_ds(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("local") / "ds")
    generate_dataset(d, **SYNTH)
    return d


def upload(local: str, prefix: str, edit=None) -> str:
    """``local``'s files under ``s3://mmit/<prefix>``; ``edit(name, bytes) -> bytes`` may damage some."""
    for name in sorted(os.listdir(local)):
        with open(os.path.join(local, name), "rb") as f:
            data = f.read()
        storage.write_bytes(f"s3://mmit/{prefix}/{name}", edit(name, data) if edit else data)
    return f"s3://mmit/{prefix}"


@pytest.fixture(scope="module")
def s3_ds(servers, local_ds):
    return upload(local_ds, "ds")


def batches(loader):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [(b.keys, b.video, b.audio, b.targets) for b in loader]


def same(a, b):
    assert [x[0] for x in a] == [x[0] for x in b]
    for (_, va, aa, ta), (_, vb, ab, tb) in zip(a, b):
        assert torch.equal(va, vb) and torch.equal(ta, tb) and (aa is ab is None or torch.equal(aa, ab))


def sample_gets(proxy, shard_size):
    """The proxy's GETs of shard bytes larger than a 512-byte header probe."""
    out = []
    for method, path, rng in proxy.log:
        if method == "GET" and path.split("?")[0].endswith(".tar"):
            assert rng is not None, f"a whole-shard GET: {path}"
            a, b = (int(v) for v in rng.split("=")[1].split("-"))
            assert b - a + 1 < shard_size
            if b - a + 1 > 512:
                out.append((path, a, b))
    return out


def one_line(e) -> str:
    msg = str(e)
    assert "\n" not in msg and SECRET not in msg and HTTP_PASSWORD not in msg, msg
    return msg


# --------------------------------------------------------------------------- reading
@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_s3_batches_equal_local_with_one_range_request_per_sample(servers, local_ds, s3_ds, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    kw = dict(clip=CLIP, batch_size=4, train=False, backend=backend, device="cpu", with_audio=True, num_workers=1)
    want = batches(make_loader(local_ds, "train", **kw))
    servers.clear()
    loader = make_loader(s3_ds, "train", **kw)
    got = batches(loader)
    same(want, got)
    shard_size = max(os.path.getsize(os.path.join(local_ds, n)) for n in os.listdir(local_ds) if n.endswith(".tar"))
    gets = sample_gets(servers, shard_size)
    assert len(gets) == loader.num_samples == 6             # coalesced: one request per sample, the first time
    assert loader.io["requests"] == 6 and loader.io["retries"] == 0
    assert loader.io["bytes_read"] == sum(b - a + 1 for _, a, b in gets)


def test_http_range_server_with_a_login_in_the_url(local_ds):
    srv = RangeHTTPServer(local_ds, login=("reader", HTTP_PASSWORD))
    try:
        host = srv.url.split("://")[1]
        kw = dict(clip=CLIP, batch_size=3, train=False, num_workers=0)
        loader = make_loader(f"http://reader:{HTTP_PASSWORD}@{host}", "train", **kw)
        assert HTTP_PASSWORD not in repr(loader) + "".join(loader.table.shards)
        conns, n0 = srv.connections, len(srv.requests)
        same(batches(make_loader(local_ds, "train", **kw)), batches(loader))
        assert len(srv.requests) - n0 == 6 and srv.connections == conns    # the epoch reuses open connections
        assert all(r for m, p, r in srv.requests if m == "GET" and p.endswith(".tar"))   # ranges only
        srv.requests.clear()
        lazy = make_loader(f"http://reader:{HTTP_PASSWORD}@{host}", "train", readahead=0, **kw)
        n0 = len(srv.requests)
        same(batches(make_loader(local_ds, "train", **kw)), batches(lazy))   # no read-ahead: still one request a sample
        assert len(srv.requests) - n0 == lazy.io["requests"] == 6
        with pytest.raises(storage.AccessDenied) as e:
            make_loader(f"http://reader:wrong-{HTTP_PASSWORD}@{host}", "train", **kw)
        assert "403" in one_line(e.value) and f"http://{host}/manifest.json" in str(e.value)
    finally:
        srv.stop()


# --------------------------------------------------------------------------- faults
@pytest.mark.parametrize("fault", [500, 503, "reset", ("stall", 1.5)], ids=["500", "503", "reset", "timeout"])
def test_transient_faults_are_retried_with_backoff_and_counted(servers, s3_ds, fault):
    url = s3_ds + "/train-000000.tar"
    want = storage.read_range(url, 512, 2048)
    before = storage.stats()["retries"]
    servers.fail("train-000000.tar", fault, times=2, method="GET")
    assert storage.read_range(url, 512, 2048) == want
    # aiohttp itself retries a request once when a *reused* keep-alive connection drops (it
    # cannot tell a stale connection from a reset); the second reset is ours to retry
    assert storage.stats()["retries"] - before == (1 if fault == "reset" else 2)


def test_a_worker_retries_and_the_loader_counts_it(servers, local_ds, s3_ds):
    kw = dict(clip=CLIP, batch_size=3, train=False, num_workers=1)
    loader = make_loader(s3_ds, "train", **kw)
    servers.fail("train-000001.tar", 503, times=1, method="GET")
    servers.fail("train-000002.tar", 500, times=1, method="GET")
    same(batches(make_loader(local_ds, "train", **kw)), batches(loader))
    assert loader.io["retries"] == 2


def test_a_permanent_fault_in_a_worker_reaches_the_caller_as_its_one_line(servers, local_ds):
    url = upload(local_ds, "vanishing")
    loader = make_loader(url, "train", clip=CLIP, batch_size=3, train=False, num_workers=1)
    storage.remove(url + "/train-000000.tar")                              # deleted after the loader opened it
    with pytest.raises(FileNotFoundError) as e:
        batches(loader)
    assert one_line(e.value) == f"cannot read {url}/train-000000.tar: not found (HTTP 404)"


def test_a_fault_that_outlives_its_retries_is_one_line_naming_the_url(servers, s3_ds, monkeypatch, caplog):
    monkeypatch.setenv("MMIT_STORAGE_RETRIES", "2")
    servers.fail("train-000000.idx", 503, times=3, method="GET")
    with caplog.at_level("DEBUG"), pytest.raises(storage.Unavailable) as e:
        make_loader(s3_ds, "train", clip=CLIP, num_workers=0)
    msg = one_line(e.value)
    assert "s3://mmit/ds/train-000000.idx" in msg and "HTTP 503" in msg and "after 3 attempts" in msg
    assert "retrying read s3://mmit/ds/train-000000.idx" in caplog.text and SECRET not in caplog.text


def test_permanent_faults_are_one_line_errors_naming_the_url(servers, local_ds, s3_ds, capsys):
    with pytest.raises(FileNotFoundError) as e:                            # 404
        make_loader("s3://mmit/nothing-here", "train", clip=CLIP)
    assert "s3://mmit/nothing-here/manifest.json" in one_line(e.value)
    servers.fail("manifest.json", 403, times=1)                            # 403
    with pytest.raises(PermissionError) as e:
        make_loader(s3_ds, "train", clip=CLIP)
    assert one_line(e.value) == ("cannot read s3://mmit/ds/manifest.json: access denied (HTTP 403): check the "
                                 "credentials and the bucket's permissions")
    ends = {}
    for name in os.listdir(local_ds):
        if name.endswith(".idx"):
            ends[name[:-4] + ".tar"] = max(o + s for line in read_index(os.path.join(local_ds, name)) for _, o, s, _ in line)
    cut = upload(local_ds, "short", lambda n, b: b[: ends[n] // 512 * 512 - 512] if n == "train-000001.tar" else b)
    with pytest.raises(S.ShardFormatError) as e:                           # a shard shorter than its index
        make_loader(cut, "train", clip=CLIP)
    assert f"shard {cut}/train-000001.tar is" in one_line(e.value) and "shorter than its index says" in str(e.value)
    gone = upload(local_ds, "gone")
    storage.remove(gone + "/train-000002.tar")
    with pytest.raises(FileNotFoundError) as e:                            # a shard the manifest names is missing
        make_loader(gone, "train", clip=CLIP)
    assert f"shard {gone}/train-000002.tar (split 'train'" in one_line(e.value)
    capsys.readouterr()
    assert main(["inspect", s3_ds + "/train-000009.tar"]) == 2                 # the CLI: one line, exit 2
    assert capsys.readouterr().err.strip() == "mmit inspect: error: no shard at s3://mmit/ds/train-000009.tar"


def test_a_damaged_member_over_the_network_is_skipped_by_name_as_locally(servers, local_ds, tmp_path):
    first = read_index(os.path.join(local_ds, "train-000001.idx"))[0]
    key = first[0][3].split(".")[0]
    _, off, size, _ = next(m for m in first if m[0] == "mp4")

    def flip(name, data):
        if name != "train-000001.tar":
            return data
        b = bytearray(data)
        b[off + size // 2] ^= 0xFF
        return bytes(b)

    local_bad = str(tmp_path / "bad")
    shutil.copytree(local_ds, local_bad)
    with open(os.path.join(local_ds, "train-000001.tar"), "rb") as f:
        damaged = flip("train-000001.tar", f.read())
    with open(os.path.join(local_bad, "train-000001.tar"), "wb") as f:
        f.write(damaged)
    remote_bad = upload(local_ds, "bad", flip)
    kw = dict(clip=CLIP, batch_size=3, train=False, num_workers=0)
    loc, rem = make_loader(local_bad, "train", **kw), make_loader(remote_bad, "train", **kw)
    same(batches(loc), batches(rem))
    assert [k for _, k, _ in rem.skipped_samples] == [key]
    assert [r.replace(local_bad, remote_bad) for *_, r in loc.skipped_samples] == [r for *_, r in rem.skipped_samples]
    assert f"{remote_bad}/train-000001.tar:{key}: member .mp4 is damaged" in rem.skipped_samples[0][2]


# --------------------------------------------------------------------------- writing
def test_pack_to_s3_publishes_shard_index_then_manifest_and_resumes(servers, local_ds):
    url = "s3://mmit/packed"
    servers.clear()
    servers.fail("packed/train-000001.tar", 403, times=1, method="PUT")    # the second shard's upload fails
    with pytest.raises(ShardWriteError) as e:
        generate_dataset(url, **SYNTH)
    assert one_line(e.value).startswith(f"cannot write shard {url}/train-000001.tar: cannot write {url}/train-000001.tar: "
                                        "access denied (HTTP 403)")
    names = storage.listdir(url)
    assert "train-000000.tar" in names and "train-000001.tar" not in names and "manifest.json" not in names
    puts = [p.split("?")[0].rsplit("/", 1)[1] for m, p, _ in servers.log if m == "PUT"]
    assert puts.index("train-000000.idx") < puts.index("train-000000.tar")
    servers.clear()
    generate_dataset(url, resume=True, **SYNTH)
    puts = [p.split("?")[0].rsplit("/", 1)[1] for m, p, _ in servers.log if m == "PUT"]
    assert "train-000000.tar" not in puts                                  # the finished shard is kept
    assert puts[-2:] == ["manifest.json", ".manifest.json.train.state.json"]   # the manifest after every shard
    local = sorted(n for n in os.listdir(local_ds) if not n.startswith("."))
    assert sorted(n for n in storage.listdir(url) if not n.startswith(".")) == local
    for n in local:
        if not n.endswith(".json"):
            with open(os.path.join(local_ds, n), "rb") as f:
                assert storage.read_bytes(f"{url}/{n}") == f.read(), n   # byte-identical to a local pack
    man = S.load_manifest(url)
    assert man.root == url and man.num_samples("train") == 6 and man.integrity == {"digest": "crc32"}


def _fake_sample(job):
    meta = {"labels": ["a"], "label_ids": [0], "frames": 1, "has_audio": False}
    return make_sample(job.key, meta, video=job.key.encode() * 50, label_ids=[0])


def test_parts_upload_their_shards_and_the_merge_writes_the_manifest(servers):
    url = "s3://mmit/parts"
    jobs = [Job(key=f"k{i:03d}", source=f"src{i}") for i in range(6)]
    kw = dict(classes=["a", "b"], spec=EncodeSpec(), workers=1, shard_samples=2, progress=False)
    write_split(url, "train", jobs[:3], _fake_sample, part=(0, 2), **kw)
    with pytest.raises(ValueError, match=r"parts \[1\] of 2 are missing"):
        merge_parts(url)
    write_split(url, "train", jobs[3:], _fake_sample, part=(1, 2), **kw)
    man = merge_parts(url)
    assert [s.path for s in man.shards] == ["train-p0000-000000.tar", "train-p0000-000001.tar",
                                            "train-p0001-000000.tar", "train-p0001-000001.tar"]
    assert S.load_manifest(url).num_samples("train") == 6 and man.splits["train"]["class_counts"] == [6, 0]


# --------------------------------------------------------------------------- cache
def _wait_for(cond, seconds=20.0):
    end = time.time() + seconds
    while not cond() and time.time() < end:
        time.sleep(0.05)
    return cond()


def test_cache_keeps_shards_lru_bounded_and_checked_by_digests(servers, local_ds, s3_ds, tmp_path):
    cache = tmp_path / "cache"
    sizes = sorted(os.path.getsize(os.path.join(local_ds, n)) for n in os.listdir(local_ds) if n.endswith(".tar"))
    kw = dict(clip=CLIP, batch_size=2, train=False, num_workers=0, cache_dir=str(cache))
    want = batches(make_loader(local_ds, "train", clip=CLIP, batch_size=2, train=False, num_workers=0))
    big = make_loader(s3_ds, "train", cache_bytes=sum(sizes), **kw)
    same(want, batches(big))                                                # epoch 1: ranges, shards fill behind
    tars = lambda: sorted(p for p in cache.iterdir() if p.suffix == ".tar")  # noqa: E731
    assert _wait_for(lambda: len(tars()) == 3)
    servers.clear()
    before = dict(big.io)
    same(want, batches(big))                                                # epoch 2: all from the cache
    assert sample_gets(servers, sizes[-1]) == [] and big.io == before
    # a damaged cached copy: caught by the member digests, served from the store, dropped
    victim = next(p for p in tars() if p.name.endswith("-train-000001.tar"))
    _, off, size, _ = read_index(os.path.join(local_ds, "train-000001.idx"))[0][0]   # its first mp4
    good = victim.read_bytes()
    data = bytearray(good)
    data[off + size // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    servers.clear()
    same(want, batches(big))
    assert big.skipped == 0 and len(sample_gets(servers, sizes[-1])) >= 1
    assert not victim.exists() or victim.read_bytes() == good              # dropped (and maybe fetched again)
    # bounded: room for two shards, least recently used evicted
    small_cache = tmp_path / "small"
    small = make_loader(s3_ds, "train", cache_bytes=sizes[-1] + sizes[-2], **dict(kw, cache_dir=str(small_cache)))
    same(want, batches(small))
    time.sleep(1.0)
    same(want, batches(small))
    assert _wait_for(lambda: sum(p.stat().st_size for p in small_cache.glob("*.tar")) <= sizes[-1] + sizes[-2])
    assert 1 <= len(list(small_cache.glob("*.tar"))) <= 2


# --------------------------------------------------------------------------- the loading guide's example
def test_loading_guide_first_example_runs_unchanged_on_s3(servers):
    """docs/loading.md says its first example works with a URL in place of the folder: run it so."""
    text = open(LOADING_GUIDE, encoding="utf-8").read()
    code = re.search(r"<!-- example -->\n```python\n(.*?)```", text, re.S).group(1)
    assert '"data/mms"' in code and '`"data/mms"` replaced by `"s3://mms/synth"`' in text
    code = code.replace('"data/mms"', '"s3://mms/synth"')   # as the guide says
    out = io.StringIO()
    from contextlib import redirect_stdout

    with warnings.catch_warnings(), redirect_stdout(out):
        warnings.simplefilter("ignore", RuntimeWarning)
        exec(compile(code, "docs/loading.md", "exec"), {"__name__": "guide"})
    assert "VideoLoader('s3://mms/synth'" in out.getvalue() and "bad samples skipped: 0" in out.getvalue()
    assert json.loads(storage.read_text("s3://mms/synth/manifest.json"))["splits"]["train"]["samples"] > 0


def test_inspect_and_predict_read_shards_at_a_url(servers, local_ds, s3_ds, capsys):
    from mmit_fast.interpret.source import iter_clips
    from mmit_fast.pack import inspect_shard

    rep = inspect_shard(s3_ds + "/train-000001.tar", out=None)
    assert rep["errors"] == [] and rep["samples"] == 2 and rep["digests"]
    assert main(["inspect", s3_ds, "--no-decode"]) == 0 and capsys.readouterr().out.count(": 2 samples") == 3
    spec, classes = ClipSpec("uniform", frames=4, crop=32), S.load_manifest(local_ds).classes
    servers.clear()
    got = list(iter_clips(s3_ds + ":train", spec, classes, limit=3))
    want = list(iter_clips(local_ds + ":train", spec, classes, limit=3))
    assert [c.key for c in got] == [c.key for c in want] and len(got) == 3
    assert all(np.array_equal(a.frames, b.frames) and a.labels == b.labels for a, b in zip(got, want))
    assert all(r for m, p, r in servers.log if m == "GET" and p.split("?")[0].endswith(".tar"))   # by ranges


# --------------------------------------------------------------------------- names (no server)
def test_a_manifest_names_only_files_inside_its_folder(local_ds, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(local_ds, d)
    man = json.loads((d / "manifest.json").read_text())
    for bad in ("../elsewhere/train-000000.tar", "s3://other-bucket/train-000000.tar", "/etc/train-000000.tar"):
        man["shards"][0]["path"] = bad
        (d / "manifest.json").write_text(json.dumps(man))
        with pytest.raises(S.ShardFormatError, match="is not inside the dataset folder"):
            S.load_manifest(str(d))


def test_redact_removes_logins_query_strings_and_known_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert storage.redact("https://u:pw@h.example/x.tar?X-Amz-Signature=abc&X-Amz-Credential=k") == \
        "https://h.example/x.tar?…"
    assert storage.redact(f"boom: signature of {SECRET} at s3://b/k") == "boom: signature of *** at s3://b/k"
    assert storage.strip_credentials("https://reader:p%40ss@h.example/ds") == "https://h.example/ds"
    assert storage.join("s3://b/ds/", "train-000000.tar") == "s3://b/ds/train-000000.tar"
    assert storage.parent("s3://b/ds/manifest.json") == "s3://b/ds" and storage.basename("gs://b/ds/x.idx") == "x.idx"
