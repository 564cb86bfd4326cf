"""Real servers on the loopback for the storage tests and ``benchmarks/bench_remote.py``.

* :class:`MotoS3` -- moto's S3 server (``moto[server]``) in a subprocess on a free port;
* :class:`RangeHTTPServer` -- a small HTTP/1.1 file server that honours ``Range`` (206), with
  keep-alive and optional Basic auth (a wrong login gets 403); it counts requests and TCP
  connections;
* :class:`FaultProxy` -- an HTTP/1.1 proxy in front of either: it forwards every request
  (keeping connections to the upstream open), adds a fixed latency per request when asked,
  and injects faults on requests whose path contains a given string: an HTTP status (with an
  S3-style XML error body), a connection reset (RST, no response), or a stall longer than the
  client's timeout. It counts the requests and response bytes it passed.

Faults come from these servers, never from mocking mmit-fast's code.
"""
from __future__ import annotations

import base64
import http.client
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional, Tuple

_S3_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "SlowDown"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    """``moto_server`` on ``127.0.0.1:port`` (a subprocess); ``url`` is its endpoint."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError("moto's S3 server did not start")
                time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    return t


def _parse_range(header: str, size: int) -> Optional[Tuple[int, int]]:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (a, b), or None when unsatisfiable."""
    spec = header.split("=", 1)[1].split(",")[0].strip()
    a, _, b = spec.partition("-")
    if a == "":
        start, end = max(0, size - int(b)), size - 1
    else:
        start, end = int(a), (int(b) if b else size - 1)
    end = min(end, size - 1)
    return (start, end) if start <= end and start < size else None


class RangeHTTPServer:
    """Serves the files under ``root`` at ``url``; ``login=(user, password)`` requires Basic auth."""

    def __init__(self, root: str, login: Optional[Tuple[str, str]] = None):
        outer = self
        self.root, self.login, self.requests, self.connections = root, login, [], 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):   # one handler per TCP connection (keep-alive serves many requests)
                super().setup()
                outer.connections += 1

            def log_message(self, *a):
                pass

            def _reply(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _file(self):
                outer.requests.append((self.command, self.path, self.headers.get("Range")))
                if outer.login:
                    want = "Basic " + base64.b64encode(":".join(outer.login).encode()).decode()
                    if self.headers.get("Authorization") != want:
                        return self._reply(403, b"forbidden")
                path = os.path.normpath(os.path.join(outer.root, self.path.split("?")[0].lstrip("/")))
                if not path.startswith(os.path.abspath(outer.root)) or not os.path.isfile(path):
                    return self._reply(404, b"not found")
                size = os.path.getsize(path)
                rng = self.headers.get("Range")
                if rng is None:
                    with open(path, "rb") as f:
                        return self._reply(200, f.read(), [("Accept-Ranges", "bytes")])
                r = _parse_range(rng, size)
                if r is None:
                    return self._reply(416, b"", [("Content-Range", f"bytes */{size}")])
                with open(path, "rb") as f:
                    f.seek(r[0])
                    body = f.read(r[1] - r[0] + 1)
                self._reply(206, body, [("Accept-Ranges", "bytes"), ("Content-Range", f"bytes {r[0]}-{r[1]}/{size}")])

            do_GET = do_HEAD = _file

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        _serve(self.server)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class FaultProxy:
    """An HTTP/1.1 proxy to ``upstream`` (``http://host:port``) with injected latency and faults."""

    _HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "content-length"}

    def __init__(self, upstream: str, latency: float = 0.0):
        host, port = upstream.split("://", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.latency = latency
        self.rules: List[list] = []           # [substring, method or None, action, arg, times left]
        self.log: List[Tuple[str, str, Optional[str]]] = []   # (method, path, Range) of each request
        self.bytes_out = 0
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        _serve(self.server)

    # -- faults ----------------------------------------------------------------
    def fail(self, match: str, action, times: int = 1, method: Optional[str] = None) -> None:
        """The next ``times`` requests whose path contains ``match`` get ``action``: an HTTP
        status (int), ``"reset"`` (the connection is reset, no response) or ``("stall", s)``
        (no response for ``s`` seconds, then the connection closes)."""
        with self.lock:
            self.rules.append([match, method, action, times])

    def clear(self) -> None:
        with self.lock:
            self.rules, self.log, self.bytes_out = [], [], 0

    def _fault(self, method: str, path: str):
        with self.lock:
            for r in self.rules:
                if r[3] > 0 and r[0] in path and (r[1] is None or r[1] == method):
                    r[3] -= 1
                    return r[2]
        return None

    # -- forwarding --------------------------------------------------------------
    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        n = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if n == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(n)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _upstream(self) -> http.client.HTTPConnection:
                c = getattr(self, "_conn", None)
                if c is None:
                    c = self._conn = http.client.HTTPConnection(*outer.upstream, timeout=60)
                return c

            def _reset(self):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def _any(self):
                body = self._body()
                outer.log.append((self.command, self.path, self.headers.get("Range")))
                if outer.latency:
                    time.sleep(outer.latency)
                fault = outer._fault(self.command, self.path)
                if fault == "reset":
                    return self._reset()
                if isinstance(fault, tuple) and fault[0] == "stall":
                    time.sleep(fault[1])
                    return self._reset()
                if isinstance(fault, int):
                    code = _S3_CODES.get(fault, "Error")
                    xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>injected "
                           f"{fault}</Message></Error>").encode()
                    self.send_response(fault)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml) if self.command != "HEAD" else 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in outer._HOP}
                for attempt in range(2):   # a kept-alive upstream connection may have been closed
                    try:
                        c = self._upstream()
                        c.request(self.command, self.path, body=body, headers=headers)
                        r = c.getresponse()
                        data = r.read()
                        break
                    except (http.client.HTTPException, OSError):
                        self._conn = None
                        if attempt:
                            raise
                self.send_response(r.status, r.reason)
                for k, v in r.getheaders():
                    if k.lower() not in outer._HOP:
                        self.send_header(k, v)
                length = r.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                    with outer.lock:
                        outer.bytes_out += len(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

        return Handler

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
