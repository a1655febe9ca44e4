"""The .caibx blob index: round trips, what Debian's casync writes and reads, and every
malformed index refused with one line naming the file."""

from __future__ import annotations

import hashlib
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from channels.casync.chunker import ChunkerParams
from channels.casync.index import CASYNC_MAKE_FLAGS, BlobIndex, IndexChunk, chunk_id
from channels.casync.make import index_blob, make_blob
from channels.casync.store import ChunkStore
from channels.errors import CasyncIndexError, VerificationError

CASYNC = shutil.which("casync") or "casync"  # Debian's casync: `make setup` installs it
P = ChunkerParams(1024, 4096, 16384)


def casync(*args: str) -> str:
    proc = subprocess.run([CASYNC, *args], check=True, capture_output=True, text=True)
    return proc.stdout + proc.stderr


def rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "usr.img"
    path.write_bytes(rand(400_000) + bytes(100_000) + rand(3333, 2))
    return path


@pytest.fixture
def index_bytes(blob: Path) -> bytes:
    return index_blob(blob, P).to_bytes()


def test_round_trip(tmp_path: Path, blob: Path) -> None:
    index = index_blob(blob, P)
    index.write(tmp_path / "x.caibx")
    again = BlobIndex.read(tmp_path / "x.caibx")
    assert again == index
    assert again.params == P and again.digest == "sha512-256"
    assert again.total_size == blob.stat().st_size
    assert (tmp_path / "x.caibx").stat().st_size == 104 + 40 * len(index.chunks)
    data = blob.read_bytes()
    assert all(chunk_id(data[c.offset : c.end]) == c.id for c in again.chunks)


def test_empty_blob_round_trip(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    index = index_blob(tmp_path / "empty", P)
    assert len(index.to_bytes()) == 104
    assert BlobIndex.from_bytes(index.to_bytes(), "e.caibx") == index


def test_flags_are_what_casync_make_writes(tmp_path: Path, blob: Path) -> None:
    """SPECS open question 2: Debian's casync make writes 0xB000000000000000 for a blob."""
    casync("make", f"--store={tmp_path}/st.castr", str(tmp_path / "x.caibx"), str(blob))
    flags = struct.unpack_from("<Q", (tmp_path / "x.caibx").read_bytes(), 16)[0]
    assert flags == CASYNC_MAKE_FLAGS == 0xB000000000000000


def test_casync_extracts_what_we_write(tmp_path: Path, blob: Path) -> None:
    store = ChunkStore(tmp_path / "default.castr")
    index, stats = make_blob(blob, store, P)
    index.write(tmp_path / "x.caibx")
    assert stats.new_chunks == len({c.id for c in index.chunks}) and stats.stored_bytes > 0
    casync("extract", f"--store={store.root}", str(tmp_path / "x.caibx"), str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == blob.read_bytes()
    digest = casync("digest", f"--store={store.root}", str(tmp_path / "x.caibx")).split()[0]
    assert digest == hashlib.new("sha512_256", blob.read_bytes()).hexdigest()
    gc = casync("-n", "gc", f"--store={store.root}", str(tmp_path / "x.caibx"))
    n = len({c.id for c in index.chunks})
    assert f"Would remove 0 chunks, {n} chunks remaining." in gc


def test_we_read_what_casync_writes(tmp_path: Path, blob: Path) -> None:
    casync(
        "make",
        "--chunk-size=1024:4096:16384",
        f"--store={tmp_path}/st.castr",
        str(tmp_path / "x.caibx"),
        str(blob),
    )
    index = BlobIndex.read(tmp_path / "x.caibx")
    assert index == index_blob(blob, P)


# --- bad input --------------------------------------------------------------------------


def corrupt(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<Q", value) + data[offset + 8 :]


BAD = {
    "header size": (lambda d: corrupt(d, 0, 40), "no index header"),
    "header type": (lambda d: corrupt(d, 8, 0x1396FABCEA5BBB51), "no index header"),
    "archive flags (.caidx)": (lambda d: corrupt(d, 16, 0xB000000000000000 | 0x2), "feature flags"),
    "min 0": (lambda d: corrupt(d, 24, 0), "chunk_size_min 0"),
    "max beyond 128 MiB": (lambda d: corrupt(d, 40, 1 << 28), "chunk_size_max"),
    "unordered sizes": (lambda d: corrupt(d, 24, 8192), "not ordered"),
    "table size": (lambda d: corrupt(d, 48, 1000), "no table header"),
    "offsets not increasing": (lambda d: corrupt(d, 64 + 40, 10), "not after"),
    "chunk bigger than max": (
        lambda d: corrupt(corrupt(d, 40, 4096), 32, 4096),
        "more than the maximum",
    ),
    "truncated by a byte": (lambda d: d[:-1], "truncated or trailing"),
    "truncated by an item": (lambda d: d[:-40], "tail"),
    "trailing byte": (lambda d: d + b"\0", "truncated or trailing"),
    "trailing item": (lambda d: d + bytes(40), "tail"),
    "tail marker": (lambda d: d[:-8] + bytes(8), "tail"),
    "tail size": (lambda d: corrupt(d, len(d) - 16, 56), "tail"),
    "shorter than a header": (lambda d: d[:50], "shorter than the smallest"),
    "empty file": (lambda d: b"", "shorter than the smallest"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_index_is_refused_naming_the_file(
    tmp_path: Path, index_bytes: bytes, case: str
) -> None:
    mangle, why = BAD[case]
    path = tmp_path / "usr.img.caibx"
    path.write_bytes(mangle(index_bytes))
    with pytest.raises(CasyncIndexError) as e:
        BlobIndex.read(path)
    assert str(e.value).startswith(f"{path}: ") and why in str(e.value)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, VerificationError)  # the trust root of channels.errors


def test_oversized_index_is_refused_before_parsing(tmp_path: Path, index_bytes: bytes) -> None:
    path = tmp_path / "x.caibx"
    path.write_bytes(index_bytes)
    with pytest.raises(CasyncIndexError, match="larger than 500 bytes"):
        BlobIndex.read(path, max_bytes=500)
    assert BlobIndex.read(path, max_bytes=len(index_bytes)).total_size == 503_333


def test_missing_index_is_an_index_error(tmp_path: Path) -> None:
    with pytest.raises(CasyncIndexError, match="cannot read the index"):
        BlobIndex.read(tmp_path / "nope.caibx")


def test_writer_refuses_chunks_that_do_not_tile() -> None:
    a = IndexChunk(0, 1000, "00" * 32)
    for chunks in (
        [a, IndexChunk(1001, 10, "11" * 32)],
        [IndexChunk(0, 20000, "00" * 32)],
        [IndexChunk(0, 10, "abc")],
    ):
        with pytest.raises(ValueError):
            BlobIndex.build(P, chunks).to_bytes()
