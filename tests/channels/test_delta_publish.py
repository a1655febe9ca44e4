"""Publishing chunks (issue 12, item 2): one store shared by every release and channel, one
``.caibx`` per chunked file as a signed target, Debian's casync reading both, promotion
copying nothing, and ``channel gc`` keeping exactly what listed releases use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from channels.casync.index import BlobIndex
from channels.casync.store import ChunkStore
from channels.errors import NotARepositoryError
from channels.gc import collect
from imagebuild.cli import main

CASYNC = shutil.which("casync")
CHUNKED = ("usr.img", "vmlinuz", "initrd")


def tidehost(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    code = main(["channel", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def index_files(repo: Path, channel: str, version: str) -> dict[str, Path]:
    """The stored .caibx of each chunked file of a release, found through its channel index."""
    from channels.releases import ChannelRepository
    from channels.repository import open_repository

    with open_repository(repo) as tuf:
        rel = ChannelRepository(tuf).release(channel, version)
        role = tuf.channels[channel].signed.targets
        return {f: tuf.target_file(role[p]) for f, p in rel.indexes.items()}


def test_publish_stores_each_chunk_once_and_casync_reads_the_store(
        repo: Path, delta_pair: tuple[Path, Path], capsys, tmp_path: Path) -> None:  # noqa: ANN001
    v1, v2 = delta_pair
    out1 = tidehost(capsys, "publish", repo, v1, "--channel", "alpha")
    out2 = tidehost(capsys, "publish", repo, v2, "--channel", "alpha")
    full = sum((v1 / f).stat().st_size for f in CHUNKED)
    new1 = int(out1.split("chunks: ")[1].split()[0])
    new2, _, reused2 = (int(w) for w in (out2.split("chunks: ")[1].split()[0],
                                         "0", out2.split("), ")[1].split()[0]))
    assert new1 == full  # the first release: every byte is new to the store
    assert new2 < full / 20 and reused2 == sum((v2 / f).stat().st_size for f in CHUNKED) - new2
    store = ChunkStore(repo / "published/chunks.castr")
    ids = set(store.ids())
    idx = {v: index_files(repo, "alpha", v) for v in ("1.0.0", "1.1.0")}
    used = {c.id for files in idx.values() for p in files.values()
            for c in BlobIndex.read(p).chunks}
    assert used == ids  # one store, no chunk twice, none unused
    if CASYNC is None:
        pytest.skip("Debian's casync is not installed")
    for version, bundle in (("1.0.0", v1), ("1.1.0", v2)):
        for fname, caibx in idx[version].items():
            dest = tmp_path / f"{version}.{fname}"
            subprocess.run([CASYNC, "extract", f"--store={store.root}", "--seed-output=no",
                            str(caibx), str(dest)], check=True, capture_output=True)
            assert dest.read_bytes() == (bundle / fname).read_bytes(), (version, fname)


def test_promotion_relists_the_indexes_and_copies_no_chunk(
        repo: Path, delta_pair: tuple[Path, Path], capsys) -> None:  # noqa: ANN001
    tidehost(capsys, "publish", repo, delta_pair[0], "--channel", "alpha")
    store = repo / "published/chunks.castr"
    before = {p: p.stat().st_ino for p in store.rglob("*")}
    out = tidehost(capsys, "promote", repo, "1.0.0", "--from", "alpha", "--to", "beta")
    assert "0 bytes copied" in out
    assert {p: p.stat().st_ino for p in store.rglob("*")} == before
    alpha, beta = index_files(repo, "alpha", "1.0.0"), index_files(repo, "beta", "1.0.0")
    assert set(beta) == set(CHUNKED)
    for fname in CHUNKED:
        assert "/beta/" in str(beta[fname]) and os.path.samefile(alpha[fname], beta[fname])


def _age(root: Path, seconds: float) -> None:
    """Make everything under ``root`` look ``seconds`` old (past gc's grace)."""
    t = time.time() - seconds
    for p in root.rglob("*"):
        os.utime(p, (t, t), follow_symlinks=False)


def test_gc_keeps_what_listed_releases_use_and_removes_the_rest(
        repo: Path, open_repo, delta_pair: tuple[Path, Path], make_bundle,  # noqa: ANN001
        capsys) -> None:  # noqa: ANN001
    v1, v2 = delta_pair
    tidehost(capsys, "publish", repo, v1, "--channel", "alpha")
    tidehost(capsys, "publish", repo, v2, "--channel", "alpha")
    tidehost(capsys, "promote", repo, "1.0.0", "--from", "alpha", "--to", "beta")
    tidehost(capsys, "pull", repo, "1.0.0", "--channel", "alpha")
    pub = repo / "published"
    store = ChunkStore(pub / "chunks.castr")
    # litter: a chunk and a target of a publish that failed before signing, a stale temp
    orphan = bytes(range(256)) * 64
    from channels.casync.index import chunk_id

    store.put(chunk_id(orphan), orphan)
    store.commit()
    (pub / "targets/alpha" / ("0" * 64 + ".tidehost-9.9.9.usr.img")).write_bytes(b"x" * 100)
    (pub / "targets" / ("0" * 64 + ".tidehost-9.9.9.usr.img")).write_bytes(b"x" * 100)
    (pub / "targets/alpha/.index.json.tmp1234").write_bytes(b"{")
    listed_before = {p.relative_to(pub) for p in pub.rglob("*") if p.is_file()}

    st = json.loads(tidehost(capsys, "gc", repo, "--json"))
    assert st["removed_targets"] == 0 and st["removed_chunks"] == 0  # all young: grace
    _age(pub, 7200)
    dry = json.loads(tidehost(capsys, "gc", repo, "--dry-run", "--json"))
    assert {p.relative_to(pub) for p in pub.rglob("*") if p.is_file()} == listed_before
    out = tidehost(capsys, "gc", repo)
    assert out.startswith(f"removed {dry['removed_targets']} target files")
    after = {p.relative_to(pub) for p in pub.rglob("*") if p.is_file()}
    gone = listed_before - after
    assert chunk_id(orphan) not in set(store.ids())
    assert not any("9.9.9" in str(p) or ".tmp" in str(p) for p in after)
    # superseded channel indexes went (every publish, promote and pull wrote a new one) ...
    assert any(p.name.endswith(".index.json") for p in gone)
    for chan in ("alpha", "beta"):
        assert len([p for p in after if p.parts[:2] == ("targets", chan)
                    and p.name.endswith(".index.json")]) == 1
    # ... and every file a listed release uses stayed, pulled 1.0.0 in alpha included
    with open_repo() as r:
        for chan in ("alpha", "beta"):
            role = r.tuf.channels[chan].signed.targets
            for rel in r.index(chan).releases:
                for path in (*rel.files.values(), *rel.indexes.values()):
                    tf = role[path]
                    stored = r.tuf.target_file(tf)
                    assert stored.is_file() and stored.stat().st_size == tf.length
                    flat = pub / "targets" / f"{tf.hashes['sha256']}.{path.split('/')[1]}"
                    assert flat.is_file()  # the flat name of older clients stays too
                for p in rel.indexes.values():
                    for c in BlobIndex.read(r.tuf.target_file(role[p])).chunks:
                        assert store.has(c.id)
    # a damaged listed index: gc cannot tell what is needed, so it removes nothing
    caibx = index_files(repo, "alpha", "1.1.0")["usr.img"]
    caibx.chmod(0o644)
    caibx.write_bytes(caibx.read_bytes()[:-40])
    with open_repo() as r, pytest.raises(NotARepositoryError, match="nothing removed"):
        collect(r.tuf, grace=0)
