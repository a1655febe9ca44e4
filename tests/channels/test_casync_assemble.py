"""Assembling a release file from seeds + a chunk cache + fetched chunks: the plan (pure),
the executor, resumption, parallel fetches, casync's own seeded extract of our store, and the
issue's bad input: each a clear error, and no unverified byte written."""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from channels.casync import fastchunk
from channels.casync.assemble import execute
from channels.casync.chunker import ChunkerParams
from channels.casync.index import BlobIndex, IndexChunk
from channels.casync.make import make_blob
from channels.casync.plan import Source, plan_assembly
from channels.casync.seed import SeedChunk, SeedIndex, index_seed, seed_from_index
from channels.casync.store import ChunkStore, encode_chunk
from channels.errors import (
    CasyncIndexError,
    ChunkMissingError,
    ChunkParamsError,
    ChunkVerificationError,
    DeltaError,
    SeedError,
)

CASYNC = shutil.which("casync") or "casync"  # Debian's casync: `make setup` installs it
P = ChunkerParams(1024, 4096, 16384)


class Fetcher:
    """``fetch(id)`` over a local store, as the HTTP one is over the served store."""

    def __init__(
        self, store: ChunkStore, *, fail_at: int | None = None, swap: dict[str, bytes] | None = None
    ) -> None:
        self.store, self.fail_at, self.swap = store, fail_at, swap or {}
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, cid: str) -> bytes:
        with self.lock:
            self.calls.append(cid)
            if self.fail_at is not None and len(self.calls) >= self.fail_at:
                raise OSError("connection reset by peer")
        return self.swap.get(cid) or self.store.read_raw(cid)[0]


@pytest.fixture(scope="module")
def cutter(tmp_path_factory: pytest.TempPathFactory) -> fastchunk.CCutter:
    lib = tmp_path_factory.mktemp("lib") / fastchunk.LIBRARY_NAME
    return fastchunk.load(
        fastchunk.build_shared_library(
            lib, lambda argv: subprocess.run(argv, check=True, capture_output=True)
        )
    )


def seed_of(path: Path, index: BlobIndex, cutter: fastchunk.CCutter, **kw: int) -> SeedIndex:
    return index_seed(path, index.params, cutter=cutter, **kw)


@pytest.fixture
def release(tmp_path: Path, cutter: fastchunk.CCutter) -> dict:
    rng = random.Random(1)
    v1 = rng.randbytes(500_000) + bytes(70_000) + rng.randbytes(200_000)
    v2 = bytearray(v1[:300_000] + b"tidehost 1.0.1 " * 40 + v1[300_000:])
    v2[600_000:600_006] = b"1.0.1\n"
    (tmp_path / "v1").write_bytes(v1)
    (tmp_path / "v2").write_bytes(bytes(v2))
    store = ChunkStore(tmp_path / "published/chunks.castr")
    index, _ = make_blob(tmp_path / "v2", store, P, cutter=cutter)
    index.write(tmp_path / "v2.caibx")
    return {
        "tmp": tmp_path,
        "index": index,
        "store": store,
        "v1": tmp_path / "v1",
        "v2": bytes(v2),
        "cache": ChunkStore(tmp_path / "cache", durable=False),
        "cutter": cutter,
    }


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --- the plan (pure) --------------------------------------------------------------------


def ic(offset: int, size: int, cid: str) -> IndexChunk:
    return IndexChunk(offset, size, cid * 64)


def test_plan_takes_seeds_then_the_cache_then_fetches_each_id_once() -> None:
    index = BlobIndex.build(
        P,
        [
            ic(0, 2000, "a"),
            ic(2000, 3000, "b"),
            ic(5000, 1500, "c"),
            ic(6500, 3000, "b"),
            ic(9500, 1500, "c"),
            ic(11000, 100, "d"),
        ],
    )
    seed = SeedIndex(
        Path("/dev/usr-a"),
        P,
        "sha512-256",
        10**6,
        {"a" * 64: SeedChunk(Path("/dev/usr-a"), 777, 2000)},
    )
    plan = plan_assembly(index, [seed], cached={"d" * 64}, expected_size=11100)
    assert [s.source for s in plan.steps] == [
        Source.SEED,
        Source.FETCH,
        Source.FETCH,
        Source.FETCH,
        Source.FETCH,
        Source.CACHE,
    ]
    assert plan.steps[0].seed == SeedChunk(Path("/dev/usr-a"), 777, 2000)
    assert plan.fetch_ids == ("b" * 64, "c" * 64)
    assert (plan.seed_bytes, plan.cache_bytes, plan.fetch_bytes) == (2000, 100, 4500)
    assert plan.total_bytes == 11100


def test_plan_refuses_a_seed_chunked_otherwise_and_an_index_of_the_wrong_size() -> None:
    index = BlobIndex.build(P, [ic(0, 2000, "a")])
    other = SeedIndex(Path("/dev/usr-a"), ChunkerParams.parse("64K"), "sha512-256", 0, {})
    with pytest.raises(ChunkParamsError, match="/dev/usr-a: seed chunked with 16384:65536"):
        plan_assembly(index, [other])
    with pytest.raises(CasyncIndexError, match="usr.img.caibx: describes 2000 bytes, the signed"):
        plan_assembly(index, [], name="usr.img.caibx", expected_size=2001)


# --- the executor -----------------------------------------------------------------------


def test_delta_from_the_old_version_fetches_little(release: dict) -> None:
    index, store, cache = release["index"], release["store"], release["cache"]
    seed = seed_of(release["v1"], index, release["cutter"])
    plan = plan_assembly(index, [seed], set(cache.ids()), expected_size=len(release["v2"]))
    assert 0 < plan.fetch_bytes < 0.1 * plan.total_bytes
    fetch = Fetcher(store)
    out = release["tmp"] / "out/usr.img"
    out.parent.mkdir()
    result = execute(
        plan, index, out, cache=cache, fetch=fetch, expected_sha256=sha256(release["v2"])
    )
    assert out.read_bytes() == release["v2"]
    assert result.sha256 == sha256(release["v2"])
    assert result.fetched_chunk_bytes == plan.fetch_bytes and result.fetched_bytes > 0
    assert result.reused_bytes == plan.seed_bytes == plan.total_bytes - plan.fetch_bytes
    assert sorted(fetch.calls) == sorted(plan.fetch_ids)
    assert list(cache.ids()) == []  # used chunks leave the cache
    assert list(out.parent.iterdir()) == [out]


def test_casync_extract_seeds_from_the_old_version_with_our_index_and_store(release: dict) -> None:
    """casync re-chunks the seed itself: it reuses exactly the chunks our plan reuses."""
    tmp, index = release["tmp"], release["index"]
    plan = plan_assembly(index, [seed_of(release["v1"], index, release["cutter"])])
    proc = subprocess.run(
        [
            CASYNC,
            "-v",
            "extract",
            f"--store={release['store'].root}",
            f"--seed={release['v1']}",
            str(tmp / "v2.caibx"),
            str(tmp / "x"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert (tmp / "x").read_bytes() == release["v2"]
    seeded = re.search(r"Chunk requests fulfilled from local seed: (\d+)", proc.stderr)
    assert seeded and int(seeded[1]) == sum(s.source is Source.SEED for s in plan.steps)


def test_the_installed_releases_own_index_seeds_without_chunking(release: dict) -> None:
    index, tmp, cutter = release["index"], release["tmp"], release["cutter"]
    old_index, _ = make_blob(release["v1"], None, P, cutter=cutter)  # kept from the last update
    seed = seed_from_index(release["v1"], old_index)
    assert seed == seed_of(release["v1"], index, cutter)
    plan = plan_assembly(index, [seed])
    execute(plan, index, tmp / "usr.img", cache=release["cache"], fetch=Fetcher(release["store"]))
    assert (tmp / "usr.img").read_bytes() == release["v2"]


def test_parallel_fetches_and_repeated_chunks(release: dict) -> None:
    index, store, cache = release["index"], release["store"], release["cache"]
    plan = plan_assembly(index, [])  # no seed: everything is fetched
    assert len(plan.fetch_ids) < len(index.chunks)  # the zero run repeats one chunk
    fetch = Fetcher(store)
    out = release["tmp"] / "usr.img"
    result = execute(plan, index, out, cache=cache, fetch=fetch, workers=4)
    assert out.read_bytes() == release["v2"]
    assert sorted(fetch.calls) == sorted(plan.fetch_ids)  # each id once
    assert result.fetched_chunks == len(plan.fetch_ids) and result.reused_bytes == 0


def test_an_interrupted_assembly_resumes_from_the_cache(release: dict) -> None:
    index, store, cache = release["index"], release["store"], release["cache"]
    out = release["tmp"] / "usr.img"
    plan = plan_assembly(index, [], set(cache.ids()))
    with pytest.raises(ChunkMissingError, match="connection reset by peer"):
        execute(plan, index, out, cache=cache, fetch=Fetcher(store, fail_at=6), workers=1)
    assert not out.exists() and list(out.parent.glob(".usr.img.*")) == []
    kept = set(cache.ids())
    assert len(kept) == 5  # fetched, verified and kept across the failure
    plan = plan_assembly(index, [], set(cache.ids()))
    again = Fetcher(store)
    result = execute(plan, index, out, cache=cache, fetch=again)
    assert out.read_bytes() == release["v2"]
    assert not kept & set(again.calls) and len(again.calls) == len(plan.fetch_ids)
    assert result.cached_bytes > 0 and list(cache.ids()) == []


def test_a_failed_parallel_fetch_keeps_what_arrived(release: dict) -> None:
    index, store, cache = release["index"], release["store"], release["cache"]
    out = release["tmp"] / "usr.img"
    failing = Fetcher(store, fail_at=8)
    with pytest.raises(ChunkMissingError, match="connection reset by peer"):
        execute(plan_assembly(index, []), index, out, cache=cache, fetch=failing, workers=4)
    kept = set(cache.ids())
    assert 0 < len(kept) < 8 and kept <= set(failing.calls) and not out.exists()
    execute(plan_assembly(index, [], kept), index, out, cache=cache, fetch=Fetcher(store))
    assert out.read_bytes() == release["v2"]


def test_a_seed_that_changed_since_it_was_chunked_is_not_trusted(release: dict) -> None:
    index, tmp = release["index"], release["tmp"]
    seed_path = tmp / "slot-b"
    shutil.copy(release["v1"], seed_path)
    seed = seed_of(seed_path, index, release["cutter"])
    with open(seed_path, "r+b") as f:  # the stale slot is being overwritten meanwhile
        f.write(b"\xee" * 100_000)
    plan = plan_assembly(index, [seed])
    result = execute(
        plan, index, tmp / "usr.img", cache=release["cache"], fetch=Fetcher(release["store"])
    )
    assert (tmp / "usr.img").read_bytes() == release["v2"]
    assert result.seed_misses > 0 and result.reused_bytes < plan.seed_bytes


def test_the_stale_slot_can_seed_itself_in_place(release: dict) -> None:
    index, tmp = release["index"], release["tmp"]
    slot = tmp / "slot-b"
    v1 = release["v1"].read_bytes()
    slot.write_bytes(v1 + b"\x99" * 50_000)  # a partition bigger than the image it holds
    plan = plan_assembly(index, [seed_of(slot, index, release["cutter"], size=len(v1))])
    result = execute(
        plan, index, slot, cache=release["cache"], fetch=Fetcher(release["store"]), in_place=True
    )
    assert slot.read_bytes()[: len(release["v2"])] == release["v2"]
    assert result.sha256 == sha256(release["v2"]) and result.reused_bytes > 0


def test_a_cached_chunk_that_rotted_is_fetched_again(release: dict) -> None:
    index, cache = release["index"], release["cache"]
    victim = index.chunks[3].id
    cache.put_encoded(victim, encode_chunk(b"not that chunk"))
    plan = plan_assembly(index, [], set(cache.ids()))
    assert plan.steps[3].source is Source.CACHE
    fetch = Fetcher(release["store"])
    execute(plan, index, release["tmp"] / "usr.img", cache=cache, fetch=fetch)
    assert (release["tmp"] / "usr.img").read_bytes() == release["v2"] and victim in fetch.calls


# --- bad input: a clear line, nothing unverified written -------------------------------


@pytest.fixture
def slot(release: dict) -> Path:
    path = release["tmp"] / "slot"
    path.write_bytes(b"\xee" * 900_000)
    return path


def assert_untouched(slot: Path) -> None:
    assert slot.read_bytes() == b"\xee" * 900_000


def test_a_corrupt_chunk_is_refused_before_anything_is_written(release: dict, slot: Path) -> None:
    index, store = release["index"], release["store"]
    plan = plan_assembly(index, [seed_of(release["v1"], index, release["cutter"])])
    bad = plan.fetch_ids[0]
    wrong = encode_chunk(b"\0" * next(c.size for c in index.chunks if c.id == bad))
    with pytest.raises(ChunkVerificationError, match=f"fetched chunk {bad}: chunk does not hash"):
        execute(
            plan,
            index,
            slot,
            cache=release["cache"],
            fetch=Fetcher(store, swap={bad: wrong}),
            in_place=True,
        )
    assert_untouched(slot)
    assert bad not in set(release["cache"].ids())


def test_a_chunk_bigger_than_its_index_entry_is_refused(release: dict, slot: Path) -> None:
    index = release["index"]
    plan = plan_assembly(index, [])
    cid = plan.fetch_ids[0]
    size = next(c.size for c in index.chunks if c.id == cid)
    huge = encode_chunk(bytes(size + 1))
    with pytest.raises(ChunkVerificationError, match=f"larger than {size} bytes"):
        execute(
            plan,
            index,
            slot,
            cache=release["cache"],
            fetch=Fetcher(release["store"], swap={cid: huge}),
            in_place=True,
        )
    assert_untouched(slot)


def test_a_missing_store_or_chunk(release: dict, slot: Path) -> None:
    index = release["index"]
    plan = plan_assembly(index, [seed_of(release["v1"], index, release["cutter"])])
    gone = Fetcher(ChunkStore(release["tmp"] / "no-such-store"))
    with pytest.raises(ChunkMissingError, match="no-such-store: no chunk store there"):
        execute(plan, index, slot, cache=release["cache"], fetch=gone, in_place=True)
    with pytest.raises(ChunkMissingError, match="is in no seed and nothing fetches"):
        execute(plan, index, slot, cache=release["cache"], fetch=None, in_place=True)
    release["store"].remove(plan.fetch_ids[-1])
    with pytest.raises(ChunkMissingError, match="chunk missing from the store"):
        execute(
            plan,
            index,
            slot,
            cache=release["cache"],
            fetch=Fetcher(release["store"]),
            in_place=True,
        )
    assert_untouched(slot)


def test_an_unreadable_seed(release: dict) -> None:
    tmp, index = release["tmp"], release["index"]
    for bad in (tmp / "no-such-device", tmp):
        with pytest.raises(SeedError, match=f"{bad}: cannot read the seed"):
            index_seed(bad, index.params)
    seed_path = tmp / "old.img"
    shutil.copy(release["v1"], seed_path)
    plan = plan_assembly(index, [seed_of(seed_path, index, release["cutter"])])
    seed_path.unlink()  # gone between chunking and assembling
    out = tmp / "usr.img"
    with pytest.raises(SeedError, match=f"{seed_path}: cannot read the seed"):
        execute(plan, index, out, cache=release["cache"], fetch=Fetcher(release["store"]))
    assert not out.exists() and list(tmp.glob(".usr.img.*")) == []


def test_an_index_that_does_not_give_the_signed_file(release: dict) -> None:
    index, tmp = release["index"], release["tmp"]
    plan = plan_assembly(index, [])
    out = tmp / "usr.img"
    with pytest.raises(CasyncIndexError, match="assembles to sha256 .*the signed file has"):
        execute(
            plan,
            index,
            out,
            cache=release["cache"],
            fetch=Fetcher(release["store"]),
            expected_sha256=sha256(b"something else"),
        )
    assert not out.exists() and list(tmp.glob(".usr.img.*")) == []


def test_every_failure_is_a_delta_error() -> None:
    for cls in (
        CasyncIndexError,
        ChunkMissingError,
        ChunkParamsError,
        ChunkVerificationError,
        SeedError,
    ):
        assert issubclass(cls, DeltaError)
