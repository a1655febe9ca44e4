"""casync's chunker: pure properties, the C path against the Python reference, and parity
with Debian's casync (``casync make`` boundaries, the cut at exactly L = min)."""

from __future__ import annotations

import io
import logging
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from channels.casync import buzhash, chunker, fastchunk
from channels.casync.chunker import (
    DEFAULT_PARAMS,
    PYTHON_CUTTER,
    ChunkerParams,
    cut_points,
    iter_chunks,
)
from channels.casync.index import BlobIndex, chunk_id
from channels.casync.make import index_blob
from channels.errors import ChunkParamsError

CASYNC = shutil.which("casync") or "casync"  # Debian's casync: `make setup` installs it


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def c_cutter(tmp_path_factory: pytest.TempPathFactory) -> fastchunk.CCutter:
    lib = tmp_path_factory.mktemp("lib") / fastchunk.LIBRARY_NAME
    return fastchunk.load(fastchunk.build_shared_library(lib, run))


def rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def ids(data: bytes, params: ChunkerParams, cutter=None) -> list[str]:
    ends = cut_points(data, params, cutter)
    return [chunk_id(data[a:b]) for a, b in zip([0, *ends], ends)]


def casync_make(tmp: Path, data: bytes, sizes: str | None) -> BlobIndex:
    (tmp / "blob").write_bytes(data)
    opts = [f"--chunk-size={sizes}"] if sizes else []
    run([CASYNC, "make", *opts, f"--store={tmp}/st.castr", str(tmp / "x.caibx"), str(tmp / "blob")])
    return BlobIndex.read(tmp / "x.caibx")


# --- pure -------------------------------------------------------------------------------


def test_rolling_hash_equals_a_fresh_hash_of_the_window() -> None:
    data = rand(400)
    h = buzhash.start(data[:48])
    for i in range(48, 400):
        h = buzhash.roll(h, data[i - 48], data[i])
        assert h == buzhash.start(data[i - 47 : i + 1])


def test_discriminator_matches_casyncs_formula() -> None:
    # CA_CHUNKER_DISCRIMINATOR_FROM_AVG(64 KiB), computed in SPECS §9.3
    assert ChunkerParams(16384, 65536, 262144).discriminator == 49535
    assert ChunkerParams(100, 100, 100).discriminator == 100  # clamped into [min, max]


@pytest.mark.parametrize("sizes", ["4096:1024:65536", "16:64:256", "0:64K:256K", "1:2", "x"])
def test_unusable_chunk_sizes_are_refused(sizes: str) -> None:
    with pytest.raises(ChunkParamsError, match="chunk sizes"):
        ChunkerParams.parse(sizes)


def test_sizes_parse_like_casyncs_option() -> None:
    assert ChunkerParams.parse("64K") == ChunkerParams(16384, 65536, 262144)
    assert ChunkerParams.parse("4K:16K:64K") == DEFAULT_PARAMS


def test_every_chunk_respects_min_and_max_and_the_chunks_tile_the_data() -> None:
    data = rand(300_000) + bytes(200_000) + rand(50_000, 2)  # zeros never hit: max cuts
    p = ChunkerParams(1024, 4096, 16384)
    ends = cut_points(data, p)
    sizes = [b - a for a, b in zip([0, *ends], ends)]
    assert ends[-1] == len(data) and sum(sizes) == len(data)
    assert all(p.min_size <= s <= p.max_size for s in sizes[:-1])
    assert sizes.count(p.max_size) >= 200_000 // p.max_size - 1  # the zero run
    assert 0.5 * p.avg_size < len(data) / len(sizes) < 2 * p.avg_size


def test_boundaries_survive_an_insertion() -> None:
    p = ChunkerParams(512, 2048, 8192)
    base = rand(200_000)
    edited = base[:100_000] + b"tidehost 1.0.1 " * 7 + base[100_000:]
    a, b = ids(base, p), ids(edited, p)
    assert len(set(a) - set(b)) <= 2  # only the chunk(s) around the insertion differ
    assert a[:5] == b[:5] and a[-5:] == b[-5:]


def test_boundaries_survive_a_deletion_and_an_overwrite() -> None:
    p = ChunkerParams(512, 2048, 8192)
    base = rand(200_000, 3)
    edited = bytearray(base[:50_000] + base[50_300:])  # 300 bytes deleted
    edited[150_000:150_004] = b"1.1."  # and a version string changed in place
    a, b = ids(base, p), ids(bytes(edited), p)
    assert len(set(a) - set(b)) <= 4
    assert a[-5:] == b[-5:]


def test_short_inputs_are_one_chunk() -> None:
    for n in (0, 1, 47, 48, 511):
        assert cut_points(rand(n), ChunkerParams(512, 2048, 8192)) == ([n] if n else [])


def test_stream_chunking_does_not_depend_on_read_sizes() -> None:
    data = rand(120_000, 4)
    p = ChunkerParams(256, 1024, 4096)
    whole = cut_points(data, p)
    for block in (1, 5000, 8192, 1 << 20):
        got = [
            o + len(v)
            for o, v in iter_chunks(io.BytesIO(data), p, cutter=PYTHON_CUTTER, block=block)
        ]
        assert got == whole
    prefix = [
        o + len(v) for o, v in iter_chunks(io.BytesIO(data), p, cutter=PYTHON_CUTTER, size=60_000)
    ]
    assert prefix == cut_points(data[:60_000], p)


# --- the C path -------------------------------------------------------------------------


def test_c_library_needs_no_libc(c_cutter: fastchunk.CCutter) -> None:
    dyn = subprocess.run(
        ["readelf", "-d", str(c_cutter.path)], check=True, capture_output=True, text=True
    ).stdout
    undefined = subprocess.run(
        ["nm", "-D", "--undefined-only", str(c_cutter.path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "NEEDED" not in dyn and undefined.strip() == ""


@pytest.mark.parametrize(
    "sizes",
    ["48:64:80", "100:100:100", "512:2048:8192", "4K:16K:64K", "16K:64K:256K", "48:64K:128K"],
)
def test_c_and_python_paths_agree(c_cutter: fastchunk.CCutter, sizes: str) -> None:
    p = ChunkerParams.parse(sizes)
    data = rand(1_500_000, 5) + bytes(300_000) + rand(1000, 6)
    assert c_cutter.scan(data, p) == PYTHON_CUTTER.scan(data, p)
    assert chunker.agrees_with_reference(c_cutter)


def test_without_the_library_chunking_falls_back_to_python_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TIDEHOST_CACHE", str(tmp_path / "cache"))
    chunker.default_cutter.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert chunker.default_cutter() is PYTHON_CUTTER
        assert "pure Python" in caplog.text and str(tmp_path / "cache") in caplog.text
        built = fastchunk.ensure_cached_library(run)  # the workstation's first use
        assert built == tmp_path / "cache" / fastchunk.LIBRARY_NAME
        chunker.default_cutter.cache_clear()
        fast = chunker.default_cutter()
        assert isinstance(fast, fastchunk.CCutter) and fast.path == built
        assert fastchunk.ensure_cached_library(run) == built  # not rebuilt
    finally:
        chunker.default_cutter.cache_clear()


def test_an_installed_copy_uses_the_library_beside_it(tmp_path: Path) -> None:
    """As the image build does: copy ``channels`` into a site dir, build the library there."""
    site = tmp_path / "site"
    shutil.copytree(
        Path(chunker.__file__).parents[1],
        site / "channels",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    fastchunk.build_shared_library(site / "channels/casync" / fastchunk.LIBRARY_NAME, run)
    probe = (
        "import channels.casync.chunker as c, channels.casync.fastchunk as f; "
        "print(c.default_cutter().name, f.find_library())"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "TIDEHOST_CACHE": str(tmp_path / "no")}
    out = subprocess.run(  # Debian's python3, as on a host
        ["/usr/bin/python3", "-c", probe], env=env, cwd=tmp_path, check=True,
        capture_output=True, text=True,
    ).stdout.split()
    assert out == ["c", str(site / "channels/casync" / fastchunk.LIBRARY_NAME)]


def test_a_system_install_never_loads_a_cached_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastchunk, "__file__", f"{fastchunk.SYSTEM_SITE}/channels/casync/x.py")
    assert fastchunk.library_dirs() == [fastchunk.SYSTEM_SITE / "channels/casync"]


# --- parity with Debian's casync --------------------------------------------------------


@pytest.mark.parametrize("sizes", ["4K:16K:64K", "2048:8192:32768", None])
def test_boundaries_equal_casync_make(
    tmp_path: Path, c_cutter: fastchunk.CCutter, sizes: str | None
) -> None:
    data = rand(6_000_000, 7) + bytes(700_000) + rand(12_345, 8)
    theirs = casync_make(tmp_path, data, sizes)
    params = ChunkerParams.parse(sizes) if sizes else ChunkerParams(16384, 65536, 262144)
    ours = index_blob(tmp_path / "blob", params, cutter=c_cutter)
    assert ours.chunks == theirs.chunks
    assert ours.to_bytes() == (tmp_path / "x.caibx").read_bytes()  # the whole index, byte for byte


def test_casync_cuts_at_exactly_min_and_so_do_we(tmp_path: Path) -> None:
    """SPECS open question 1: a hash hit at L = min cuts there (casync), not at min+1 (desync)."""
    p = ChunkerParams(4096, 16384, 65536)
    d, rng = p.discriminator, random.Random(9)
    prefix = bytearray(rand(p.min_size, 10))
    while buzhash.start(bytes(prefix[-48:])) % d != d - 1:  # make the window ending at min hit
        prefix[-1 - rng.randrange(8)] = rng.randrange(256)
    tail = rand(200_000, 11)
    data = bytes(prefix) + tail
    assert cut_points(data, p)[0] == p.min_size
    theirs = casync_make(tmp_path, data, str(p))
    assert theirs.chunks[0].size == p.min_size
    assert [c.end for c in theirs.chunks] == cut_points(data, p)
