"""casync's content-defined chunker, bit-exact with Debian's casync 2+20201210.

The cut rule (``src/cachunker.c`` at bd8898e, ``shall_break``/``ca_chunker_scan``): a chunk
starts with a fresh state (hash, window and length reset to 0: the window does not carry over
from the previous chunk). After the byte that makes the chunk ``L`` bytes long is added, with
``h`` the buzhash of the chunk's last 48 bytes::

    L >= max            -> cut
    L <  min            -> no cut
    h % d == d - 1      -> cut           (d: the discriminator, from avg)

so the first length tested is ``L = min`` itself (desync's loop first tests ``min + 1``; we
match casync, which re-chunks seeds with this rule; ``test_casync_chunker`` proves it against
``casync make``). What is left at the end of the input is the last chunk, possibly < min.
``min == avg == max`` is casync's fixed-size chunker, which this rule gives as well.

Two scanners implement the rule: ``PythonCutter`` here (the reference, ~7 MB/s) and the C one
of ``fastchunk`` (~1.3 GB/s, ``bench/chunk_bench.py``). ``default_cutter()`` picks the C one
when its shared library is installed or cached, and checks it against the reference first.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from channels.casync.buzhash import TABLE, TABLE_OUT, WINDOW, start
from channels.errors import ChunkParamsError

log = logging.getLogger(__name__)

SIZE_LIMIT_MIN = 1
SIZE_LIMIT_MAX = 128 * 1024 * 1024
"""``CA_CHUNK_SIZE_LIMIT_MIN``/``_MAX`` (``src/cachunk.h``): what an index may say."""


def discriminator(avg: int, min_size: int, max_size: int) -> int:
    """``CA_CHUNKER_DISCRIMINATOR_FROM_AVG(avg)`` clamped to [min, max], as in casync.

    The C expression is double arithmetic truncated to size_t; Python floats are the same
    IEEE doubles evaluated in the same order, so the result is the same integer.
    """
    denominator = -1.42888852e-7 * avg + 1.33237515
    if denominator <= 0:
        raise ChunkParamsError(f"average chunk size {avg}: too large for casync's discriminator")
    return min(max(int(avg / denominator), min_size), max_size)


@dataclass(frozen=True)
class ChunkerParams:
    """Chunk sizes in bytes; they travel in every index (``chunk_size_min/avg/max``).

    casync accepts 1 B ... 128 MiB; this chunker also needs ``min >= 48`` (the hash window),
    which casync's own default (16 KiB) and every sensible choice satisfy.
    """

    min_size: int
    avg_size: int
    max_size: int

    def __post_init__(self) -> None:
        sizes = f"{self.min_size}:{self.avg_size}:{self.max_size}"
        if not all(isinstance(v, int) for v in (self.min_size, self.avg_size, self.max_size)):
            raise ChunkParamsError(f"chunk sizes {sizes}: not integers")
        if not SIZE_LIMIT_MIN <= self.min_size <= self.avg_size <= self.max_size <= SIZE_LIMIT_MAX:
            raise ChunkParamsError(
                f"chunk sizes {sizes}: need {SIZE_LIMIT_MIN} <= min <= avg <= max"
                f" <= {SIZE_LIMIT_MAX}"
            )
        if self.min_size < WINDOW:
            raise ChunkParamsError(f"chunk sizes {sizes}: min must be at least {WINDOW} bytes")
        discriminator(self.avg_size, self.min_size, self.max_size)  # raises if unusable

    @classmethod
    def from_avg(cls, avg: int) -> ChunkerParams:
        """casync's derivation from an average alone (``--chunk-size=AVG``): avg/4, avg*4."""
        return cls(max(avg // 4, SIZE_LIMIT_MIN), avg, min(avg * 4, SIZE_LIMIT_MAX))

    @classmethod
    def parse(cls, text: str) -> ChunkerParams:
        """``MIN:AVG:MAX`` or ``AVG`` in bytes (``K``/``M`` suffixes allowed), as casync's."""
        parts = text.split(":")
        try:
            sizes = [_parse_size(p) for p in parts]
        except ValueError:
            raise ChunkParamsError(f"chunk sizes {text!r}: not MIN:AVG:MAX or AVG") from None
        if len(sizes) == 1:
            return cls.from_avg(sizes[0])
        if len(sizes) != 3:
            raise ChunkParamsError(f"chunk sizes {text!r}: not MIN:AVG:MAX or AVG")
        return cls(*sizes)

    @property
    def discriminator(self) -> int:
        return discriminator(self.avg_size, self.min_size, self.max_size)

    def __str__(self) -> str:
        return f"{self.min_size}:{self.avg_size}:{self.max_size}"


def _parse_size(text: str) -> int:
    factor = {"K": 1024, "M": 1024 * 1024}.get(text[-1:].upper(), 1)
    return int(text[:-1] if factor > 1 else text) * factor


# See the package docstring for why: a version-string change touches few 16 KiB chunks, and a
# 200 MB image is ~12,000 chunk files, not 100,000.
DEFAULT_PARAMS = ChunkerParams(4 * 1024, 16 * 1024, 64 * 1024)


class Cutter(Protocol):
    """A scanner for chunk boundaries; ``PythonCutter`` and ``fastchunk.CCutter`` agree."""

    name: str

    def scan(self, buf: bytes, params: ChunkerParams) -> list[int]:
        """End offsets (in ``buf``) of the chunks ``buf`` decides, ``buf`` starting a chunk.

        A chunk is decided once its cut is found or it reaches ``max``; scanning stops at the
        first chunk that needs more bytes than ``buf`` has. The caller keeps the rest,
        appends more input, and at the end of the input takes the rest as the last chunk.
        """
        ...


class PythonCutter:
    """The reference scanner, a transcription of casync's loop (slow: tests, fallback)."""

    name = "python"

    def scan(self, buf: bytes, params: ChunkerParams) -> list[int]:
        mn, mx, d = params.min_size, params.max_size, params.discriminator
        target, n = d - 1, len(buf)
        table, table_out = TABLE, TABLE_OUT
        ends: list[int] = []
        s = 0
        while True:
            limit = min(n - s, mx)  # the longest length this chunk can be tested at
            if limit < mn:
                return ends
            L = mn
            h = start(buf[s + mn - WINDOW : s + mn])  # the window ending at L = min
            while L < mx and h % d != target:
                if L == limit:  # the input ends before this chunk is decided
                    return ends
                h = (((h << 1) | (h >> 31)) & 0xFFFFFFFF) ^ table_out[buf[s + L - WINDOW]]
                h ^= table[buf[s + L]]
                L += 1
            s += L
            ends.append(s)


PYTHON_CUTTER = PythonCutter()


def cut_points(data: bytes, params: ChunkerParams, cutter: Cutter | None = None) -> list[int]:
    """End offsets of every chunk of ``data`` (the last one is ``len(data)`` if data)."""
    ends = (cutter or PYTHON_CUTTER).scan(data, params)
    if (ends[-1] if ends else 0) < len(data):
        ends.append(len(data))
    return ends


def iter_chunks(
    f: BinaryIO,
    params: ChunkerParams,
    *,
    cutter: Cutter | None = None,
    size: int | None = None,
    block: int = 8 * 1024 * 1024,
) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(offset, bytes)`` of each chunk of a stream (the first ``size`` bytes if given).

    The views stay valid after the next step (they point into immutable blocks). OSError of
    the stream propagates to the caller, who knows what the stream is.
    """
    cut = cutter or default_cutter()
    block = max(block, 2 * params.max_size)
    pending = b""
    offset = 0
    left = size
    while True:
        want = block if left is None else min(block, left)
        data = f.read(want) if want > 0 else b""
        if left is not None:
            left -= len(data)
        buf = pending + data if pending else data
        view = memoryview(buf)
        prev = 0
        ends = cut.scan(buf, params) if data else []
        if not data and buf:
            ends.append(len(buf))  # the end of the input: the rest is the last chunk
        for end in ends:
            yield offset + prev, view[prev:end]
            prev = end
        offset += prev
        if not data:
            return
        pending = buf[prev:]


@functools.cache
def default_cutter() -> Cutter:
    """The C scanner if its library is found and agrees with the reference, else Python."""
    from channels.casync import fastchunk  # fastchunk does not import this module at runtime

    path = fastchunk.find_library()
    if path is None:
        log.warning(
            "casync chunker library %s not found in %s; chunking in pure Python (~7 MB/s)",
            fastchunk.LIBRARY_NAME,
            " or ".join(str(p) for p in fastchunk.library_dirs()),
        )
        return PYTHON_CUTTER
    try:
        fast = fastchunk.load(path)
    except OSError as e:
        log.warning("casync chunker library %s unusable (%s); chunking in pure Python", path, e)
        return PYTHON_CUTTER
    if not agrees_with_reference(fast):
        log.warning("casync chunker library %s disagrees with the reference; not used", path)
        return PYTHON_CUTTER
    return fast


def agrees_with_reference(cutter: Cutter) -> bool:
    """Check ``cutter`` against ``PythonCutter`` on 256 KiB of fixed pseudo-random bytes."""
    data = random.Random(12).randbytes(256 * 1024)
    for params in (
        ChunkerParams(48, 192, 768),
        ChunkerParams(64, 256, 1024),
        ChunkerParams(100, 100, 100),
        ChunkerParams(2048, 8192, 32768),
    ):
        if cutter.scan(data, params) != PYTHON_CUTTER.scan(data, params):
            return False
    return True
