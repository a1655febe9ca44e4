"""HTTP for the client: a TUF fetcher and a resumable, bounded target download.

Only stdlib, ``requests`` and ``tuf`` (this runs on the host image). Every failure becomes a
``channels.errors`` error; nothing here decides trust except the bounds:

- size: a response is never read past the length the signed metadata allows (endless data);
- time: every fetch has a whole-file deadline, ``floor + length / min_rate`` seconds (the
  floor is the client's ``timeout``, which is also how long any one read may wait). It
  holds across the whole response, headers included, not per read: a mirror that drips
  one byte a second is cut off at the deadline (slow retrieval), and a target download
  keeps what it got, to resume.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import requests
from requests.adapters import HTTPAdapter
from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface
from urllib3 import exceptions as urllib3_exc
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from channels.errors import DownloadSizeError, HTTPStatusError, SlowRetrievalError, TransportError

log = logging.getLogger(__name__)


def _one_line(record: logging.LogRecord) -> bool:
    """urllib3 logs a malformed header block with a traceback: keep the one line."""
    record.exc_info = None
    record.exc_text = None
    return True


logging.getLogger("urllib3.connection").addFilter(_one_line)
_CHUNK = 64 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
USER_AGENT = "tidehost-channels/1"
DEFAULT_MIN_RATE = 16 * 1024  # bytes/s below which a download counts as a slow-retrieval attack


def deadline_seconds(length: int, floor: float, min_rate: float) -> float:
    """The whole-file deadline of a ``length``-byte fetch: ``floor + length / min_rate``."""
    return floor + max(length, 0) / min_rate


# --- the deadline: a watchdog that shuts a late response's socket under its reader -------

_CURRENT: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "tidehost_fetch_deadline", default=None)


class Deadline:
    """``with Deadline(seconds):`` every HTTP connection used inside is shut down at the end
    of ``seconds``, so a blocked read returns at once, whatever the server trickles.

    ``expired`` tells afterwards whether that happened (and the failure is a slow retrieval).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._token: contextvars.Token[Deadline | None] | None = None

    def __enter__(self) -> Deadline:
        self._token = _CURRENT.set(self)
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        assert self._token is not None
        _CURRENT.reset(self._token)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socks.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown: wakes a reader blocked in recv (TLS included)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError):
        pass


def _watch(sock: socket.socket | None) -> None:
    d = _CURRENT.get()
    if d is not None:
        d.watch(sock)


class _Watched:
    """A urllib3 connection whose socket is put under the current ``Deadline``.

    The socket itself, not the connection: http.client drops a connection's ``sock`` as soon
    as a response says ``Connection: close``, while the response goes on reading from it.
    """

    sock: socket.socket | None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _watch(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> Any:
        _watch(self.sock)  # a kept-alive connection (a new one is watched in connect)
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    _POOLS = {"http": _HTTPPool, "https": _HTTPSPool}

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = self._POOLS
        return manager


def new_session() -> requests.Session:
    s = requests.Session()
    # Keep requests small (idle polls count bytes) and never let a proxy transcode ranges.
    s.headers.clear()
    s.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    for prefix in ("http://", "https://"):
        s.mount(prefix, _Adapter())
    return s


def _slow(label: str, d: Deadline, got: int, length: int, min_rate: float) -> str:
    return (f"{label}: {got} of {length} bytes in {d.elapsed:.0f} s, slower than the "
            f"{min_rate:g} B/s minimum (slow retrieval); gave up at the {d.seconds:.0f} s deadline")


class RequestsFetcher(FetcherInterface):
    """tuf's fetcher interface over one ``requests.Session``, with a whole-file deadline.

    ``max_length`` (the signed length, or the client's limit for timestamp and root) sets
    each file's deadline: ``timeout + max_length / min_rate`` seconds.
    """

    def __init__(self, session: requests.Session, timeout: float,
                 min_rate: float = DEFAULT_MIN_RATE) -> None:
        self.session = session
        self.timeout = timeout
        self.min_rate = min_rate
        self.last_url: str | None = None  # for error messages that name the file

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            r = self.session.get(url, stream=True, timeout=self.timeout)
        except requests.RequestException as e:
            raise tuf_exc.DownloadError(f"{url}: {_why(e)}") from None
        if r.status_code != 200:
            r.close()
            raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {r.status_code}", r.status_code)
        return self._chunks(r, url)

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        got = 0
        self.last_url = url
        with tempfile.TemporaryFile() as f:
            with Deadline(deadline_seconds(max_length, self.timeout, self.min_rate)) as d:
                chunks = None
                try:
                    chunks = self.fetch(url)
                    for chunk in chunks:
                        got += len(chunk)
                        if got > max_length:  # endless data
                            raise tuf_exc.DownloadLengthMismatchError(
                                f"{url}: Downloaded {got} bytes exceeding the maximum allowed "
                                f"length of {max_length}")
                        f.write(chunk)
                except tuf_exc.DownloadLengthMismatchError:
                    raise
                except tuf_exc.DownloadError:
                    if d.expired:
                        raise tuf_exc.SlowRetrievalError(
                            _slow(url, d, got, max_length, self.min_rate)) from None
                    raise
                finally:
                    if chunks is not None and hasattr(chunks, "close"):
                        chunks.close()
            if d.expired:  # cut off, maybe mid-headers: whatever arrived is not the file
                raise tuf_exc.SlowRetrievalError(_slow(url, d, got, max_length, self.min_rate))
            f.seek(0)
            yield f

    @staticmethod
    def _chunks(r: requests.Response, url: str) -> Iterator[bytes]:
        with r:
            try:
                yield from body(r)
            except requests.RequestException as e:
                raise tuf_exc.DownloadError(f"{url}: {_why(e)}") from None


def body(r: requests.Response) -> Iterator[bytes]:
    """A streamed response's bytes as they arrive (``read1``: a slow server's bytes reach the
    caller, and the disk, before the deadline cuts it off, instead of waiting in a buffer)."""
    read1 = getattr(r.raw, "read1", None)
    if read1 is None or getattr(r.raw, "chunked", False):
        yield from r.iter_content(_CHUNK)
        return
    while True:
        try:
            block = read1(_CHUNK)
        except (urllib3_exc.HTTPError, OSError) as e:
            raise requests.ConnectionError(str(e)) from None
        if not block:
            return
        yield block


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")]+")


def _why(e: BaseException) -> str:
    """A short reason for a requests failure (its own text nests three exceptions deep)."""
    if isinstance(e, requests.Timeout) or "timed out" in str(e):
        return "timed out"
    m = _ERRNO.search(str(e))
    if isinstance(e, requests.ConnectionError):
        return f"cannot connect ({m[0].strip()})" if m else "connection failed"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]


Progress = Callable[[int], None]


def download_resumable(session: requests.Session, url: str, part: Path, length: int,
                       timeout: float, progress: Progress | None = None,
                       label: str | None = None, min_rate: float = DEFAULT_MIN_RATE) -> None:
    """Make ``part`` hold the first ``length`` bytes at ``url``, resuming what it has.

    Appends with an HTTP Range request when ``part`` already holds a prefix. Never writes
    past ``length``. Does not verify hashes (the caller does, before using the file). The
    whole response must arrive within ``timeout + (length - have) / min_rate`` seconds.

    ``label`` names the file in error messages (default: the URL).

    Raises:
        DownloadSizeError: the server sends more than ``length`` bytes (the partial file is
            discarded) or ends short of it (the partial file is kept, to resume).
        SlowRetrievalError: the deadline passed (the partial file is kept, to resume).
        HTTPStatusError, TransportError: the request failed; the partial file is kept.
    """
    label = label or url
    have = part.stat().st_size if part.exists() else 0
    if have > length:
        part.unlink()
        have = 0
    if have == length:
        return
    start = have
    with Deadline(deadline_seconds(length - have, timeout, min_rate)) as d:
        try:
            have = _download(session, url, part, length, have, timeout, progress, label)
        except TransportError as e:
            if d.expired and not isinstance(e, HTTPStatusError):
                got = (part.stat().st_size if part.exists() else 0) - start
                raise SlowRetrievalError(
                    _slow(label, d, max(got, 0), length - start, min_rate)
                    + "; the next download resumes") from None
            raise
    if have < length:
        if d.expired:
            raise SlowRetrievalError(_slow(label, d, have - start, length - start, min_rate)
                                     + "; the next download resumes")
        raise DownloadSizeError(
            f"{label}: response ended after {have} of {length} bytes (truncated); "
            "the next download resumes"
        )


def _download(session: requests.Session, url: str, part: Path, length: int, have: int,
              timeout: float, progress: Progress | None, label: str) -> int:
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        r = session.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as e:
        raise TransportError(f"{label}: {_why(e)}") from None
    with r:
        if r.status_code == 206:
            m = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
            if not m or int(m[1]) != have:
                raise TransportError(f"{label}: server answered a range from {have} with "
                                     f"{r.headers.get('Content-Range')!r}")
            mode = "ab"
        elif r.status_code == 200:
            have, mode = 0, "wb"
        elif r.status_code == 416:
            part.unlink(missing_ok=True)
            raise DownloadSizeError(
                f"{label}: server has only {have} or fewer bytes of the {length} signed "
                "(truncated); discarded the partial file"
            )
        else:
            raise HTTPStatusError(f"{label}: HTTP {r.status_code}", r.status_code)
        announced = r.headers.get("Content-Length")
        if announced is not None and announced.isdigit() and have + int(announced) > length:
            raise DownloadSizeError(
                f"{label}: server announces {have + int(announced)} bytes, more than the "
                f"{length} signed"
            )
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else
                                                      os.O_TRUNC), 0o600)
        with os.fdopen(fd, "wb") as f:
            try:
                for chunk in body(r):
                    if have + len(chunk) > length:
                        f.close()
                        part.unlink(missing_ok=True)
                        raise DownloadSizeError(
                            f"{label}: response is longer than the {length} bytes signed "
                            "(endless data); discarded"
                        )
                    f.write(chunk)
                    have += len(chunk)
                    if progress:
                        progress(len(chunk))
            except requests.RequestException as e:
                raise TransportError(
                    f"{label}: interrupted after {have} of {length} bytes ({_why(e)}); "
                    "the next download resumes"
                ) from None
            f.flush()
            os.fsync(f.fileno())
    return have
