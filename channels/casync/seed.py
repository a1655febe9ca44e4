"""Seeds: bytes a host already has (its active /usr device, the stale inactive slot, an old
image file), re-chunked with an index's chunker parameters, as ``casync extract --seed``.

Reuse only happens where the seed's chunk boundaries equal the index's, which is why the
chunker is casync's, bit for bit, and why a seed is chunked with the index's own min/avg/max.
A seed is opened read-only. Bytes taken from a seed are verified again when used (``assemble``):
the map says where a chunk was, not that it is still there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from channels.casync.chunker import ChunkerParams, Cutter
from channels.casync.index import BlobIndex
from channels.casync.make import index_blob
from channels.errors import SeedError


@dataclass(frozen=True)
class SeedChunk:
    """Where a chunk's bytes were found: a seed path, an offset in it, a size."""

    path: Path
    offset: int
    size: int


@dataclass(frozen=True)
class SeedIndex:
    """A seed chunked with ``params``: chunk id -> its first location in the seed."""

    path: Path
    params: ChunkerParams
    digest: str
    size: int
    chunks: Mapping[str, SeedChunk]


def index_seed(
    path: Path, params: ChunkerParams, *, size: int | None = None, cutter: Cutter | None = None
) -> SeedIndex:
    """Chunk a seed file or block device (its first ``size`` bytes if given).

    ``size`` helps with a slot device bigger than the image it holds: chunking just the old
    image's length gives exactly the old image's chunks, and stops at its end.

    Raises:
        SeedError: the seed cannot be opened or read (one line naming it).
    """
    path = Path(path)
    try:
        index = index_blob(path, params, cutter=cutter, size=size)
    except OSError as e:
        raise SeedError(f"{path}: cannot read the seed ({e.strerror or e})") from None
    return seed_from_index(path, index)


def seed_from_index(path: Path, index: BlobIndex) -> SeedIndex:
    """A seed whose index is known already (e.g. the installed release's own ``.caibx`` for
    the active slot): no chunking. Safe, as every seed chunk is hashed again when used."""
    chunks: dict[str, SeedChunk] = {}
    for c in index.chunks:
        chunks.setdefault(c.id, SeedChunk(Path(path), c.offset, c.size))
    return SeedIndex(Path(path), index.params, index.digest, index.total_size, chunks)
