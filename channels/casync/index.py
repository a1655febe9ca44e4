"""The casync blob index (``.caibx``): reader and writer (SPECS §9.1).

All integers are u64 little-endian (``src/caformat.h``, ``src/caindex.c``)::

    0    CaFormatIndex   size=48, type=CA_FORMAT_INDEX, feature_flags, chunk_size_min/avg/max
    48   CaFormatTable   size=UINT64_MAX, type=CA_FORMAT_TABLE
    64   n items         end offset of chunk i in the blob, 32-byte chunk id
    64+40n  tail         0, 0, index_offset=48, size=16+40n+40, CA_FORMAT_TABLE_TAIL_MARKER

We write what ``casync make x.caibx`` writes (feature flags ``0xB000000000000000``: exclude
nodump + exclude file + SHA-512/256 ids; confirmed by running Debian's casync, see
``test_casync_index``), so for the same chunk sizes and data our index is byte-identical to
casync's. The reader is casync's checks and stricter ones: exact header, only the four
flags a blob index can carry, sizes within casync's limits, strictly increasing end offsets
with every chunk ``<= max``, an exact tail, and the file exactly ``104 + 40n`` bytes long.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from channels.casync.chunker import SIZE_LIMIT_MAX, SIZE_LIMIT_MIN, ChunkerParams
from channels.errors import CasyncIndexError
from channels.layout import atomic_write

CA_FORMAT_INDEX = 0x96824D9C7B129FF9
CA_FORMAT_TABLE = 0xE75B9E112F17417D
CA_FORMAT_TABLE_TAIL_MARKER = 0x4B4F050E5549ECD1
UINT64_MAX = 0xFFFFFFFFFFFFFFFF

CA_FORMAT_EXCLUDE_FILE = 0x1000000000000000
CA_FORMAT_SHA512_256 = 0x2000000000000000
CA_FORMAT_EXCLUDE_SUBMOUNTS = 0x4000000000000000
CA_FORMAT_EXCLUDE_NODUMP = 0x8000000000000000
BLOB_FLAGS = (
    CA_FORMAT_EXCLUDE_FILE
    | CA_FORMAT_SHA512_256
    | CA_FORMAT_EXCLUDE_SUBMOUNTS
    | CA_FORMAT_EXCLUDE_NODUMP
)
"""Every bit a blob index may carry; a ``with-*`` bit means an archive index (``.caidx``)."""
CASYNC_MAKE_FLAGS = CA_FORMAT_EXCLUDE_NODUMP | CA_FORMAT_EXCLUDE_FILE | CA_FORMAT_SHA512_256

HEAD = struct.Struct("<QQQQQQQQ")  # index header (6) + table header (2)
ITEM = struct.Struct("<Q32s")
TAIL = struct.Struct("<QQQQQ")
HEAD_SIZE, ITEM_SIZE = HEAD.size, ITEM.size  # 64, 40
MIN_FILE_SIZE = HEAD_SIZE + TAIL.size  # an index of no chunk: 104 bytes

DIGESTS = {"sha512-256": "sha512_256", "sha256": "sha256"}  # casync's names -> hashlib's


def chunk_id(data: bytes | memoryview, digest: str = "sha512-256") -> str:
    """A chunk's id: the digest of its uncompressed bytes, 64 lowercase hex digits."""
    return hashlib.new(DIGESTS[digest], data).hexdigest()


def index_file_size(chunks: int) -> int:
    return MIN_FILE_SIZE + ITEM_SIZE * chunks


@dataclass(frozen=True)
class IndexChunk:
    """One chunk of a blob: where it starts, how long it is, its id (hex)."""

    offset: int
    size: int
    id: str

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class BlobIndex:
    """A parsed or to-be-written ``.caibx``. ``chunks`` cover the blob from 0, in order."""

    chunk_size_min: int
    chunk_size_avg: int
    chunk_size_max: int
    chunks: tuple[IndexChunk, ...]
    feature_flags: int = CASYNC_MAKE_FLAGS

    @classmethod
    def build(
        cls,
        params: ChunkerParams,
        chunks: Iterable[IndexChunk],
        feature_flags: int = CASYNC_MAKE_FLAGS,
    ) -> BlobIndex:
        return cls(params.min_size, params.avg_size, params.max_size, tuple(chunks), feature_flags)

    @property
    def params(self) -> ChunkerParams:
        """The chunker parameters to re-chunk a seed with (ChunkParamsError if unusable)."""
        return ChunkerParams(self.chunk_size_min, self.chunk_size_avg, self.chunk_size_max)

    @property
    def digest(self) -> str:
        return "sha512-256" if self.feature_flags & CA_FORMAT_SHA512_256 else "sha256"

    @property
    def total_size(self) -> int:
        return self.chunks[-1].end if self.chunks else 0

    def to_bytes(self) -> bytes:
        """The index file's bytes; refuses chunks that do not tile the blob within max."""
        out = [
            HEAD.pack(
                48,
                CA_FORMAT_INDEX,
                self.feature_flags,
                self.chunk_size_min,
                self.chunk_size_avg,
                self.chunk_size_max,
                UINT64_MAX,
                CA_FORMAT_TABLE,
            )
        ]
        end = 0
        for i, c in enumerate(self.chunks):
            if len(c.id) != 64 or c.offset != end or not 0 < c.size <= self.chunk_size_max:
                raise ValueError(
                    f"chunk {i} ({c.offset}+{c.size}, id {c.id!r}) does not follow "
                    f"{end} within max {self.chunk_size_max}"
                )
            end = c.end
            out.append(ITEM.pack(end, bytes.fromhex(c.id)))
        n = len(self.chunks)
        out.append(TAIL.pack(0, 0, 48, 16 + ITEM_SIZE * n + TAIL.size, CA_FORMAT_TABLE_TAIL_MARKER))
        return b"".join(out)

    def write(self, path: Path) -> None:
        """Write atomically (temporary name, fsync, rename), mode 0644."""
        atomic_write(Path(path), self.to_bytes(), 0o644)

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> BlobIndex:
        """Parse and check an index; ``name`` (file, target or URL) heads every error."""
        return _parse(data, name)

    @classmethod
    def read(cls, path: Path, *, max_bytes: int | None = None) -> BlobIndex:
        """Read ``path``; larger than ``max_bytes`` (e.g. the signed length) is an error."""
        try:
            with open(path, "rb") as f:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as e:
            raise CasyncIndexError(f"{path}: cannot read the index ({e.strerror})") from None
        if max_bytes is not None and len(data) > max_bytes:
            raise CasyncIndexError(f"{path}: index larger than {max_bytes} bytes")
        return _parse(data, str(path))


def _parse(data: bytes, name: str) -> BlobIndex:
    def bad(why: str) -> CasyncIndexError:
        return CasyncIndexError(f"{name}: not a valid casync blob index: {why}")

    if len(data) < MIN_FILE_SIZE:
        raise bad(f"{len(data)} bytes, shorter than the smallest index ({MIN_FILE_SIZE})")
    (size, kind, flags, mn, avg, mx, table_size, table_kind) = HEAD.unpack_from(data)
    if size != 48 or kind != CA_FORMAT_INDEX:
        raise bad("no index header (size 48, type CA_FORMAT_INDEX)")
    if flags & ~BLOB_FLAGS:
        raise bad(f"feature flags {flags:#018x} are not a blob index's (a .caidx?)")
    for field, v in (("min", mn), ("avg", avg), ("max", mx)):
        if not SIZE_LIMIT_MIN <= v <= SIZE_LIMIT_MAX:
            raise bad(f"chunk_size_{field} {v} outside [{SIZE_LIMIT_MIN}, {SIZE_LIMIT_MAX}]")
    if not mn <= avg <= mx:
        raise bad(f"chunk sizes {mn}:{avg}:{mx} not ordered min <= avg <= max")
    if table_size != UINT64_MAX or table_kind != CA_FORMAT_TABLE:
        raise bad("no table header (size UINT64_MAX, type CA_FORMAT_TABLE)")
    body = len(data) - MIN_FILE_SIZE
    if body % ITEM_SIZE:
        raise bad(f"{len(data)} bytes is not 104 + 40 x chunks (truncated or trailing bytes)")
    n = body // ITEM_SIZE
    tail = TAIL.unpack_from(data, HEAD_SIZE + ITEM_SIZE * n)
    if tail != (0, 0, 48, 16 + ITEM_SIZE * n + TAIL.size, CA_FORMAT_TABLE_TAIL_MARKER):
        raise bad("the table tail is missing or wrong (truncated, or trailing bytes)")
    chunks = []
    prev = 0
    for i, (end, raw_id) in enumerate(
        ITEM.iter_unpack(data[HEAD_SIZE : HEAD_SIZE + ITEM_SIZE * n])
    ):
        if end <= prev:
            raise bad(f"chunk {i} ends at {end}, not after {prev}")
        if end - prev > mx:
            raise bad(f"chunk {i} is {end - prev} bytes, more than the maximum {mx}")
        chunks.append(IndexChunk(prev, end - prev, raw_id.hex()))
        prev = end
    return BlobIndex(mn, avg, mx, tuple(chunks), flags)
