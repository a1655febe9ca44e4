"""The delta download: a release assembled from what a host has, plus the chunks it lacks.

One function, ``download``, used by the agent (seeds: its slots and ESP files) and by
``tidehost channel check --download DIR --seed FILE`` alike. For each file of the offer:

- usr.img, vmlinuz, initrd, when the release lists their ``.caibx`` index: fetch the index
  as a target (its signed length and sha256 checked: ``ChannelClient.fetch_target``), check
  that it describes exactly the file's signed length, chunk the seeds with the index's own
  chunker parameters, plan (``casync.plan``), fetch only the chunks neither a seed nor the
  chunk cache has (``ChunkFetcher``: static GETs of ``<base>/chunks.castr/...``, a few in
  parallel, each bounded and under a deadline), and assemble (``casync.assemble``: every
  chunk checked against its id before it is written, the whole file against its signed
  sha256 before it is renamed into the client's cache);
- usr.verity, when the release publishes its tree's parameters (``Offer.verity``): rebuilt
  from the assembled usr.img (``chunking.rebuild_tree``); kept only if it gives the signed
  root hash and the signed sha256;
- anything else, and any of the above on ANY failure (a missing or corrupt chunk, a missing
  store, an index that disagrees with its signed length, a seed that cannot be read, ...):
  one log line, then the full file (``ChannelClient.fetch_target``).

Then ``ChannelClient.finish`` checks the manifest and moves the verified files into
``dest_dir`` exactly as a full download does: nothing unverified ever reaches it.

Chunks fetched are kept in ``<state_dir>/chunks`` (a ``.castr`` directory, each verified
again when used) across restarts, so an interrupted update fetches only what it had not yet;
the cache is emptied once a release is downloaded. One journal line per file says how it
came (delta, rebuilt or full) and how many bytes were fetched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from channels.casync.assemble import execute
from channels.casync.chunker import ChunkerParams
from channels.casync.index import BlobIndex
from channels.casync.plan import plan_assembly
from channels.casync.seed import SeedIndex, index_seed
from channels.casync.store import ChunkStore
from channels.chunkfetch import ChunkFetcher
from channels.chunking import rebuild_tree
from channels.client import ChannelClient, Offer, OfferedFile
from channels.errors import CasyncIndexError, ChannelError, VerityError
from channels.layout import STORE, atomic_write

log = logging.getLogger(__name__)
DEFAULT_WORKERS = 4
CACHE_DIR = "chunks"
FULL_ABOVE = 0.9
"""A file whose seeds give less than a tenth of it comes whole: one resumable GET instead
of thousands of chunk GETs for the same bytes."""


@dataclass(frozen=True)
class SeedSource:
    """Bytes a host has: a file or a block device, its first ``size`` bytes if given (a slot
    device is larger than the image it holds)."""

    path: Path
    size: int | None = None


@dataclass(frozen=True)
class FileReport:
    name: str
    method: str  # "delta", "rebuilt" or "full"
    size: int  # the file's signed length
    fetched_bytes: int  # over the network for it now (index + chunks, or the file)
    reused_bytes: int = 0  # taken from seeds
    cached_bytes: int = 0  # from chunks an earlier, interrupted run fetched
    reason: str = ""  # why the full file, if so

    def line(self) -> str:
        if self.method == "full":
            why = f": {self.reason}" if self.reason else ""
            return f"{self.name}: full download, {self.fetched_bytes} of {self.size} bytes{why}"
        if self.method == "rebuilt":
            return f"{self.name}: rebuilt from usr.img, 0 of {self.size} bytes fetched"
        return (f"{self.name}: delta, {self.fetched_bytes} of {self.size} bytes fetched, "
                f"{self.reused_bytes} reused from seeds"
                + (f", {self.cached_bytes} fetched earlier" if self.cached_bytes else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "size": self.size, "fetched_bytes": self.fetched_bytes,
                "reused_bytes": self.reused_bytes, "cached_bytes": self.cached_bytes,
                "reason": self.reason}


@dataclass(frozen=True)
class DeltaReport:
    files: tuple[FileReport, ...]
    seconds: float = 0.0

    @property
    def full_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def fetched_bytes(self) -> int:
        return sum(f.fetched_bytes for f in self.files)

    @property
    def reused_bytes(self) -> int:
        return sum(f.reused_bytes for f in self.files)

    def summary(self) -> str:
        pct = 100 * self.fetched_bytes / self.full_bytes if self.full_bytes else 0.0
        return (f"fetched {self.fetched_bytes} of {self.full_bytes} bytes ({pct:.2f}%), "
                f"{self.reused_bytes} reused")

    def to_dict(self) -> dict[str, Any]:
        return {"fetched_bytes": self.fetched_bytes, "reused_bytes": self.reused_bytes,
                "full_bytes": self.full_bytes, "seconds": round(self.seconds, 3),
                "files": {f.name: f.to_dict() for f in self.files}}


class _Seeds:
    """The seeds, each chunked once per chunker parameters (all files share them)."""

    def __init__(self, sources: Sequence[SeedSource]) -> None:
        self.sources = tuple(sources)
        self._done: dict[tuple[Path, int | None, ChunkerParams], SeedIndex] = {}

    def indexed(self, params: ChunkerParams) -> list[SeedIndex]:
        out = []
        for s in self.sources:
            key = (Path(s.path), s.size, params)
            if key not in self._done:
                self._done[key] = index_seed(Path(s.path), params, size=s.size)
            out.append(self._done[key])
        return out


class _Whole(Exception):
    """Not a failure: the full file is the better download."""


class _Run:
    def __init__(self, client: ChannelClient, offer: Offer, seeds: Sequence[SeedSource],
                 workers: int) -> None:
        self.client, self.offer, self.workers = client, offer, workers
        self.seeds = _Seeds(seeds)
        self.cache = ChunkStore(client.state_dir / CACHE_DIR, durable=False)
        self.index_files: list[Path] = []

    def delta(self, f: OfferedFile, tf: TargetFile) -> tuple[Path, FileReport]:
        itf = self.client.target(self.offer.indexes[f.name])
        cached_before = self.client.cached_path(itf).exists()
        ipath = self.client.fetch_target(itf)
        self.index_files.append(ipath)
        index = BlobIndex.read(ipath, max_bytes=itf.length)
        if index.total_size != tf.length:
            raise CasyncIndexError(f"{itf.path}: describes {index.total_size} bytes, the "
                                   f"signed {f.target} has {tf.length}")
        seeds = self.seeds.indexed(index.params)
        plan = plan_assembly(index, seeds, set(self.cache.ids()), name=itf.path,
                             expected_size=tf.length)
        if plan.total_bytes and plan.fetch_fraction > FULL_ABOVE:
            raise _Whole(f"the seeds hold {100 * (1 - plan.fetch_fraction):.0f}% of it")
        fetcher = ChunkFetcher(f"{self.client.base_url}{STORE}/",
                               {c.id: c.size for c in index.chunks},
                               timeout=self.client.timeout, min_rate=self.client.min_rate)
        out = self.client.cached_path(tf)
        try:
            result = execute(plan, index, out, cache=self.cache, fetch=fetcher,
                             workers=self.workers, expected_sha256=tf.hashes["sha256"],
                             in_place=False, clean_cache=False, name=f.target)
        finally:
            fetcher.close()
        fetched = result.fetched_bytes + (0 if cached_before else itf.length)
        return out, FileReport(f.name, "delta", tf.length, fetched, result.reused_bytes,
                               result.cached_bytes)

    def rebuild(self, f: OfferedFile, tf: TargetFile, usr_img: Path) -> tuple[Path, FileReport]:
        assert self.offer.verity is not None
        raw, root = rebuild_tree(usr_img, self.offer.verity, tf.length)
        if root != self.offer.manifest.roothash:
            raise VerityError(f"{f.target}: rebuilt tree has root hash {root[:12]}…, the "
                              f"release's is {self.offer.manifest.roothash[:12]}…")
        out = self.client.cached_path(tf)
        atomic_write(out, raw)
        if not self.client.verifies(tf, out):
            out.unlink(missing_ok=True)
            raise VerityError(f"{f.target}: rebuilt tree differs from the signed file")
        return out, FileReport(f.name, "rebuilt", tf.length, 0)

    def full(self, f: OfferedFile, tf: TargetFile, reason: str,
             step: Callable[[int], None]) -> tuple[Path, FileReport]:
        cached_before = self.client.cached_path(tf).exists()
        path = self.client.fetch_target(tf, step)
        return path, FileReport(f.name, "full", tf.length, 0 if cached_before else tf.length,
                                reason=reason)


def _order(files: Sequence[OfferedFile]) -> list[OfferedFile]:
    """usr.img before usr.verity (rebuilt from it); otherwise the offer's order."""
    return sorted(files, key=lambda f: f.name == "usr.verity")


def download(client: ChannelClient, offer: Offer, dest_dir: Path,
             seeds: Sequence[SeedSource] = (), *, workers: int = DEFAULT_WORKERS,
             progress: Callable[[int, int], None] | None = None) -> tuple[Path, DeltaReport]:
    """Download ``offer`` into ``dest_dir`` as ``ChannelClient.download`` does, taking what
    it can from ``seeds`` and the release's chunks (see the module docstring).

    Returns the bundle's path and what came how.

    Raises:
        as ``ChannelClient.download``: only what the full download of a file raises; a
        failure of the delta path is a log line and that file's full download.
    """
    started = time.monotonic()
    client.target(offer.files[0].target)  # refreshes first if this client has not yet
    client.prune_partials(offer)
    run = _Run(client, offer, seeds, workers)
    total, done = offer.size, 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    verified: dict[str, Path] = {}
    reports: dict[str, FileReport] = {}
    for f in _order(offer.files):
        tf = client.offered_target(f)
        reason = ""
        try:
            if f.name in offer.indexes:
                verified[f.name], reports[f.name] = run.delta(f, tf)
            elif f.name == "usr.verity" and offer.verity is not None and "usr.img" in verified:
                verified[f.name], reports[f.name] = run.rebuild(f, tf, verified["usr.img"])
        except _Whole as e:
            reason = str(e)
        except (ChannelError, OSError, ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("%s: delta path failed (%s); downloading the full file", f.target,
                        reason)
        if f.name not in verified:
            verified[f.name], reports[f.name] = run.full(f, tf, reason, step)
        else:
            step(tf.length)
        log.info("%s %s", offer.version, reports[f.name].line())
    path = client.finish(offer, verified, Path(dest_dir))
    for cid in list(run.cache.ids()):  # the release is here: the cache has served its turn
        run.cache.remove(cid)
    for p in run.index_files:
        p.unlink(missing_ok=True)
    report = DeltaReport(tuple(reports[f.name] for f in offer.files), time.monotonic() - started)
    log.info("%s: %s", offer.version, report.summary())
    return path, report
