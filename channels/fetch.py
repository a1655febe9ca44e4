"""HTTP for the client: a TUF fetcher and a resumable, bounded target download.

Only stdlib, ``requests`` and ``tuf`` (this runs on the host image). Every failure becomes a
``channels.errors`` error; nothing here decides trust except the size bounds: a response is
never read past the length the signed metadata allows (endless-data attacks).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import requests
from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from channels.errors import DownloadSizeError, HTTPStatusError, TransportError

log = logging.getLogger(__name__)
_CHUNK = 64 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
USER_AGENT = "tidehost-channels/1"


def new_session() -> requests.Session:
    s = requests.Session()
    # Keep requests small (idle polls count bytes) and never let a proxy transcode ranges.
    s.headers.clear()
    s.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    return s


class RequestsFetcher(FetcherInterface):
    """tuf's fetcher interface over one ``requests.Session`` with a timeout."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        self.session = session
        self.timeout = timeout

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            r = self.session.get(url, stream=True, timeout=self.timeout)
        except requests.RequestException as e:
            raise tuf_exc.DownloadError(f"{url}: {_why(e)}") from None
        if r.status_code != 200:
            r.close()
            raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {r.status_code}", r.status_code)
        return self._chunks(r, url)

    def download_bytes(self, url: str, max_length: int) -> bytes:
        try:
            return super().download_bytes(url, max_length)
        except tuf_exc.DownloadLengthMismatchError as e:  # name the file in the message
            raise tuf_exc.DownloadLengthMismatchError(f"{url}: {e}") from None

    @staticmethod
    def _chunks(r: requests.Response, url: str) -> Iterator[bytes]:
        with r:
            try:
                yield from r.iter_content(_CHUNK)
            except requests.RequestException as e:
                raise tuf_exc.DownloadError(f"{url}: {_why(e)}") from None


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
                       label: str | None = None) -> None:
    """Make ``part`` hold the first ``length`` bytes at ``url``, resuming what it has.

    Appends with an HTTP Range request when ``part`` already holds a prefix. Never writes
    past ``length``. Does not verify hashes (the caller does, before using the file).

    ``label`` names the file in error messages (default: the URL).

    Raises:
        DownloadSizeError: the server sends more than ``length`` bytes (the partial file is
            discarded) or ends short of it (the partial file is kept, to resume).
        HTTPStatusError, TransportError: the request failed; the partial file is kept.
    """
    label = label or url
    have = part.stat().st_size if part.exists() else 0
    if have > length:
        part.unlink()
        have = 0
    if have == length:
        return
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
                for chunk in r.iter_content(_CHUNK):
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
    if have < length:
        raise DownloadSizeError(
            f"{label}: response ended after {have} of {length} bytes (truncated); "
            "the next download resumes"
        )
