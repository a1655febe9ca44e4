#!/usr/bin/env python3
"""casync chunker figures: MB/s of the C path on a 200 MB file (boundaries alone, and with
SHA-512/256 ids as a host indexes its /usr slot), the pure-Python path on a 4 MB sample,
publishing the 200 MB into a fresh store, and assembling a 1%-changed copy from it.

The C library is built on first use into the cache directory, as the workstation does.
Prints one line per figure.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagebuild.run import run  # noqa: E402

from channels.casync import fastchunk  # noqa: E402
from channels.casync.assemble import AssembleResult, execute  # noqa: E402
from channels.casync.chunker import DEFAULT_PARAMS, PYTHON_CUTTER  # noqa: E402
from channels.casync.make import index_blob, make_blob  # noqa: E402
from channels.casync.plan import plan_assembly  # noqa: E402
from channels.casync.seed import index_seed  # noqa: E402
from channels.casync.store import ChunkStore  # noqa: E402

T = TypeVar("T")
MB = 1 << 20
SIZE = 200 * MB


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // (8 * MB)):
            f.write(os.urandom(8 * MB))
        f.write(os.urandom(size % (8 * MB)))


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    cutter = fastchunk.load(fastchunk.ensure_cached_library(run))
    p = DEFAULT_PARAMS
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "usr.img"
        write_random(img, SIZE)
        data = img.read_bytes()

        ends, secs = timed(lambda: cutter.scan(data, p))
        print(
            f"C chunker, boundaries only ({p}): {SIZE / MB / secs:.0f} MB/s "
            f"({len(ends)} chunks of 200 MB in {secs:.2f} s)"
        )
        index, secs = timed(lambda: index_blob(img, p, cutter=cutter))
        print(
            f"C chunker + SHA-512/256 ids from the file (a host indexing its slot): "
            f"{SIZE / MB / secs:.0f} MB/s ({secs:.2f} s for 200 MB)"
        )
        sample = data[: 4 * MB]
        _, secs = timed(lambda: PYTHON_CUTTER.scan(sample, p))
        print(f"Python chunker, boundaries only (4 MB sample): {4 / secs:.2f} MB/s")

        store = ChunkStore(Path(tmp) / "published.castr")
        (_, stats), secs = timed(lambda: make_blob(img, store, p, cutter=cutter))
        print(
            f"publish 200 MB into an empty store: {secs:.1f} s, {stats.new_chunks} chunks, "
            f"{stats.stored_bytes / MB:.1f} MB stored"
        )

        new = Path(tmp) / "usr-new.img"
        with open(img, "rb") as src, open(new, "wb") as dst:
            rng = random.Random(1)
            while block := src.read(4 * MB):
                block = bytearray(block)
                off = rng.randrange(len(block) - 64)  # one small edit per 4 MB: ~50 edits
                block[off : off + 16] = b"tidehost 1.0.1\n\0"
                dst.write(block)
        new_index, _ = make_blob(new, store, p, cutter=cutter)
        cache = ChunkStore(Path(tmp) / "cache", durable=False)

        def delta() -> AssembleResult:
            seed = index_seed(img, new_index.params, cutter=cutter)
            plan = plan_assembly(new_index, [seed])
            return execute(
                plan,
                new_index,
                Path(tmp) / "out.img",
                cache=cache,
                fetch=lambda cid: store.read_raw(cid)[0],
                workers=4,
            )

        result, secs = timed(delta)
        print(
            f"assemble 200 MB with 50 small edits from the old image (seed chunking "
            f"included): {secs:.1f} s, fetched {result.fetched_chunk_bytes / MB:.2f} MB "
            f"({100 * result.fetched_chunk_bytes / SIZE:.2f}%), "
            f"reused {result.reused_bytes / MB:.1f} MB"
        )


if __name__ == "__main__":
    main()
