"""``casync make`` for a blob: chunk a file, index it, and (optionally) store its chunks.

The publisher calls ``make_blob`` for usr.img, the kernel and the initrd with one shared
``ChunkStore``; a chunk already in the store is not written again. ``seed`` uses
``index_blob`` (no store) to re-chunk what a host already has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from channels.casync.chunker import DEFAULT_PARAMS, ChunkerParams, Cutter, iter_chunks
from channels.casync.index import CASYNC_MAKE_FLAGS, BlobIndex, IndexChunk, chunk_id
from channels.casync.store import ZSTD_LEVEL, ChunkStore


@dataclass(frozen=True)
class MakeStats:
    """What ``make_blob`` did: chunks in the index, and what was new to the store."""

    chunks: int
    total_bytes: int
    new_chunks: int
    new_chunk_bytes: int  # uncompressed
    stored_bytes: int  # compressed, written to the store


def index_stream(
    f: BinaryIO,
    params: ChunkerParams = DEFAULT_PARAMS,
    *,
    store: ChunkStore | None = None,
    cutter: Cutter | None = None,
    size: int | None = None,
    level: int = ZSTD_LEVEL,
) -> tuple[BlobIndex, MakeStats]:
    """Chunk a stream (its first ``size`` bytes if given) into an index; store new chunks
    (committed to a durable store before this returns, discarded if it raises).

    OSError of the stream or the store propagates: the caller names what failed.
    """
    chunks: list[IndexChunk] = []
    new = new_bytes = stored = 0
    try:
        for offset, data in iter_chunks(f, params, cutter=cutter, size=size):
            cid = chunk_id(data)
            chunks.append(IndexChunk(offset, len(data), cid))
            if store is not None:
                written = store.put(cid, data, level=level)
                if written:
                    new, new_bytes, stored = new + 1, new_bytes + len(data), stored + written
        if store is not None:
            store.commit()
    except BaseException:
        if store is not None:
            store.discard()
        raise
    index = BlobIndex.build(params, chunks, CASYNC_MAKE_FLAGS)
    return index, MakeStats(len(chunks), index.total_size, new, new_bytes, stored)


def make_blob(
    path: Path,
    store: ChunkStore | None,
    params: ChunkerParams = DEFAULT_PARAMS,
    *,
    cutter: Cutter | None = None,
    level: int = ZSTD_LEVEL,
) -> tuple[BlobIndex, MakeStats]:
    """``casync make --store=STORE --chunk-size=PARAMS x.caibx PATH``, minus writing x.caibx
    (``BlobIndex.write`` does that, wherever the caller wants it)."""
    with open(path, "rb") as f:
        return index_stream(f, params, store=store, cutter=cutter, level=level)


def index_blob(
    path: Path,
    params: ChunkerParams = DEFAULT_PARAMS,
    *,
    cutter: Cutter | None = None,
    size: int | None = None,
) -> BlobIndex:
    """The index of a file or block device (its first ``size`` bytes if given), nothing stored."""
    with open(path, "rb") as f:
        return index_stream(f, params, cutter=cutter, size=size)[0]
