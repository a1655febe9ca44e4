"""A small static HTTP server for a channel repository's published tree, with Range support.

For local use and tests (a CDN or any web server does the same job in production). Serves
only files under its root, GET and HEAD, single ``bytes=`` ranges, keep-alive (HTTP/1.1),
and counts the bytes it reads and writes so benchmarks can report bytes on the wire.
"""

from __future__ import annotations

import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 20


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
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.wfile = _CountingWriter(self.wfile, self.server.counter)  # type: ignore[assignment]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        request_bytes = len(self.raw_requestline) + sum(
            len(k) + len(v) + 4 for k, v in self.headers.items()) + 2 if ok else 0
        self.server.counter.add(received=request_bytes, requests=1)
        return ok

    def resolve(self) -> Path | None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        root = self.server.root
        path = (root / rel).resolve()
        if path != root and root not in path.parents:
            return None
        return path if path.is_file() else None

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
        path = self.resolve()
        if path is None:
            self._plain(404)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or (not m[1] and not m[2]):
                self._plain(416)
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


class ChannelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0,
                 handler: type[StaticHandler] = StaticHandler) -> None:
        self.root = Path(root).resolve()
        self.counter = _Counter()
        super().__init__((host, port), handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (for tests and benchmarks); stop with ``shutdown()``."""
        t = threading.Thread(target=self.serve_forever, args=(0.05,), name="channel-serve",
                             daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def published_root(path: Path) -> Path:
    """``repo/published`` for a repository directory, else the directory itself."""
    path = Path(path)
    pub = path / "published"
    return pub if pub.is_dir() and (path / "tidehost-channels.json").is_file() else path


__all__ = ["ChannelServer", "StaticHandler", "published_root"]
