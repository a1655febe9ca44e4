"""Carrying out a ``plan.Plan``: fetch what is missing, then write the output, every chunk
verified against its id before one of its bytes is written.

1. Fetch: each id of ``plan.fetch_ids`` not yet in the cache is fetched with
   ``fetch(id) -> bytes`` (the ``.cacnk`` file's bytes, e.g. one static GET of
   ``<store URL>/<chunk_relpath(id)>``), ``workers`` at a time in a thread pool (``fetch``
   must then be thread-safe), decoded with the index's bounds and hashed, and only then kept
   in the cache: a ``.castr`` directory that survives restarts, so an interrupted update
   fetches only what it had not fetched yet.
2. Write, in index order: a SEED chunk is read from its seed and hashed (a seed that changed
   since it was chunked, e.g. the inactive slot being overwritten, makes that one chunk be
   fetched instead); a CACHE/FETCH chunk is read from the cache, decompressed and hashed
   again. The sha256 of everything written is computed on the way.
3. A file output is written to a temporary name and renamed only once its sha256 equals
   ``expected_sha256`` (when given); a block device (or ``in_place=True``) is written in place
   and the caller keeps it unused until it has checked it, as with the full download.
4. After success, the chunks this output used are removed from the cache.

Every error is a ``DeltaError`` (the caller's signal to fall back to the full download).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from channels.casync.index import BlobIndex, chunk_id
from channels.casync.plan import Plan, Source, Step
from channels.casync.store import ChunkStore, decode_chunk
from channels.errors import (
    AssembleOutputError,
    CasyncIndexError,
    ChunkCacheError,
    ChunkMissingError,
    ChunkVerificationError,
    DeltaError,
    SeedError,
)

log = logging.getLogger(__name__)

Fetch = Callable[[str], bytes]
"""``fetch(chunk_id)``: the chunk's ``.cacnk`` bytes as served; raises on failure."""


@dataclass(frozen=True)
class AssembleResult:
    total_bytes: int
    fetched_bytes: int  # downloaded by this run, as served (compressed)
    fetched_chunk_bytes: int  # the same chunks, uncompressed
    fetched_chunks: int
    reused_bytes: int  # of the output, taken from seeds
    cached_bytes: int  # of the output, from chunks an earlier run had fetched
    seed_misses: int  # seed chunks that no longer matched and were fetched instead
    sha256: str  # of the output's total_bytes


class _Run:
    """One execution's state: open seeds, the cache, byte counts."""

    def __init__(self, index: BlobIndex, cache: ChunkStore, fetch: Fetch | None, name: str) -> None:
        self.index, self.cache, self.fetch, self.name = index, cache, fetch, name
        self.sizes = {c.id: c.size for c in index.chunks}
        self.seeds: dict[Path, int] = {}
        self.fetched = self.fetched_raw = self.fetched_n = 0

    def close(self) -> None:
        for fd in self.seeds.values():
            os.close(fd)

    # --- fetching -----------------------------------------------------------------------

    def _call(self, cid: str) -> bytes:
        if self.fetch is None:
            raise ChunkMissingError(f"{self.name}: chunk {cid} is in no seed and nothing fetches")
        try:
            return self.fetch(cid)
        except DeltaError:
            raise
        except Exception as e:  # the caller's transport: wrapped, as tuf's fetcher does
            raise ChunkMissingError(f"{self.name}: chunk {cid}: {e}") from e

    def _keep(self, cid: str, raw: bytes) -> None:
        decode_chunk(
            raw,
            cid,
            max_size=self.index.chunk_size_max,
            size=self.sizes[cid],
            digest=self.index.digest,
            name=f"{self.name}: fetched chunk {cid}",
        )
        try:
            self.cache.put_encoded(cid, raw)
        except OSError as e:
            raise ChunkCacheError(f"{self.cache.root}: cannot keep chunk {cid} ({e})") from None
        self.fetched += self.sizes[cid]
        self.fetched_raw += len(raw)
        self.fetched_n += 1

    def fetch_all(self, ids: Iterable[str], workers: int) -> None:
        todo = [cid for cid in ids if not self.cache.has(cid)]
        if workers <= 1 or len(todo) <= 1:
            for cid in todo:
                self._keep(cid, self._call(cid))
            return
        error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(self._call, cid): cid for cid in todo}
            for fut in as_completed(futures):
                try:
                    self._keep(futures[fut], fut.result())
                except BaseException as e:  # noqa: BLE001 - re-raised below, once
                    if error is None:  # stop what has not started; keep what still arrives
                        error = e  # (a corrupt chunk too: the rest are not fetched for nothing)
                        for f in futures:
                            f.cancel()
        if error is not None:
            raise error

    # --- reading a step's bytes ------------------------------------------------------------

    def from_cache(self, cid: str) -> bytes:
        """The cached chunk, verified; one that vanished or rotted there is fetched again."""
        for attempt in (1, 2):
            try:
                return self.cache.get(
                    cid,
                    max_size=self.index.chunk_size_max,
                    size=self.sizes[cid],
                    digest=self.index.digest,
                )
            except (ChunkMissingError, ChunkVerificationError) as e:
                if attempt == 2 or self.fetch is None:
                    raise
                log.warning("%s: cached chunk unusable (%s); fetching it again", self.name, e)
                self.cache.remove(cid)
                self.fetch_all([cid], 1)
        raise AssertionError("unreachable")

    def from_seed(self, step: Step) -> bytes | None:
        """The seed's bytes for this step if they still hash to its id, else None."""
        loc = step.seed
        assert loc is not None
        try:
            fd = self.seeds.get(loc.path)
            if fd is None:
                fd = self.seeds[loc.path] = os.open(loc.path, os.O_RDONLY | os.O_CLOEXEC)
            data = os.pread(fd, loc.size, loc.offset)
        except OSError as e:
            raise SeedError(f"{loc.path}: cannot read the seed ({e.strerror})") from None
        if len(data) == step.chunk.size and chunk_id(data, self.index.digest) == step.chunk.id:
            return data
        log.info("%s: seed chunk at %s+%d changed; fetching it", self.name, loc.path, loc.offset)
        return None


def execute(
    plan: Plan,
    index: BlobIndex,
    output: Path,
    *,
    cache: ChunkStore,
    fetch: Fetch | None = None,
    workers: int = 4,
    expected_sha256: str | None = None,
    in_place: bool | None = None,
    clean_cache: bool = True,
    name: str = "",
) -> AssembleResult:
    """Assemble ``index`` into ``output`` by ``plan`` (see the module docstring).

    ``in_place`` None: in place for a block device, through a temporary file otherwise.
    ``clean_cache`` False keeps the used chunks in the cache (several outputs sharing one
    cache: the caller clears it after the last).
    ``name`` (e.g. the index's target path) heads every error and log line.

    Raises:
        DeltaError: ChunkMissingError, ChunkVerificationError, SeedError, ChunkCacheError,
            AssembleOutputError, or CasyncIndexError if the result's sha256 is not
            ``expected_sha256``. Nothing unverified has been written by then.
    """
    name = name or str(output)
    output = Path(output)
    if in_place is None:
        in_place = output.exists() and stat.S_ISBLK(output.stat().st_mode)
    run = _Run(index, cache, fetch, name)
    target = output if in_place else output.with_name(f".{output.name}.{secrets.token_hex(4)}.part")
    try:
        run.fetch_all(plan.fetch_ids, workers)
        sha, missed = _write(run, plan, target, in_place, expected_sha256)
        if not in_place:
            _rename(target, output)
    finally:
        run.close()
        if not in_place:
            target.unlink(missing_ok=True)
    if clean_cache:
        for cid in {s.chunk.id for s in plan.steps if s.source is not Source.SEED}:
            cache.remove(cid)
    result = AssembleResult(
        total_bytes=plan.total_bytes,
        fetched_bytes=run.fetched_raw,
        fetched_chunk_bytes=run.fetched,
        fetched_chunks=run.fetched_n,
        reused_bytes=plan.seed_bytes - sum(missed),
        cached_bytes=plan.cache_bytes,
        seed_misses=len(missed),
        sha256=sha,
    )
    log.info(
        "%s: assembled %d bytes: %d fetched (%d on the wire), %d from seeds, %d cached",
        name,
        result.total_bytes,
        result.fetched_chunk_bytes,
        result.fetched_bytes,
        result.reused_bytes,
        result.cached_bytes,
    )
    return result


def _write(
    run: _Run, plan: Plan, target: Path, in_place: bool, expected_sha256: str | None
) -> tuple[str, list[int]]:
    """Write every step to ``target``; return the sha256 written and the missed seed sizes."""
    flags = os.O_WRONLY | os.O_CLOEXEC | (0 if in_place else os.O_CREAT | os.O_EXCL)
    try:
        fd = os.open(target, flags, 0o644)
    except OSError as e:
        raise AssembleOutputError(f"{target}: cannot open for writing ({e.strerror})") from None
    sha = hashlib.sha256()
    missed: list[int] = []
    try:
        if in_place and (room := os.lseek(fd, 0, os.SEEK_END)) < plan.total_bytes:
            if stat.S_ISBLK(os.fstat(fd).st_mode):
                raise AssembleOutputError(
                    f"{target}: {room} bytes, too small for {plan.total_bytes}"
                )
        for step in plan.steps:
            data = run.from_seed(step) if step.source is Source.SEED else None
            if step.source is Source.SEED and data is None:
                missed.append(step.chunk.size)
                run.fetch_all([step.chunk.id], 1)
            if data is None:
                data = run.from_cache(step.chunk.id)
            _pwrite_all(fd, data, step.chunk.offset, target)
            sha.update(data)
        try:
            if not in_place:
                os.ftruncate(fd, plan.total_bytes)
            os.fsync(fd)
        except OSError as e:
            raise AssembleOutputError(f"{target}: cannot sync ({e.strerror})") from None
    finally:
        os.close(fd)
    if expected_sha256 is not None and sha.hexdigest() != expected_sha256:
        raise CasyncIndexError(
            f"{run.name}: assembles to sha256 {sha.hexdigest()[:12]}…, "
            f"the signed file has {expected_sha256[:12]}…"
        )
    return sha.hexdigest(), missed


def _pwrite_all(fd: int, data: bytes, offset: int, target: Path) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    except OSError as e:
        raise AssembleOutputError(f"{target}: write failed ({e.strerror})") from None


def _rename(tmp: Path, output: Path) -> None:
    try:
        os.replace(tmp, output)
    except OSError as e:
        raise AssembleOutputError(f"{output}: cannot rename the assembled file ({e})") from None
