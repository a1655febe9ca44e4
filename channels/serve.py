"""A small static HTTP server for a channel repository's published tree, with Range support.

For local use and tests (a CDN or any web server does the same job in production). Serves
only the ``published/`` tree of a channel repository (a directory holding
``tidehost-channels.json``) and refuses to start on anything else, so ``keys/`` is never
reachable. GET and HEAD, single ``bytes=`` ranges, keep-alive (HTTP/1.1). Hostile clients
get a status, never a traceback: a malformed path (a NUL, ``..``) is 400, a malformed or
absurd range 416; a connection idle for ``idle_timeout`` seconds, or whose request head takes
longer than ``head_timeout`` (a slow-loris client), is closed; a fixed pool of ``workers``
threads serves connections and at most ``backlog`` wait, further ones are closed at once.
It counts the bytes it reads and writes so benchmarks can report bytes on the wire.
"""

from __future__ import annotations

import logging
import queue
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from channels.errors import NotARepositoryError
from channels.layout import CONFIG_NAME, MIRROR_CONFIG

log = logging.getLogger(__name__)
_RANGE = re.compile(r"^bytes=([0-9]{0,18})-([0-9]{0,18})$")  # 18 digits: beyond any file
_CHUNK = 1 << 20
_BAD_PATH = re.compile(r"[\x00-\x1f\x7f\\]")


class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.received = 0
        self.requests = 0

    def add(self, sent: int = 0, received: int = 0, requests: int = 0) -> None:
        with self.lock:
            self.sent += sent
            self.received += received
            self.requests += requests


class _CountingWriter:
    def __init__(self, raw: BinaryIO, counter: _Counter) -> None:
        self.raw = raw
        self.counter = counter

    def write(self, data: bytes) -> int:
        n = self.raw.write(data)
        self.counter.add(sent=len(data))
        return n if n is not None else len(data)

    def flush(self) -> None:
        self.raw.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self.raw, name)


class StaticHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ChannelServer
    server_version = "tidehost"
    default_request_version = "HTTP/1.0"  # a garbage request line still gets a status line
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # every read and write on the socket
        super().setup()
        self.wfile = _CountingWriter(self.wfile, self.server.counter)  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        # the request line and headers (and a keep-alive wait for them) must arrive in time
        self.server.watch_head(self.connection)
        try:
            super().handle_one_request()
        finally:
            self.server.unwatch_head(self.connection)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.unwatch_head(self.connection)
        request_bytes = len(self.raw_requestline) + sum(
            len(k) + len(v) + 4 for k, v in self.headers.items()) + 2 if ok else 0
        self.server.counter.add(received=request_bytes, requests=1)
        return ok

    def bad_path(self) -> bool:
        """A path no client of a static tree sends: control characters, NUL, ``..``."""
        rel = unquote(urlsplit(self.path).path, errors="strict")
        return bool(_BAD_PATH.search(rel)) or ".." in rel.split("/")

    def resolve(self) -> Path | None:
        """The file under the served root that the request names (None: not there)."""
        try:
            rel = unquote(urlsplit(self.path).path, errors="strict").lstrip("/")
            if _BAD_PATH.search(rel) or ".." in rel.split("/"):
                return None
            root = self.server.root
            path = (root / rel).resolve()
            if path != root and root not in path.parents:
                return None
            return path if path.is_file() else None
        except (ValueError, OSError):  # undecodable, too long, ...
            return None

    def _plain(self, status: int, text: str = "") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        try:
            bad = self.bad_path()
        except (ValueError, UnicodeDecodeError):
            bad = True
        if bad:
            self._plain(400)
            self.close_connection = True
            return
        path = self.resolve()
        if path is None:
            self._plain(404)
            return
        try:
            size = path.stat().st_size
        except OSError:
            self._plain(404)
            return
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or (not m[1] and not m[2]):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), size - 1) if m[2] else size - 1
            else:  # suffix range: the last N bytes
                start = max(size - int(m[2]), 0)
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        # Vagrant takes a URL for a box catalog only when it is served as JSON.
        kind = "application/json" if path.suffix == ".json" else "application/octet-stream"
        self.send_header("Content-Type", kind)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        self.send_body(path, start, length)

    def send_body(self, path: Path, start: int, length: int) -> None:
        """Write ``length`` bytes of ``path`` from ``start``; tests override this to misbehave."""
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                block = f.read(min(_CHUNK, left))
                if not block:
                    break
                self.wfile.write(block)
                left -= len(block)


class ChannelServer(HTTPServer):
    """Serves one repository's ``published/`` tree with a bounded pool of worker threads.

    ``root`` is the repository directory or its ``published/`` directory; anything else is
    refused with ``NotARepositoryError``.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0,
                 handler: type[StaticHandler] = StaticHandler, *, workers: int = 16,
                 backlog: int = 64, idle_timeout: float = 30.0,
                 head_timeout: float = 30.0) -> None:
        self.root = serve_root(Path(root)).resolve()
        self.counter = _Counter()
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self._heads: dict[socket.socket, float] = {}
        self._heads_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=backlog)
        super().__init__((host, port), handler)
        self._workers = [threading.Thread(target=self._work, name=f"channel-serve-{i}",
                                          daemon=True) for i in range(workers)]
        for t in self._workers:
            t.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    # --- the pool ------------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self._queue.put_nowait((request, client_address))
        except queue.Full:  # every worker busy and the backlog full: refuse, do not grow
            log.debug("%s: refused, %d connections waiting", client_address, self._queue.qsize())
            self.shutdown_request(request)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - one bad connection must not end a worker
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line in the debug log instead of socketserver's traceback on stderr."""
        import sys

        e = sys.exc_info()[1]
        log.debug("%s: connection ended: %s: %s", client_address, type(e).__name__, e)

    # --- slow request heads ----------------------------------------------------------

    def watch_head(self, conn: socket.socket) -> None:
        with self._heads_lock:
            self._heads[conn] = time.monotonic() + self.head_timeout

    def unwatch_head(self, conn: socket.socket) -> None:
        with self._heads_lock:
            self._heads.pop(conn, None)

    def service_actions(self) -> None:
        """Called by ``serve_forever`` between polls: close connections whose head is late."""
        now = time.monotonic()
        with self._heads_lock:
            late = [c for c, t in self._heads.items() if t < now]
            for c in late:
                del self._heads[c]
        for c in late:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # --- running ---------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (for tests and benchmarks); stop with ``stop()``."""
        t = threading.Thread(target=self.serve_forever, args=(0.05,), name="channel-serve",
                             daemon=True)
        t.start()
        return t

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def serve_root(path: Path) -> Path:
    """The tree to serve for ``path``: a repository's ``published/`` directory, nothing else.

    Raises:
        NotARepositoryError: ``path`` is neither a channel repository (holding
            ``tidehost-channels.json`` and ``published/``) or a mirror of one
            (``tidehost-mirror.json``, ``channels.mirror``) nor that ``published/`` directory.
    """
    path = Path(path)
    for repo, pub in ((path, path / "published"), (path.parent, path)):
        if pub.name == "published" and pub.is_dir() and any(
                (repo / marker).is_file() for marker in (CONFIG_NAME, MIRROR_CONFIG)):
            return pub
    raise NotARepositoryError(
        f"{path}: not a channel repository (no {CONFIG_NAME}); serving only a repository's "
        "published/ tree, never a plain directory"
    )


def published_root(path: Path) -> Path:
    """``repo/published`` for a repository directory, else the directory itself."""
    path = Path(path)
    pub = path / "published"
    marked = (path / CONFIG_NAME).is_file() or (path / MIRROR_CONFIG).is_file()
    return pub if pub.is_dir() and marked else path


__all__ = ["ChannelServer", "StaticHandler", "published_root", "serve_root"]
