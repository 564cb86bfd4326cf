"""Where bytes come from and go to: local paths, and URLs (``s3://``, ``gs://``, ``http(s)://``).

Every stage that reads or writes a dataset (:mod:`mmit_fast.shards`, ``pack/``, ``data/``) goes
through this module; none of them opens a URL itself. Local paths use the operating system, as
before (atomic writes: temp file, fsync, rename, see :mod:`mmit_fast._io`). URLs go through
fsspec: s3fs (extra ``[s3]``), gcsfs (``[gcs]``), fsspec's HTTP file system on aiohttp
(``[http]``), with **one file-system object per process and protocol**, so connections are
reused (the HTTP keep-alive pool of aiohttp / aiobotocore) and a forked worker makes its own.

Reads
  ``read_bytes`` (a whole object), ``read_range(url, start, end)`` (one ranged GET: bytes
  ``[start, end)``; a server that ignores ``Range`` is an error, not a silent full download),
  ``read_ranges`` (many ranges, fetched concurrently), ``sizes`` (one listing per folder on
  object stores, concurrent HEADs over HTTP), ``listdir``, ``exists``.
Writes
  ``write_bytes`` and ``publish(local_file, url)``. An object store's PUT (and a multipart
  upload's completion) is atomic: a reader sees no object or the whole object, never a part,
  so publishing is the upload to the final name; on a local disk it is temp file + rename.
  HTTP is read-only.
Faults (every remote call goes through one retry loop, :func:`_call`)
  * transient -- HTTP 408/429/500/502/503/504, a connection reset or refused, a timeout (the
    socket timeout is ``MMIT_STORAGE_TIMEOUT`` s, default 30): retried up to
    ``MMIT_STORAGE_RETRIES`` times (default 5) after ``MMIT_STORAGE_BACKOFF * 2**k`` s
    (default 0.2 s, plus up to 50% jitter); every retry is counted (``stats()["retries"]``).
    The libraries' own retry loops are turned off (s3fs ``retries=1``, botocore
    ``total_max_attempts=1``), so each retry is ours, backed off and counted.
  * permanent -- 403 (:class:`AccessDenied`), 404 (:class:`NotFound`), anything else, or a
    transient fault that outlived its retries (:class:`Unavailable`): one line that names the
    URL, e.g. ``cannot read s3://bucket/ds/train-000000.tar: not found (HTTP 404)``.
Credentials never reach a message
  URLs are shown through :func:`redact` (``user:password@`` and query strings removed); a URL's
  ``user:password@`` is taken out on entry (:func:`strip_credentials`) and kept only in this
  process's table of logins; a library's error text is scrubbed of every secret this process
  knows (the AWS secret key and session token, URL passwords) before any of it is shown.

``stats()``: this process's counters: ``requests``, ``bytes_read``, ``bytes_written``,
``retries`` (DataLoader workers count their own; the loader sums them per batch).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Sequence, Tuple

from ._io import atomic_path, atomic_write_bytes

__all__ = [
    "is_url", "join", "parent", "basename", "absolute", "redact", "strip_credentials", "stats",
    "StorageError", "NotFound", "AccessDenied", "Unavailable",
    "exists", "size", "sizes", "listdir", "read_bytes", "read_text", "read_json", "read_range", "read_ranges",
    "write_bytes", "write_text", "write_json", "publish", "remove", "append_line", "makedirs", "download",
]

_log = logging.getLogger(__name__)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_EXTRA = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
          "http": ("aiohttp", "http"), "https": ("aiohttp", "http")}
_LISTABLE = ("s3", "s3a", "gs", "gcs")
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


# --------------------------------------------------------------------------- names
def _scheme(path: str) -> str:
    m = _SCHEME.match(str(path))
    return m.group(1).lower() if m else ""


def is_url(path) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a local path)."""
    return _scheme(os.fspath(path)) not in ("", "file")


def _local(path) -> str:
    path = os.fspath(path)
    return path[len("file://"):] if path.lower().startswith("file://") else path


def join(base, *names: str) -> str:
    """``base/name/...`` (``os.path.join`` for local paths)."""
    base = os.fspath(base)
    if not is_url(base):
        return os.path.join(_local(base), *names)
    return "/".join([base.rstrip("/")] + [n.strip("/") for n in names if n])


def parent(path) -> str:
    """The folder holding ``path`` (a URL's prefix up to its last ``/``; local: absolute)."""
    path = os.fspath(path)
    if not is_url(path):
        return os.path.dirname(os.path.abspath(_local(path)))
    head, _, _ = path.rstrip("/").rpartition("/")
    return head if "://" in head and not head.endswith(":/") else path.rstrip("/")


def basename(path) -> str:
    path = os.fspath(path)
    return path.rstrip("/").rpartition("/")[2] if is_url(path) else os.path.basename(_local(path))


def absolute(path) -> str:
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else os.path.abspath(_local(path))


# --------------------------------------------------------------------------- credentials
_LOGINS: Dict[Tuple[str, str], Tuple[str, str]] = {}   # (scheme, host) -> (user, password)
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/@?#]*)@")
_URL_IN_TEXT = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)(?:[^/@\s?#'\"]*@)?([^\s?#'\"<>]*)(\?[^\s'\"<>]*)?")


def strip_credentials(url) -> str:
    """``scheme://user:password@host/...`` -> ``scheme://host/...``; the login is kept in this
    process (forked workers inherit it) and used for that host's requests."""
    url = os.fspath(url)
    m = _USERINFO.match(url)
    if not m or not is_url(url):
        return url
    user, _, password = m.group(2).partition(":")
    host = url[m.end():].split("/", 1)[0]
    from urllib.parse import unquote

    _LOGINS[(_scheme(url), host)] = (unquote(user), unquote(password))
    return m.group(1) + url[m.end():]


def _secrets() -> List[str]:
    out = [os.environ.get(k, "") for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")]
    out += [p for _, p in _LOGINS.values()]
    return [s for s in out if len(s) >= 8]   # real keys are 40 characters; short strings are not secrets


def redact(text) -> str:
    """``text`` (a URL or a message) without credentials: URLs lose ``user:password@`` and their
    query string (presigned URLs carry signatures there); known secrets become ``***``."""
    text = _URL_IN_TEXT.sub(lambda m: m.group(1) + m.group(2) + ("?…" if m.group(3) else ""), str(text))
    for s in _secrets():
        text = text.replace(s, "***")
    return text


# --------------------------------------------------------------------------- errors, counters
class StorageError(OSError):
    """A storage operation failed for good; the message is one line naming the (redacted) URL."""

    def __init__(self, message: str, url: str = "", status=None):
        super().__init__(message)
        self.url, self.status = url, status

    def __str__(self):
        return self.args[0]


class NotFound(StorageError, FileNotFoundError):
    """HTTP 404: no such object (or bucket)."""


class AccessDenied(StorageError, PermissionError):
    """HTTP 401/403: the credentials do not allow it."""


class Unavailable(StorageError):
    """A transient fault (5xx, reset, timeout) that outlived every retry."""


_STATS = {"requests": 0, "bytes_read": 0, "bytes_written": 0, "retries": 0}
_LOCK = threading.Lock()


def _count(**kw) -> None:
    with _LOCK:
        for k, v in kw.items():
            _STATS[k] += v


def stats() -> Dict[str, int]:
    """This process's counters (a copy): requests, bytes_read, bytes_written, retries."""
    with _LOCK:
        return dict(_STATS)


def _setting(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise ValueError(f"{name}={os.environ[name]!r} is not a number") from None


def _status(exc: BaseException):
    """The HTTP status behind an exception (walking its causes), or None."""
    seen = 0
    while exc is not None and seen < 8:
        st = getattr(exc, "status", None)
        if isinstance(st, int) and st >= 100:
            return st
        resp = getattr(exc, "response", None)
        if isinstance(resp, dict):
            code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


_TRANSIENT_NAMES = {"ServerDisconnectedError", "ClientConnectionError", "ClientOSError", "ClientPayloadError",
                    "ClientConnectorError", "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
                    "ConnectTimeoutError", "IncompleteRead", "FSTimeoutError", "ResponseStreamingError",
                    "ProtocolError", "ServerTimeoutError", "HTTPClientError"}


def _classify(exc: BaseException) -> Tuple[str, Any]:
    """``("missing" | "denied" | "transient" | "permanent", status)``."""
    st = _status(exc)
    if st in (404, 410):
        return "missing", st
    if st in (401, 403):
        return "denied", st
    if st in _TRANSIENT_STATUS:
        return "transient", st
    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, (TimeoutError, ConnectionError)) or type(e).__name__ in _TRANSIENT_NAMES:
            return "transient", st
    if st is None and isinstance(exc, FileNotFoundError):
        return "missing", None
    if st is None and isinstance(exc, PermissionError):
        return "denied", None
    return "permanent", st


def _detail(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _fail(what: str, url: str, exc: BaseException, kind: str, status, attempts: int) -> StorageError:
    shown = redact(url)
    code = f" (HTTP {status})" if status else ""
    if kind == "missing":
        return NotFound(f"cannot {what} {shown}: not found{code}", shown, status)
    if kind == "denied":
        return AccessDenied(f"cannot {what} {shown}: access denied{code}: check the credentials and the "
                            "bucket's permissions", shown, status)
    if kind == "transient":
        return Unavailable(f"cannot {what} {shown}: {_detail(exc)}{code}, still failing after {attempts} attempts "
                           "(MMIT_STORAGE_RETRIES)", shown, status)
    return StorageError(f"cannot {what} {shown}: {_detail(exc)}{code}", shown, status)


def _call(what: str, url: str, fn: Callable[[], Any]):
    """``fn()`` with the retry policy of the module docstring; permanent faults raise one line."""
    retries = int(_setting("MMIT_STORAGE_RETRIES", 5))
    backoff = _setting("MMIT_STORAGE_BACKOFF", 0.2)
    for k in range(retries + 1):
        _count(requests=1)
        try:
            return fn()
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below; nothing is swallowed
            kind, status = _classify(e)
            if kind == "transient" and k < retries:
                _count(retries=1)
                _log.info("retrying %s %s after %s (attempt %d of %d)", what, redact(url), _detail(e), k + 1, retries + 1)
                time.sleep(backoff * 2 ** k * (1 + 0.5 * random.random()))
                continue
            raise _fail(what, url, e, kind, status, k + 1) from None


# --------------------------------------------------------------------------- file systems
_FS: Dict[tuple, Any] = {}
_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "MMIT_STORAGE_TIMEOUT")


_AIO_SESSIONS: Dict[tuple, Any] = {}


def _aio_session():
    """One aiobotocore session for this process and the workers forked from it (per set of
    AWS variables: a session caches the credentials it resolved): a forked worker inherits the
    service models it has loaded and parsed (~0.1 s of CPU per client otherwise); each process
    still makes its own client and connections."""
    env = tuple(os.environ.get(k) for k in _ENV_KEYS + ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    if env not in _AIO_SESSIONS:
        from aiobotocore.session import AioSession

        _AIO_SESSIONS[env] = AioSession()
    return _AIO_SESSIONS[env]


def _new_fs(scheme: str, host: str):
    """A file system for ``scheme`` with our timeouts, the libraries' retries off, and the
    login of ``host`` (if a URL carried one)."""
    from ._extras import require

    module, extra = _EXTRA.get(scheme, (None, None))
    if module:
        require(module, extra)
    timeout = _setting("MMIT_STORAGE_TIMEOUT", 30.0)
    login = _LOGINS.get((scheme, host))
    if scheme in ("s3", "s3a"):
        import s3fs

        kw = {"key": login[0], "secret": login[1]} if login else {}
        kw["session"] = _aio_session()
        fs = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs={
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "connect_timeout": timeout, "read_timeout": timeout}, **kw)
        fs.retries = 1
        return fs
    if scheme in ("http", "https"):
        import aiohttp
        from fsspec.implementations.http import HTTPFileSystem

        ck = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)}
        if login:   # this file system serves this host only (see _fs)
            import base64

            token = base64.b64encode(f"{login[0]}:{login[1]}".encode("utf-8")).decode("ascii")
            ck["headers"] = {"Authorization": f"Basic {token}"}
        return HTTPFileSystem(skip_instance_cache=True, client_kwargs=ck)
    import fsspec

    return fsspec.filesystem(scheme, skip_instance_cache=True)


def _fs(url: str):
    """``(file system, path for it)``; one file system per (process, protocol, host)."""
    scheme = _scheme(url)
    host = url[len(scheme) + 3:].split("/", 1)[0]
    env = tuple(os.environ.get(k) for k in _ENV_KEYS + ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    # a changed endpoint or credentials: a new file system
    key = (os.getpid(), scheme, host if scheme in ("http", "https") else "", env, _LOGINS.get((scheme, host)))
    fs = _FS.get(key)
    if fs is None:
        fs = _FS[key] = _new_fs(scheme, host)
    return fs, (url if scheme in ("http", "https") else fs._strip_protocol(url))


_POOLS: Dict[int, ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    """This process's fan-out pool for concurrent requests (a forked worker makes its own)."""
    pool = _POOLS.get(os.getpid())
    if pool is None:
        pool = _POOLS[os.getpid()] = ThreadPoolExecutor(16, thread_name_prefix="mmit-storage")
    return pool


# --------------------------------------------------------------------------- reading
def exists(path) -> bool:
    path = os.fspath(path)
    if not is_url(path):
        return os.path.exists(_local(path))
    fs, p = _fs(path)
    try:
        fs.invalidate_cache(p)
        _call("read", path, lambda: fs.info(p))
        return True
    except NotFound:
        return False


def size(path) -> int:
    return sizes([path])[0]


def sizes(paths: Sequence[str]) -> List[int]:
    """Byte sizes of ``paths`` (a :class:`NotFound` naming the first that does not exist):
    one listing per folder on object stores, concurrent HEADs over HTTP."""
    paths = [os.fspath(p) for p in paths]
    out: Dict[str, int] = {}
    local = [p for p in paths if not is_url(p)]
    for p in local:
        if not os.path.exists(_local(p)):
            raise NotFound(f"cannot read {p}: no such file", p)
        out[p] = os.path.getsize(_local(p))
    remote = [p for p in paths if is_url(p)]
    listable = [p for p in remote if _scheme(p) in _LISTABLE]
    for folder in sorted({parent(p) for p in listable}):
        listing = _listing(folder)
        for p in listable:
            if parent(p) == folder and basename(p) in listing:
                out[p] = listing[basename(p)]
    rest = [p for p in remote if p not in out and _scheme(p) not in _LISTABLE]
    for p, s in zip(rest, _pool().map(_info_size, rest)):
        out[p] = s
    for p in paths:
        if p not in out:
            raise NotFound(f"cannot read {redact(p)}: not found (HTTP 404)", redact(p), 404)
    return [out[p] for p in paths]


def _info_size(url: str) -> int:
    fs, p = _fs(url)
    info = _call("read", url, lambda: fs.info(p))
    if info.get("size") is None:
        raise StorageError(f"cannot read {redact(url)}: the server does not say its size (no Content-Length)", redact(url))
    return int(info["size"])


def _listing(folder: str) -> Dict[str, int]:
    """``{name: size}`` of the objects directly under ``folder`` (empty when there are none)."""
    fs, p = _fs(folder)
    try:
        entries = _call("list", folder, lambda: fs.ls(p, detail=True, refresh=True))
    except NotFound:
        return {}
    return {e["name"].rstrip("/").rpartition("/")[2]: int(e.get("size") or 0) for e in entries
            if e.get("type", "file") == "file"}


def listdir(folder) -> List[str]:
    """Names of the files directly in ``folder`` ([] when it does not exist)."""
    folder = os.fspath(folder)
    if not is_url(folder):
        folder = _local(folder)
        return sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))) \
            if os.path.isdir(folder) else []
    if _scheme(folder) not in _LISTABLE:
        raise StorageError(f"cannot list {redact(folder)}: {_scheme(folder)}:// has no listing; "
                           "give the URL of a manifest or shard", redact(folder))
    return sorted(_listing(folder))


def read_bytes(path) -> bytes:
    path = os.fspath(path)
    if not is_url(path):
        with open(_local(path), "rb") as f:
            return f.read()
    fs, p = _fs(path)
    data = _call("read", path, lambda: fs.cat_file(p))
    _count(bytes_read=len(data))
    return data


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path) -> Any:
    """JSON from ``path``; a ``ValueError`` naming it when it does not parse."""
    try:
        return json.loads(read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{redact(path)}: not valid JSON ({e})") from None


def read_range(path, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of ``path`` in one request (fewer only where the object ends)."""
    path = os.fspath(path)
    if end <= start:
        return b""
    if not is_url(path):
        with open(_local(path), "rb") as f:
            f.seek(start)
            return f.read(end - start)
    fs, p = _fs(path)
    data = _call("read", path, lambda: fs.cat_file(p, start=start, end=end))
    _count(bytes_read=len(data))
    if len(data) > end - start:
        raise StorageError(f"cannot read {redact(path)}: the server ignored the byte range {start}-{end - 1} "
                           f"(sent {len(data)} bytes); it must support HTTP Range requests", redact(path))
    return data


def read_ranges(path, ranges: Sequence[Tuple[int, int]]) -> List[bytes]:
    """``[read_range(path, a, b) for a, b in ranges]``, the requests made concurrently."""
    path = os.fspath(path)
    if not is_url(path):
        out = []
        with open(_local(path), "rb") as f:
            for a, b in ranges:
                f.seek(a)
                out.append(f.read(max(0, b - a)))
        return out
    return list(_pool().map(lambda r: read_range(path, r[0], r[1]), ranges))


def download(url, local_path: str) -> None:
    """Copy ``url`` to the local file ``local_path`` atomically (streamed, retried)."""
    fs, p = _fs(os.fspath(url))
    with atomic_path(local_path) as tmp:
        _call("read", url, lambda: fs.get_file(p, tmp))
        _count(bytes_read=os.path.getsize(tmp))


# --------------------------------------------------------------------------- writing
def _writable(url: str) -> None:
    if _scheme(url) in ("http", "https"):
        raise StorageError(f"cannot write {redact(url)}: HTTP is read-only here; write to a local folder, "
                           "s3:// or gs://", redact(url))


def makedirs(path) -> None:
    """Make a local folder; on an object store, the bucket when it does not exist yet (there
    are no folders to make; a bucket that cannot be made is left to the first write to report)."""
    path = os.fspath(path)
    if not is_url(path):
        os.makedirs(_local(path), exist_ok=True)
        return
    _writable(path)
    fs, p = _fs(path)
    bucket = p.split("/", 1)[0]
    try:
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    except Exception:  # noqa: BLE001 - no right to look or make: the first PUT says what is wrong
        pass


def write_bytes(path, data: bytes) -> None:
    """Write ``data`` atomically: a reader sees the old file or the whole new one."""
    path = os.fspath(path)
    if not is_url(path):
        atomic_write_bytes(_local(path), data)
        return
    _writable(path)
    fs, p = _fs(path)
    _call("write", path, lambda: fs.pipe_file(p, data))
    fs.invalidate_cache(p)
    _count(bytes_written=len(data))


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def publish(local_file: str, dest) -> None:
    """Move the finished local file ``local_file`` to ``dest`` atomically: a rename on a local
    disk (same folder), an upload to the final name on an object store; the local file is gone
    afterwards."""
    dest = os.fspath(dest)
    if not is_url(dest):
        os.replace(local_file, _local(dest))
        return
    _writable(dest)
    fs, p = _fs(dest)
    n = os.path.getsize(local_file)
    _call("write", dest, lambda: fs.put_file(local_file, p))
    fs.invalidate_cache(p)
    _count(bytes_written=n)
    os.unlink(local_file)


def remove(path, missing_ok: bool = True) -> None:
    path = os.fspath(path)
    if not is_url(path):
        try:
            os.unlink(_local(path))
        except FileNotFoundError:
            if not missing_ok:
                raise
        return
    _writable(path)
    fs, p = _fs(path)
    try:
        _call("delete", path, lambda: fs.rm_file(p))
    except NotFound:
        if not missing_ok:
            raise
    fs.invalidate_cache(p)


def append_line(path, line: str) -> None:
    """Append one line durably: ``fsync`` on a local disk; on an object store the object is
    rewritten whole (one writer per file, as for the pack journals)."""
    path = os.fspath(path)
    if not line.endswith("\n"):
        line += "\n"
    if not is_url(path):
        with open(_local(path), "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return
    try:
        old = read_bytes(path)
    except NotFound:
        old = b""
    write_bytes(path, old + line.encode("utf-8"))

