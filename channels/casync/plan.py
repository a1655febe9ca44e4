"""Planning an assembly, with no I/O: which chunk of an index comes from where.

Each chunk of the index, in order, is taken from the first seed that has it (seeds in the
caller's order: the active slot first), else from the local chunk cache (fetched by an earlier,
interrupted run), else fetched; a chunk id that occurs several times is fetched once (its
later steps are FETCH steps too, written from the cache the fetch filled).
``assemble.execute`` carries a plan out.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from channels.casync.index import BlobIndex, IndexChunk
from channels.casync.seed import SeedChunk, SeedIndex
from channels.errors import CasyncIndexError, ChunkParamsError


class Source(enum.Enum):
    SEED = "seed"
    CACHE = "cache"
    FETCH = "fetch"


@dataclass(frozen=True)
class Step:
    """Write ``chunk`` at its offset, taking it from ``source`` (``seed`` for SEED)."""

    chunk: IndexChunk
    source: Source
    seed: SeedChunk | None = None


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    fetch_ids: tuple[str, ...]  # unique, in order of first use
    total_bytes: int
    seed_bytes: int  # of the output, taken from seeds
    cache_bytes: int  # of the output, taken from chunks the cache held before this run
    fetch_bytes: int  # to download: uncompressed, each id once (a repeated chunk is
    #                   fetched once and written from the cache again: FETCH steps)

    @property
    def fetch_fraction(self) -> float:
        return self.fetch_bytes / self.total_bytes if self.total_bytes else 0.0


def plan_assembly(
    index: BlobIndex,
    seeds: Sequence[SeedIndex],
    cached: Collection[str] = (),
    *,
    name: str = "index",
    expected_size: int | None = None,
) -> Plan:
    """The plan for ``index`` from ``seeds`` and the ids in the cache.

    Raises:
        CasyncIndexError: the index's size differs from ``expected_size`` (the signed length
            of the file it stands for).
        ChunkParamsError: a seed was chunked with other sizes or another digest than the index.
    """
    if expected_size is not None and index.total_size != expected_size:
        raise CasyncIndexError(
            f"{name}: describes {index.total_size} bytes, the signed file has {expected_size}"
        )
    for s in seeds:
        if s.params != index.params or s.digest != index.digest:
            raise ChunkParamsError(
                f"{s.path}: seed chunked with {s.params} ({s.digest}), {name} uses "
                f"{index.params} ({index.digest})"
            )
    steps: list[Step] = []
    fetch: dict[str, int] = {}
    for chunk in index.chunks:
        found = next((s.chunks[chunk.id] for s in seeds if chunk.id in s.chunks), None)
        if found is not None and found.size == chunk.size:
            steps.append(Step(chunk, Source.SEED, found))
        elif chunk.id in cached:
            steps.append(Step(chunk, Source.CACHE))
        else:
            steps.append(Step(chunk, Source.FETCH))
            fetch.setdefault(chunk.id, chunk.size)
    return Plan(
        tuple(steps),
        tuple(fetch),
        index.total_size,
        seed_bytes=sum(s.chunk.size for s in steps if s.source is Source.SEED),
        cache_bytes=sum(s.chunk.size for s in steps if s.source is Source.CACHE),
        fetch_bytes=sum(fetch.values()),
    )
