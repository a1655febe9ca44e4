"""The .castr chunk store: layout, stored once, read-only files, casync's chunks readable,
and every chunk verified (id, size, decompression bound) before a byte is returned."""

from __future__ import annotations

import lzma
import random
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import zstandard

from channels.casync.index import BlobIndex, chunk_id
from channels.casync.store import (
    ChunkStore,
    chunk_relpath,
    decode_chunk,
    encode_chunk,
    encoded_size_bound,
)
from channels.errors import ChunkMissingError, ChunkVerificationError

CASYNC = shutil.which("casync") or "casync"  # Debian's casync: `make setup` installs it
DATA = random.Random(1).randbytes(20_000)
CID = chunk_id(DATA)


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path / "default.castr")


def test_layout_mode_and_round_trip(store: ChunkStore) -> None:
    written = store.put(CID, DATA)
    path = store.root / CID[:4] / f"{CID}.cacnk"
    assert not path.exists() and store.get(CID, max_size=65536) == DATA  # until commit()
    store.commit()
    assert written == path.stat().st_size > 0
    assert chunk_relpath(CID) == f"{CID[:4]}/{CID}.cacnk"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    assert zstandard.get_frame_parameters(path.read_bytes()).content_size == len(DATA)
    assert store.get(CID, max_size=65536) == DATA
    assert list(store.ids()) == [CID] and store.has(CID)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


@pytest.mark.parametrize("size", [1, 4096, 65536, 262144])
def test_an_incompressible_chunk_fits_the_download_bound(size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert size < len(encode_chunk(data, 19)) <= encoded_size_bound(size)


def test_a_chunk_is_stored_once(store: ChunkStore) -> None:
    store.put(CID, DATA)
    assert store.put(CID, DATA) == 0  # pending counts as stored
    store.commit()
    path = store.path(CID)
    before = path.stat()
    assert store.put(CID, DATA) == 0 and store.put_encoded(CID, encode_chunk(DATA, 19)) == 0
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns


def test_a_failed_publish_leaves_no_chunk_visible(store: ChunkStore) -> None:
    store.put(CID, DATA)
    store.discard()
    assert not store.has(CID) and list(store.root.rglob("*.tmp")) == []
    store.commit()
    assert list(store.ids()) == []


def test_a_cache_store_shows_chunks_at_once(tmp_path: Path) -> None:
    cache = ChunkStore(tmp_path / "cache", durable=False)
    cache.put(CID, DATA)
    assert cache.path(CID).is_file() and list(cache.root.rglob("*.tmp")) == []


def test_uncompressed_and_xz_chunks_are_read_too(store: ChunkStore) -> None:
    bare = store.path(CID).with_suffix("")
    bare.parent.mkdir(parents=True)
    bare.write_bytes(DATA)
    assert store.get(CID, max_size=65536) == DATA
    assert decode_chunk(lzma.compress(DATA, format=lzma.FORMAT_XZ), CID, max_size=65536) == DATA


def test_we_read_and_verify_every_chunk_casync_writes(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(random.Random(2).randbytes(300_000))
    for compression in ("zstd", "xz", "gzip"):
        st = tmp_path / f"{compression}.castr"
        subprocess.run(
            [
                CASYNC,
                "make",
                "--chunk-size=1024:4096:16384",
                f"--compression={compression}",
                f"--store={st}",
                str(tmp_path / "x.caibx"),
                str(blob),
            ],
            check=True,
            capture_output=True,
        )
        index = BlobIndex.read(tmp_path / "x.caibx")
        store = ChunkStore(st)
        data = b"".join(
            store.get(c.id, max_size=index.chunk_size_max, size=c.size) for c in index.chunks
        )
        assert data == blob.read_bytes()
        assert sorted(store.ids()) == sorted({c.id for c in index.chunks})


# --- bad input --------------------------------------------------------------------------


def test_a_chunk_that_does_not_hash_to_its_id_is_refused(store: ChunkStore) -> None:
    other = DATA[:-1] + b"!"
    store.put(CID, other)  # a corrupt store: the file under CID holds other bytes
    store.commit()
    with pytest.raises(ChunkVerificationError, match=f"{store.path(CID)}: .*does not hash"):
        store.get(CID, max_size=65536)


def test_a_decompression_bomb_stops_at_the_bound(store: ChunkStore) -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(50_000_000))
    assert len(bomb) < 10_000
    with pytest.raises(ChunkVerificationError, match="larger than 65536 bytes"):
        decode_chunk(bomb, CID, max_size=65536)
    with pytest.raises(ChunkVerificationError, match="larger than 65536 bytes"):
        decode_chunk(lzma.compress(bytes(5_000_000)), CID, max_size=65536)


def test_a_chunk_bigger_than_the_index_says_is_refused() -> None:
    with pytest.raises(ChunkVerificationError, match="larger than 19999 bytes"):
        decode_chunk(encode_chunk(DATA), CID, max_size=65536, size=19_999)
    with pytest.raises(ChunkVerificationError, match="larger than 10000 bytes"):
        decode_chunk(encode_chunk(DATA), CID, max_size=10_000)


def test_a_shorter_chunk_is_refused() -> None:
    with pytest.raises(ChunkVerificationError, match="is 20000 bytes, the index says 20001"):
        decode_chunk(encode_chunk(DATA), CID, max_size=65536, size=20_001)


@pytest.mark.parametrize("raw", [b"\x28\xb5\x2f\xfd garbage", b"plain bytes", b""])
def test_undecodable_chunks_are_refused(raw: bytes) -> None:
    with pytest.raises(ChunkVerificationError, match="chunk "):
        decode_chunk(raw, CID, max_size=65536)


def test_missing_chunk_and_missing_store_name_the_path(store: ChunkStore, tmp_path: Path) -> None:
    with pytest.raises(ChunkMissingError, match=f"{store.root}: no chunk store there"):
        store.get(CID, max_size=65536)
    store.put(chunk_id(b"x"), b"x")
    store.commit()
    with pytest.raises(ChunkMissingError, match=f"{store.path(CID)}: chunk missing"):
        store.get(CID, max_size=65536)


def test_ids_are_checked_before_they_become_paths(store: ChunkStore) -> None:
    for bad in ("../../etc/passwd", CID.upper(), CID[:-1]):
        with pytest.raises(ValueError):
            store.path(bad)
