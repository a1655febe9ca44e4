"""Fetching chunks from a served ``.castr`` store: one static GET per chunk.

``ChunkFetcher(store_url, sizes)`` is the ``fetch(chunk_id) -> bytes`` that
``channels.casync.assemble.execute`` calls from its worker threads (a few in parallel): it
GETs ``<store_url>/<4 hex>/<id>.cacnk`` and returns the bytes as served, which the caller
decodes and checks against the id before keeping them. Bounds, as for every other fetch
(``channels.fetch``): a response is never read past the most a zstd frame of that chunk's
size can take (``encoded_size_bound`` of the size the index gives it, itself at most the
index's maximum), and the whole response must arrive within ``timeout + bound / min_rate``
seconds. Each thread has its own ``requests`` session (keep-alive, no sharing).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import requests

from channels.casync.store import chunk_relpath, encoded_size_bound
from channels.errors import (
    ChunkMissingError,
    DownloadSizeError,
    HTTPStatusError,
    SlowRetrievalError,
    TransportError,
)
from channels.fetch import DEFAULT_MIN_RATE, Deadline, _why, body, deadline_seconds, new_session


class ChunkFetcher:
    """``fetch(cid)`` for the chunks of one index (``sizes``: id -> uncompressed size)."""

    def __init__(self, store_url: str, sizes: Mapping[str, int], *, timeout: float = 30.0,
                 min_rate: float = DEFAULT_MIN_RATE) -> None:
        self.store_url = store_url if store_url.endswith("/") else store_url + "/"
        self.sizes = sizes
        self.timeout = timeout
        self.min_rate = min_rate
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = new_session()
            with self._lock:
                self._sessions.append(s)
        return s

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()

    def __call__(self, cid: str) -> bytes:
        """The chunk's bytes as served (compressed; not yet checked against its id).

        Raises:
            ChunkMissingError: the store has no such chunk (404), or no store is there.
            DownloadSizeError: the response is larger than a chunk of that size can be.
            SlowRetrievalError, HTTPStatusError, TransportError: the fetch failed.
        """
        url = self.store_url + chunk_relpath(cid)
        bound = encoded_size_bound(self.sizes[cid])
        with Deadline(deadline_seconds(bound, self.timeout, self.min_rate)) as d:
            try:
                data = self._get(url, bound)
            except TransportError as e:
                if d.expired and not isinstance(e, (HTTPStatusError, DownloadSizeError)):
                    raise SlowRetrievalError(f"{url}: not served within {d.seconds:.0f} s "
                                             "(slow retrieval)") from None
                raise
        if d.expired:  # cut off: what arrived is not the chunk
            raise SlowRetrievalError(f"{url}: not served within {d.seconds:.0f} s (slow retrieval)")
        return data

    def _get(self, url: str, bound: int) -> bytes:
        try:
            r = self._session().get(url, stream=True, timeout=self.timeout)
        except requests.RequestException as e:
            raise TransportError(f"{url}: {_why(e)}") from None
        with r:
            if r.status_code == 404:
                raise ChunkMissingError(f"{url}: not in the chunk store (HTTP 404)")
            if r.status_code != 200:
                raise HTTPStatusError(f"{url}: HTTP {r.status_code}", r.status_code)
            announced = r.headers.get("Content-Length")
            if announced is not None and announced.isdigit() and int(announced) > bound:
                raise DownloadSizeError(f"{url}: announces {announced} bytes, more than a "
                                        f"chunk of its size can take ({bound})")
            parts: list[bytes] = []
            got = 0
            try:
                for block in body(r):
                    got += len(block)
                    if got > bound:
                        raise DownloadSizeError(f"{url}: more than the {bound} bytes a chunk "
                                                "of its size can take (endless data)")
                    parts.append(block)
            except requests.RequestException as e:
                raise TransportError(f"{url}: interrupted after {got} bytes ({_why(e)})") from None
        return b"".join(parts)
