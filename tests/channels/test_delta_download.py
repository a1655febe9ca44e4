"""The delta download (issue 12, items 3, 4 and "Bad input"), through a served repository:
seeds give most of a release, the missing chunks come by static GETs, the files are the
signed ones byte for byte, and every failure of the delta path is one line and the full
file, never an unverified byte in the caller's directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hostile_mirror import Drip, Endless, NotFound, Serve, Tamper, Truncate
from tuf.api.metadata import TargetFile

from channels import delta
from channels.bundle import FILES
from channels.casync.index import BlobIndex
from channels.casync.store import chunk_relpath, encode_chunk
from channels.delta import SeedSource
from channels.errors import ChannelError
from channels.layout import atomic_write
from imagebuild.cli import main

CHUNKED = ("usr.img", "vmlinuz", "initrd")


@pytest.fixture
def two_releases(open_repo, delta_pair: tuple[Path, Path]) -> tuple[Path, Path]:  # noqa: ANN001
    for bundle in delta_pair:
        with open_repo() as r:
            r.publish(bundle, "alpha")
    return delta_pair


def seeds_of(bundle: Path) -> list[SeedSource]:
    return [SeedSource(bundle / f) for f in CHUNKED]


def indexes(open_repo, version: str) -> dict[str, BlobIndex]:  # noqa: ANN001
    with open_repo() as r:
        rel = r.release("alpha", version)
        role = r.tuf.channels["alpha"].signed.targets
        return {f: BlobIndex.read(r.tuf.target_file(role[p])) for f, p in rel.indexes.items()}


def new_chunk(open_repo, fname: str) -> str:  # noqa: ANN001
    """A chunk 1.1.0's ``fname`` needs that 1.0.0 does not have (so a host fetches it)."""
    old = {c.id for c in indexes(open_repo, "1.0.0")[fname].chunks}
    return next(c.id for c in indexes(open_repo, "1.1.0")[fname].chunks if c.id not in old)


def assert_exactly(bundle: Path, dest: Path, release: Path) -> None:
    """``dest`` holds the release's bundle and nothing else, byte for byte."""
    assert sorted(p.name for p in dest.iterdir()) == [bundle.name]
    assert sorted(p.name for p in bundle.iterdir()) == sorted(("manifest.json", *FILES))
    for f in ("manifest.json", *FILES):
        assert (bundle / f).read_bytes() == (release / f).read_bytes(), f


def chunk_gets(served) -> list[str]:  # noqa: ANN001
    return [p for p, _ in served.seen if p.startswith("chunks.castr/")]


def test_seeds_give_most_of_the_release_and_the_files_are_the_signed_ones(
        two_releases, make_client, served, tmp_path: Path) -> None:  # noqa: ANN001
    v1, v2 = two_releases
    client = make_client()
    offer = client.offer("m", "1.0.0")
    assert offer is not None and offer.version == "1.1.0" and set(offer.indexes) == set(CHUNKED)
    path, report = delta.download(client, offer, tmp_path / "dl", seeds_of(v1))
    assert_exactly(path, tmp_path / "dl", v2)
    methods = {f.name: f.method for f in report.files}
    assert methods == {"manifest.json": "full", "usr.img": "delta", "vmlinuz": "delta",
                       "initrd": "delta", "usr.verity": "rebuilt"}  # no byte of the tree
    assert report.full_bytes == offer.size
    assert report.fetched_bytes < offer.size / 20  # two edits and one inserted byte
    assert report.reused_bytes > offer.size * 0.9
    by = {f.name: f for f in report.files}
    assert by["vmlinuz"].reused_bytes == by["vmlinuz"].size  # the same kernel: only its index
    assert not any(p.startswith("targets/alpha/") and p.endswith((".usr.img", ".usr.verity"))
                   for p, _ in served.seen)  # the full files were never fetched
    assert 0 < len(chunk_gets(served)) < 20
    assert not any((client.state_dir / "chunks").rglob("*.cacnk"))  # the cache served its turn


def test_channel_check_with_seeds_reports_fetched_against_full(
        two_releases, served, root_json: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    v1, v2 = two_releases
    seeds = [a for f in CHUNKED for a in ("--seed", str(v1 / f))]
    code = main(["channel", "check", served.url, "--channel", "alpha", "--root", str(root_json),
                 "--state", str(tmp_path / "st"), "--machine-id", "m", "--current", "1.0.0",
                 "--download", str(tmp_path / "dl"), *seeds, "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    lines = out.strip().splitlines()
    assert "downloaded and verified" in lines[-2] and "reused" in lines[-2]
    rep = json.loads(lines[-1])
    assert rep["offered"] == "1.1.0" and rep["full_bytes"] > 20 * rep["fetched_bytes"] > 0
    assert rep["files"]["usr.img"]["method"] == "delta"
    assert_exactly(Path(rep["bundle"]), tmp_path / "dl", v2)


def test_without_seeds_the_files_come_whole(two_releases, make_client, served,  # noqa: ANN001
                                            tmp_path: Path) -> None:
    client = make_client()
    path, report = delta.download(client, client.offer("m", "1.0.0"), tmp_path / "dl")
    assert_exactly(path, tmp_path / "dl", two_releases[1])
    assert {f.method for f in report.files if f.name in CHUNKED} == {"full"}
    assert chunk_gets(served) == []  # not thousands of GETs for the bytes of one


# --- bad input: one line, the full file, nothing unverified ---------------------------------


def _doctor_index(open_repo, repo: Path) -> str:  # noqa: ANN001
    """Sign, as 1.1.0's usr.img index, vmlinuz's index: a valid target that disagrees with
    the signed length of usr.img (what a buggy or compromised publisher could list)."""
    with open_repo() as r:
        rel = r.release("alpha", "1.1.0")
        role = r.tuf.channel("alpha")
        src = role.targets[rel.indexes["vmlinuz"]]
        path = rel.indexes["usr.img"]
        data = r.tuf.target_file(src).read_bytes()
        atomic_write(r.tuf.layout.target(src.hashes["sha256"], path), data)
        role.targets[path] = TargetFile(src.length, dict(src.hashes), path)
        r.tuf.commit()
    return "describes 300000 bytes"


CASES = {
    "a chunk that does not hash to its id": (lambda m, o, r: m.attack(
        f"chunks.castr/{chunk_relpath(new_chunk(o, 'usr.img'))}", Tamper()), "usr.img",
        "does not"),
    "a missing chunk": (lambda m, o, r: m.attack(
        f"chunks.castr/{chunk_relpath(new_chunk(o, 'initrd'))}", NotFound()), "initrd",
        "not in the chunk store"),
    "a chunk bigger than the index's maximum": (lambda m, o, r: m.attack(
        f"chunks.castr/{chunk_relpath(new_chunk(o, 'usr.img'))}",
        Serve(encode_chunk(bytes(65 * 1024 + 1)))), "usr.img", "larger than"),
    "endless data for a chunk": (lambda m, o, r: m.attack(
        f"chunks.castr/{chunk_relpath(new_chunk(o, 'usr.img'))}", Endless()), "usr.img",
        "endless data"),
    "a chunk served too slowly": (lambda m, o, r: m.attack(
        f"chunks.castr/{chunk_relpath(new_chunk(o, 'initrd'))}", Drip(0.5, 64)), "initrd",
        "slow retrieval"),
    "a missing store": (lambda m, o, r: m.attack("chunks.castr/*", NotFound()), "usr.img",
                        "HTTP 404"),
    "a truncated index": (lambda m, o, r: m.attack("targets/alpha/*.usr.img.caibx",
                                                   Truncate(100)), "usr.img", "caibx"),
    "an oversized index": (lambda m, o, r: m.attack("targets/alpha/*.initrd.caibx", Endless()),
                           "initrd", "caibx"),
    "an index that disagrees with its signed length": (lambda m, o, r: _doctor_index(o, r),
                                                       "usr.img", "describes 300000 bytes"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_the_full_file(
        case: str, two_releases, mirror, open_repo, repo: Path, make_client,  # noqa: ANN001
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    attack, fname, why = CASES[case]
    attack(mirror, open_repo, repo)
    client = make_client()
    caplog.set_level(logging.INFO, logger="channels")
    path, report = delta.download(client, client.offer("m", "1.0.0"), tmp_path / "dl",
                                  seeds_of(two_releases[0]))
    assert_exactly(path, tmp_path / "dl", two_releases[1])
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
             and "delta path failed" in r.getMessage()]
    by = {f.name: f for f in report.files}
    failed = [n for n in CHUNKED if by[n].method == "full"]
    assert fname in failed and len(lines) == len(failed), lines  # one line per such file
    line = next(ln for ln in lines if f".{fname}:" in ln)
    assert why in line and "\n" not in line and "downloading the full file" in line
    assert by[fname].fetched_bytes == by[fname].size and why in by[fname].reason
    if case != "a missing store":
        assert failed == [fname]  # the other files still came by delta


def test_an_unreadable_seed_is_one_line_per_file_and_the_full_files(
        two_releases, make_client, tmp_path: Path,  # noqa: ANN001
        caplog: pytest.LogCaptureFixture) -> None:
    client = make_client()
    caplog.set_level(logging.WARNING, logger="channels")
    bad = SeedSource(tmp_path)  # a directory: open() works, read() fails
    path, report = delta.download(client, client.offer("m", "1.0.0"), tmp_path / "dl",
                                  [*seeds_of(two_releases[0]), bad])
    assert_exactly(path, tmp_path / "dl", two_releases[1])
    lines = [r.getMessage() for r in caplog.records if "delta path failed" in r.getMessage()]
    assert len(lines) == 3 and all(f"{tmp_path}: cannot read the seed" in ln for ln in lines)
    assert {f.method for f in report.files if f.name in CHUNKED} == {"full"}


def test_fetched_chunks_survive_an_interrupted_download(
        two_releases, mirror, make_client, served, tmp_path: Path) -> None:  # noqa: ANN001
    v1, v2 = two_releases
    mirror.attack(f"chunks.castr/{chunk_relpath(new_chunk_of_last(served, v1, v2))}", NotFound())
    mirror.attack("targets/*tidehost-1.1.0.usr.img", NotFound())  # no full file either
    client = make_client()
    offer = client.offer("m", "1.0.0")
    with pytest.raises(ChannelError, match="HTTP 404"):
        delta.download(client, offer, tmp_path / "dl", seeds_of(v1))
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").iterdir())
    kept = {p.name for p in (client.state_dir / "chunks").rglob("*.cacnk")}
    assert kept  # verified chunks that arrived before the failure are kept ...
    mirror.clear()
    first = len(served.seen)
    path, report = delta.download(make_client(), offer, tmp_path / "dl", seeds_of(v1))
    assert_exactly(path, tmp_path / "dl", v2)
    again = {p.rsplit("/", 1)[1] for p, _ in served.seen[first:] if p.startswith("chunks.castr/")}
    assert not (again & kept)  # ... and not fetched again after the restart
    assert next(f for f in report.files if f.name == "usr.img").cached_bytes > 0


def new_chunk_of_last(served, v1: Path, v2: Path) -> str:  # noqa: ANN001
    """The last chunk of 1.1.0's usr.img that 1.0.0 lacks (others are fetched before it)."""
    from channels.casync.make import index_blob

    old = {c.id for c in index_blob(v1 / "usr.img").chunks}
    return [c.id for c in index_blob(v2 / "usr.img").chunks if c.id not in old][-1]
