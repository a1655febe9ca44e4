"""``channel mirror``: a verified, resumable copy of a served repository for an air-gapped site.

``mirror(url, dest, root_json, channels)`` makes ``dest`` a directory shaped like a
repository: ``dest/published/`` is what any static web server serves as is (or ``tidehost
channel serve DEST``), with the upstream's own signed metadata, so the hosts there trust the
very same ``root.json``::

  tidehost-mirror.json  marks a mirror (upstream URL, channels); never served
  state/           the mirror's own state, never served: trusted metadata per channel (a
                   rollback of the upstream is caught across runs) and partial downloads
  published/
    metadata/      N.root.json from the given root's version on (each checked against the
                   one before, as TUF does), root.json, N.snapshot.json, N.targets.json,
                   N.<channel>.json, and timestamp.json, written last
    targets/       for each mirrored channel: its current index.json and the files and
                   ``.caibx`` indexes of every release it lists that is not pulled (a pulled
                   release is never offered), at the spec path and the flat one
    chunks.castr/  every chunk those indexes name

Everything is verified before it is placed: metadata by the TUF client (``ChannelClient``),
targets against their signed length and sha256, chunks against their ids with the index's
bounds. A second run fetches only what is new (metadata, the new targets and chunks);
an interrupted one resumes (partial targets, chunks already stored). Targets already in
``published/`` are taken as they are if their size is right (verified when placed).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Root, TargetFile

from channels.bundle import CHANNELS
from channels.casync.index import BlobIndex
from channels.casync.store import ChunkStore, decode_chunk
from channels.chunkfetch import ChunkFetcher
from channels.client import ChannelClient
from channels.errors import ChannelError, MetadataVerificationError, StateError
from channels.fetch import DEFAULT_MIN_RATE
from channels.index import check_channel, index_path
from channels.layout import MIRROR_CONFIG, STORE, atomic_write, link, target_url_path

log = logging.getLogger(__name__)
STATE = "state"
_ROOT_MAX = 512_000
_ROUNDS = 3


@dataclass
class MirrorStats:
    releases: int = 0
    targets_fetched: int = 0
    target_bytes_fetched: int = 0
    targets_present: int = 0
    chunks_fetched: int = 0
    chunk_bytes_fetched: int = 0
    chunks_present: int = 0
    metadata_written: int = 0

    def summary(self) -> str:
        return (f"{self.releases} releases: {self.targets_fetched} targets fetched "
                f"({self.target_bytes_fetched} bytes), {self.targets_present} already here; "
                f"{self.chunks_fetched} chunks fetched ({self.chunk_bytes_fetched} bytes), "
                f"{self.chunks_present} already here; {self.metadata_written} metadata files")


class _Mirror:
    def __init__(self, url: str, dest: Path, root: bytes, channels: Sequence[str],
                 timeout: float, min_rate: float, workers: int) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.dest, self.root, self.workers = Path(dest), root, workers
        self.timeout, self.min_rate = timeout, min_rate
        self.channels = [check_channel(c) for c in channels]
        self.state = self.dest / STATE
        self.pub = self.dest / "published"
        self.store = ChunkStore(self.pub / STORE)
        self.stats = MirrorStats()
        self.clients: dict[str, ChannelClient] = {}

    def client(self, chan: str) -> ChannelClient:
        if chan not in self.clients:
            self.clients[chan] = ChannelClient(self.url, chan, self.state / chan, self.root,
                                               timeout=self.timeout, min_rate=self.min_rate)
        return self.clients[chan]

    # --- metadata -------------------------------------------------------------------------

    def _put_metadata(self, name: str, data: bytes, *, replace: bool = False) -> None:
        path = self.pub / "metadata" / name
        if path.is_file() and (not replace or path.read_bytes() == data):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        self.stats.metadata_written += 1

    def roots(self, client: ChannelClient) -> None:
        """N.root.json from the given root on, each verified against the one before."""
        trusted, newest = Metadata[Root].from_bytes(self.root), self.root
        self._put_metadata(f"{trusted.signed.version}.root.json", self.root)
        fetcher = client._fetcher  # noqa: SLF001 - the same bounded fetcher as TUF's
        while True:
            n = trusted.signed.version + 1
            url = f"{self.url}metadata/{n}.root.json"
            try:
                data = fetcher.download_bytes(url, _ROOT_MAX)
            except tuf_exc.DownloadHTTPError as e:
                if e.status_code in (403, 404):
                    break
                raise ChannelError(f"{url}: {e}") from None
            except tuf_exc.DownloadError as e:
                raise ChannelError(f"{url}: {e}") from None
            try:
                new = Metadata[Root].from_bytes(data)
                trusted.signed.verify_delegate(Root.type, new)
                new.signed.verify_delegate(Root.type, new)
            except Exception as e:  # noqa: BLE001 - any doubt about a root is fatal here
                raise MetadataVerificationError(f"{url}: not a root signed by the one "
                                                f"before it ({e})") from None
            if new.signed.version != n:
                raise MetadataVerificationError(f"{url}: is root version {new.signed.version}")
            self._put_metadata(f"{n}.root.json", data)
            trusted, newest = new, data
        self._put_metadata("root.json", newest, replace=True)

    def role_files(self, client: ChannelClient, chan: str) -> None:
        """The versioned role files this client verified, by their published names."""
        md = client.state_dir / "metadata"
        for role in ("snapshot", "targets", chan):
            data = (md / f"{role}.json").read_bytes()
            version = Metadata.from_bytes(data).signed.version
            self._put_metadata(f"{version}.{role}.json", data)

    def consistent(self) -> bool:
        """Whether the newest verified snapshot's roles are all in ``dest``."""
        md = self.clients[self.channels[-1]].state_dir / "metadata"
        snap = Metadata.from_bytes((md / "snapshot.json").read_bytes()).signed
        names = [f"{snap.version}.snapshot.json"] + [
            f"{snap.meta[f'{r}.json'].version}.{r}.json" for r in ("targets", *self.channels)]
        return all((self.pub / "metadata" / n).is_file() for n in names)

    # --- targets and chunks ------------------------------------------------------------------

    def target(self, client: ChannelClient, tf: TargetFile) -> Path:
        sha = tf.hashes["sha256"]
        path = self.pub / "targets" / target_url_path(sha, tf.path)
        flat = self.pub / "targets" / f"{sha}.{tf.path.rsplit('/', 1)[-1]}"
        have = next((p for p in (path, flat) if p.is_file() and p.stat().st_size == tf.length),
                    None)
        if have is None:
            got = client.fetch_target(tf)  # resumable, verified, into the state directory
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, path)
            self.stats.targets_fetched += 1
            self.stats.target_bytes_fetched += tf.length
            have = path
        else:
            self.stats.targets_present += 1
        for p in (path, flat):
            if p != have:
                link(have, p)
        return path

    def chunks(self, index_file: Path, tf: TargetFile) -> None:
        index = BlobIndex.read(index_file, max_bytes=tf.length)
        sizes = {c.id: c.size for c in index.chunks}
        missing = [cid for cid in sizes if not self.store.has(cid)]
        self.stats.chunks_present += len(sizes) - len(missing)
        if not missing:
            return
        fetch = ChunkFetcher(f"{self.url}{STORE}/", sizes, timeout=self.timeout,
                             min_rate=self.min_rate)
        try:
            with ThreadPoolExecutor(self.workers) as pool:
                futures = {pool.submit(fetch, cid): cid for cid in missing}
                try:
                    for fut in as_completed(futures):
                        cid, raw = futures[fut], fut.result()
                        decode_chunk(raw, cid, max_size=index.chunk_size_max, size=sizes[cid],
                                     digest=index.digest, name=f"{fetch.store_url}{cid}")
                        self.store.put_encoded(cid, raw)
                        self.stats.chunks_fetched += 1
                        self.stats.chunk_bytes_fetched += len(raw)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
                finally:
                    self.store.commit()  # what was verified stays: the next run resumes
        finally:
            fetch.close()

    def channel(self, chan: str) -> None:
        client = self.client(chan)
        index = client.refresh()
        itf = client.target(index_path(chan)) if index.releases else None
        if itf is not None:
            self.target(client, itf)
        for rel in index.releases:
            if rel.pulled:
                continue
            self.stats.releases += 1
            for path in rel.files.values():
                self.target(client, client.target(path))
            for path in rel.indexes.values():
                tf = client.target(path)
                self.chunks(self.target(client, tf), tf)
        self.role_files(client, chan)

    def run(self) -> MirrorStats:
        self.dest.mkdir(parents=True, exist_ok=True)
        marker = {"kind": "tidehost-channel-mirror", "format": 1, "url": self.url,
                  "channels": self.channels}
        atomic_write(self.dest / MIRROR_CONFIG, (json.dumps(marker, indent=2) + "\n").encode())
        self.roots(self.client(self.channels[0]))
        for _ in range(_ROUNDS):
            for chan in self.channels:
                self.channel(chan)
            if self.consistent():
                break
            log.info("mirror: the upstream changed while mirroring; once more")
        else:
            raise StateError(f"{self.url}: the repository kept changing; mirror again later")
        md = self.clients[self.channels[-1]].state_dir / "metadata"
        self._put_metadata("timestamp.json", (md / "timestamp.json").read_bytes(), replace=True)
        log.info("mirror of %s in %s: %s", self.url, self.dest, self.stats.summary())
        return self.stats


def mirror(url: str, dest: Path, root_json: Path | bytes, channels: Sequence[str] = CHANNELS,
           *, timeout: float = 30.0, min_rate: float = DEFAULT_MIN_RATE,
           workers: int = 4) -> MirrorStats:
    """Mirror ``channels`` of the repository served at ``url`` into ``dest``.

    Raises:
        VerificationError, TransportError: as ``ChannelClient`` (nothing unverified is
            placed; timestamp.json is only switched once the rest is in place).
        StateError: ``dest`` cannot be written.
    """
    root = root_json if isinstance(root_json, bytes) else Path(root_json).read_bytes()
    try:
        return _Mirror(url, dest, root, channels, timeout, min_rate, workers).run()
    except OSError as e:
        raise StateError(f"{e.filename or dest}: {e.strerror or e}") from None
