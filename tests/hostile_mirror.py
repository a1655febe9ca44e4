"""A hostile HTTP mirror on 127.0.0.1 in front of a real published channel repository.

It serves the repository's ``published/`` tree like ``tidehost channel serve`` (it *is*
``channels.serve.ChannelServer`` with a handler that misbehaves), except for the files an
attack is aimed at. Shared by the channel tests and the agent's tests: import it by name
(``tests/`` is put on ``sys.path`` by ``tests/channels/conftest.py``; elsewhere do the same)::

    with HostileMirror(repo / "published") as mirror:
        mirror.attack("metadata/timestamp.json", Drip(interval=2.0))
        ChannelClient(mirror.url, ...)

Attacks (each one ``Attack.serve(handler, data)``, ``data`` being the file's real bytes):

- ``Tamper()``: the same length, one byte changed.        - ``Truncate(n)``: the first n bytes.
- ``Endless()``: no length, the file then zeros for ever.  - ``Lie()``: announce 1 TiB, send nothing.
- ``Drip(interval, step)``: the right headers, then ``step`` bytes every ``interval`` s.
- ``DripHeaders(interval)``: the status line, then one header byte every ``interval`` s.
- ``Stall(seconds)``: headers, then silence.             - ``Serve(data)``: other bytes.
- ``Drop(n)``: the right length announced, n bytes sent, the connection cut; once.
- ``NotFound()``.

Whole-repository attacks: ``freeze()`` keeps serving the metadata as it is now while the
origin moves on (a freeze, or a replay once the origin has); ``replay(saved)`` serves bytes
captured earlier with ``capture()``; ``serve_as(name, other)`` serves one file's bytes in
place of another's (mix and match). Every request is recorded in ``seen``.
"""

from __future__ import annotations

import fnmatch
import socket
import time
from pathlib import Path
from typing import Any

from channels.serve import ChannelServer, StaticHandler

TIB = 1 << 40


class Attack:
    once = False  # True: the attack hits one request, then the file is served honestly
    spent = False

    def serve(self, h: StaticHandler, data: bytes) -> None:
        raise NotImplementedError

    @staticmethod
    def _headers(h: StaticHandler, length: int | None, status: int = 200) -> None:
        h.send_response(status)
        if length is not None:
            h.send_header("Content-Length", str(length))
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True


class Serve(Attack):
    """Serve ``data`` (replayed, re-signed, another channel's, ...) as this file."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def serve(self, h: StaticHandler, data: bytes) -> None:
        self._headers(h, len(self.data))
        h.wfile.write(self.data)


class Tamper(Attack):
    def __init__(self, at: float = 0.5) -> None:
        self.at = at

    def serve(self, h: StaticHandler, data: bytes) -> None:
        bad = bytearray(data)
        if bad:
            bad[int(len(bad) * self.at) % len(bad)] ^= 0x5A
        Serve(bytes(bad)).serve(h, data)


class Truncate(Attack):
    def __init__(self, keep: int) -> None:
        self.keep = keep

    def serve(self, h: StaticHandler, data: bytes) -> None:
        Serve(data[: self.keep]).serve(h, data)


class Drop(Attack):
    """Announce the whole file, send ``n`` bytes, cut the connection; once (a flaky link)."""

    once = True

    def __init__(self, n: int) -> None:
        self.n = n

    def serve(self, h: StaticHandler, data: bytes) -> None:
        self._headers(h, len(data))
        h.wfile.write(data[: self.n])
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)


class Endless(Attack):
    def serve(self, h: StaticHandler, data: bytes) -> None:
        self._headers(h, None)
        h.wfile.write(data)
        zeros = b"\0" * 65536
        for _ in range(100_000):  # ~6 GB: for ever, for any client that reads on
            h.wfile.write(zeros)


class Lie(Attack):
    def serve(self, h: StaticHandler, data: bytes) -> None:
        self._headers(h, TIB)


class Drip(Attack):
    """The real bytes, ``step`` at a time, every ``interval`` seconds: slow retrieval."""

    def __init__(self, interval: float = 2.0, step: int = 1) -> None:
        self.interval = interval
        self.step = step

    def serve(self, h: StaticHandler, data: bytes) -> None:
        self._headers(h, len(data))
        h.wfile.flush()
        for i in range(0, len(data), self.step):
            h.wfile.write(data[i:i + self.step])
            h.wfile.flush()
            time.sleep(self.interval)


class DripHeaders(Attack):
    """A status line, then headers one byte every ``interval`` seconds, never ending."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval

    def serve(self, h: StaticHandler, data: bytes) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        h.wfile.flush()
        for _ in range(100_000):
            h.wfile.write(b"X")
            h.wfile.flush()
            time.sleep(self.interval)


class Stall(Attack):
    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds

    def serve(self, h: StaticHandler, data: bytes) -> None:
        self._headers(h, len(data))
        h.wfile.flush()
        time.sleep(self.seconds)


class NotFound(Attack):
    def serve(self, h: StaticHandler, data: bytes) -> None:
        self._headers(h, 0, status=404)


class _MirrorHandler(StaticHandler):
    server: HostileMirrorServer

    def do_GET(self) -> None:  # noqa: N802
        rel = self.path.split("?", 1)[0].lstrip("/")
        self.server.seen.append((rel, self.headers.get("Range")))
        attack = self.server.attack_for(rel)
        if attack is None:
            super().do_GET()
            return
        path = self.resolve()
        data = path.read_bytes() if path is not None else b""
        try:
            attack.serve(self, data)
        except OSError:  # the client hung up: what a client under attack should do
            pass


class HostileMirrorServer(ChannelServer):
    def __init__(self, published: Path, **kw: Any) -> None:
        self.rules: list[tuple[str, Attack]] = []
        self.seen: list[tuple[str, str | None]] = []
        super().__init__(published, handler=_MirrorHandler, **kw)

    def attack_for(self, rel: str) -> Attack | None:
        for pattern, attack in reversed(self.rules):  # the newest rule wins
            if not attack.spent and fnmatch.fnmatchcase(rel, pattern):
                attack.spent = attack.once
                return attack
        return None


class HostileMirror:
    """A mirror of ``published`` (a repository's ``published/``) that attacks on request."""

    def __init__(self, published: Path, **server_kw: Any) -> None:
        self.published = Path(published)
        self.server = HostileMirrorServer(self.published, **server_kw)

    def __enter__(self) -> HostileMirror:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def seen(self) -> list[tuple[str, str | None]]:
        return self.server.seen

    def attack(self, pattern: str, attack: Attack) -> HostileMirror:
        """Serve every path matching ``pattern`` (``targets/alpha/*.usr.img``) with ``attack``."""
        self.server.rules.append((pattern, attack))
        return self

    def clear(self) -> None:
        self.server.rules.clear()

    def capture(self, pattern: str = "metadata/*") -> dict[str, bytes]:
        """The bytes of every published file matching ``pattern``, as they are now."""
        out = {}
        for p in sorted(self.published.rglob("*")):
            rel = str(p.relative_to(self.published))
            if p.is_file() and fnmatch.fnmatchcase(rel, pattern):
                out[rel] = p.read_bytes()
        return out

    def replay(self, saved: dict[str, bytes]) -> None:
        """Serve ``saved`` (from ``capture``) in place of the origin's files of those names."""
        for rel, data in saved.items():
            self.attack(rel, Serve(data))

    def freeze(self, pattern: str = "metadata/*") -> dict[str, bytes]:
        """From now on serve the metadata as it is now, whatever the origin publishes;
        versions the origin publishes later are 404 (the mirror stopped syncing)."""
        saved = self.capture(pattern)
        self.attack(pattern, NotFound())
        self.replay(saved)
        return saved

    def serve_as(self, rel: str, other: str | Path | bytes) -> None:
        """Serve ``other`` (a published path, or bytes) in place of ``rel`` (mix and match)."""
        data = other if isinstance(other, bytes) else (self.published / other).read_bytes()
        self.attack(rel, Serve(data))

    def targets(self, glob: str) -> list[str]:
        """Published paths under targets/ matching ``glob`` (``alpha/*.usr.img``)."""
        return [str(p.relative_to(self.published))
                for p in sorted((self.published / "targets").glob(glob))]


__all__ = [
    "Attack", "Drip", "DripHeaders", "Drop", "Endless", "HostileMirror", "Lie", "NotFound",
    "Serve", "Stall", "Tamper", "Truncate",
]
