"""The release engineer's side, on disk: init, publish, promote, pull, refresh, bad input."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from channels import layout as layout_mod
from channels.create import create
from channels.errors import (
    BundleError,
    NotARepositoryError,
    PassphraseError,
    ReleaseError,
    SigningKeyError,
    UnknownChannelError,
)
from channels.repository import open_repository
from channels.rollout import parse_waves


def tree(repo: Path) -> dict[str, bytes]:
    pub = repo / "published"
    return {str(p.relative_to(pub)): p.read_bytes() for p in sorted(pub.rglob("*")) if p.is_file()}


def test_init_lays_out_keys_apart_from_the_published_tree(repo: Path) -> None:
    keys = repo / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    names = sorted(p.name for p in keys.iterdir())
    assert names == sorted(f"{r}.pem" for r in
                           ("root", "targets", "snapshot", "timestamp", "alpha", "beta", "stable"))
    for p in keys.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    published = tree(repo)
    assert not any(b"PRIVATE KEY" in data for data in published.values())
    assert "metadata/root.json" in published and "metadata/timestamp.json" in published
    targets = Metadata.from_bytes(published["metadata/1.targets.json"]).signed
    roles = targets.delegations.roles
    assert list(roles) == ["alpha", "beta", "stable"]
    for chan, role in roles.items():
        assert role.paths == [f"{chan}/*"] and role.terminating
    assert len({k for r in roles.values() for k in r.keyids}) == 3  # a key per channel
    root = Metadata.from_bytes(published["metadata/root.json"]).signed
    assert root.consistent_snapshot
    assert root.expires > targets.expires


def test_publish_stores_targets_once_by_hash(open_repo, make_bundle, repo: Path) -> None:  # noqa: ANN001
    bundle = make_bundle("1.2.0")
    with open_repo() as r:
        rel, stats = r.publish(bundle, "alpha")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert stats.bytes_copied == sum(f["size"] for f in manifest["files"].values()) + len(
        (bundle / "manifest.json").read_bytes())
    stored = {p.name for p in (repo / "published/targets").iterdir()}
    for fname, info in manifest["files"].items():
        assert f"{info['sha256']}.tidehost-1.2.0.{fname}" in stored
    assert rel.files["usr.img"] == "alpha/tidehost-1.2.0.usr.img"
    with open_repo() as r:
        assert r.index("alpha").current.version == "1.2.0"  # type: ignore[union-attr]
        role = r.tuf.channels["alpha"].signed
        assert set(role.targets) == {"alpha/index.json", *rel.files.values(),
                                     *rel.indexes.values()}
        assert set(rel.indexes) == {"usr.img", "vmlinuz", "initrd"}
        assert r.index("beta").releases == ()


def test_promote_copies_no_payload_bytes(open_repo, make_bundle, repo: Path) -> None:  # noqa: ANN001
    targets = repo / "published/targets"

    def files() -> dict[str, int]:
        return {str(p.relative_to(targets)): p.stat().st_ino
                for p in targets.rglob("*") if p.is_file()}

    with open_repo() as r:
        alpha, _ = r.publish(make_bundle("1.2.0"), "alpha")
    before = files()
    with open_repo() as r:
        beta, stats = r.promote("1.2.0", "alpha", "beta", waves=parse_waves("50%@0h,100%@1h"))
    after = files()
    assert stats.bytes_copied == 0
    new = set(after) - set(before)
    index = {n for n in new if n.endswith(".index.json")}
    assert len(index) == 2 and len({after[n] for n in index}) == 1  # beta's index (+ flat link)
    links = new - index
    assert len(links) == 8 and all(n.startswith("beta/") for n in links)  # 5 files, 3 .caibx
    # the release's files: hard links to alpha's, the same inodes (bytes stored once)
    alpha_inodes = {ino for n, ino in before.items() if n.startswith("alpha/")}
    assert {after[n] for n in links} <= alpha_inodes
    assert all(after[n] == ino for n, ino in before.items())  # nothing rewritten
    with open_repo() as r:
        a, b = r.tuf.channels["alpha"].signed.targets, r.tuf.channels["beta"].signed.targets
        for fname, apath in alpha.files.items():
            bpath = beta.files[fname]
            assert bpath.startswith("beta/")
            assert a[apath].hashes == b[bpath].hashes and a[apath].length == b[bpath].length
        assert [str(w) for w in r.index("beta").current.rollout.waves] == ["50%@0h", "100%@1h"]  # type: ignore[union-attr]
        with pytest.raises(ReleaseError, match="promotion goes alpha -> beta -> stable"):
            r.promote("1.2.0", "beta", "alpha")
        with pytest.raises(ReleaseError, match="channel alpha has no release 9.9.9"):
            r.promote("9.9.9", "alpha", "stable")


def test_versions_only_go_forward_unless_pulled(open_repo, make_bundle) -> None:  # noqa: ANN001
    with open_repo() as r:
        r.publish(make_bundle("1.2.0"), "alpha")
        r.publish(make_bundle("1.3.0"), "alpha")
        with pytest.raises(ReleaseError, match=r"1\.2\.5 is not newer than channel alpha's "
                           r"current 1\.3\.0"):
            r.publish(make_bundle("1.2.5"), "alpha")
        with pytest.raises(ReleaseError, match="already has release 1.3.0"):
            r.publish(make_bundle("1.3.0", seed="b"), "alpha")
        r.pull("alpha", "1.3.0")
        assert r.index("alpha").current.version == "1.2.0"  # type: ignore[union-attr]
        r.publish(make_bundle("1.2.5", seed="c"), "alpha")  # allowed: the newest was withdrawn
        assert [x.version for x in r.index("alpha").releases] == ["1.2.0", "1.2.5", "1.3.0"]
        with pytest.raises(ReleaseError, match="already pulled"):
            r.pull("alpha", "1.3.0")
        with pytest.raises(ReleaseError, match="pulled from alpha; not promoting"):
            r.promote("1.3.0", "alpha", "beta")


def test_pause_resume_rollout_roundtrip(open_repo, make_bundle) -> None:  # noqa: ANN001
    with open_repo() as r:
        r.publish(make_bundle("1.2.0"), "alpha", waves=parse_waves("10%@0h,100%@2h"))
        assert r.pause("alpha", "1.2.0").rollout.paused
        with pytest.raises(ReleaseError, match="already paused"):
            r.pause("alpha", "1.2.0")
        assert r.index("alpha").current.rollout.paused  # type: ignore[union-attr]
        assert not r.resume("alpha", "1.2.0").rollout.paused
        with pytest.raises(ReleaseError, match="not paused"):
            r.resume("alpha", "1.2.0")
        new = r.rollout("alpha", "1.2.0", parse_waves("1%@0h,100%@72h"))
        assert str(new.rollout.waves[0]) == "1%@0h"
        assert r.status()["channels"]["alpha"]["releases"][0]["waves"] == "1%@0h,100%@72h"


def test_bundle_that_mismatches_its_manifest_changes_nothing(open_repo, make_bundle,  # noqa: ANN001
                                                               repo: Path) -> None:
    with open_repo() as r:
        r.publish(make_bundle("1.0.0"), "alpha")
    before = tree(repo)
    bundle = make_bundle("1.1.0")
    with open(bundle / "vmlinuz", "r+b") as f:
        f.write(b"X")
    with open_repo() as r, pytest.raises(BundleError, match=r"vmlinuz: sha256 does not match"):
        r.publish(bundle, "alpha")
    after = tree(repo)
    # payload files copied before the bad one may stay (unreferenced, named by hash);
    # no metadata and no index changed, and no temporary file is left behind.
    assert {k: v for k, v in after.items() if k.startswith("metadata/")} == \
        {k: v for k, v in before.items() if k.startswith("metadata/")}
    assert not [k for k in after if "/." in k]
    (bundle / "initrd").unlink()
    with open_repo() as r, pytest.raises(BundleError, match=r"initrd: missing from the bundle"):
        r.publish(bundle, "alpha")
    (bundle / "initrd").write_bytes(b"short")
    with open_repo() as r, pytest.raises(BundleError, match=r"initrd: size 5 does not match"):
        r.publish(bundle, "alpha")
    (bundle / "manifest.json").write_text("{not json")
    with open_repo() as r, pytest.raises(BundleError, match="manifest.json: not valid JSON"):
        r.publish(bundle, "alpha")


def test_unknown_channel(open_repo, make_bundle) -> None:  # noqa: ANN001
    with open_repo() as r:
        with pytest.raises(UnknownChannelError, match="unknown channel 'edge'"):
            r.publish(make_bundle("1.0.0"), "edge")
        with pytest.raises(UnknownChannelError, match="unknown channel 'nightly'"):
            r.pause("nightly", "1.0.0")


def test_passphrase_protects_keys(tmp_path: Path, make_bundle) -> None:  # noqa: ANN001
    repo = tmp_path / "enc"
    create(repo, b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in (repo / "keys/alpha.pem").read_bytes()
    before = tree(repo)
    bundle = make_bundle("1.0.0")
    from channels.releases import ChannelRepository

    with pytest.raises(PassphraseError, match=r"keys/alpha\.pem is encrypted: set "
                       "TIDEHOST_KEY_PASSPHRASE"):
        with open_repository(repo, None) as tuf:
            ChannelRepository(tuf).publish(bundle, "alpha")
    with pytest.raises(PassphraseError, match=r"keys/alpha\.pem: wrong passphrase"):
        with open_repository(repo, b"wrong") as tuf:
            ChannelRepository(tuf).publish(bundle, "alpha")
    assert tree(repo) == before  # refused before anything was written
    with open_repository(repo, b"correct horse") as tuf:
        ChannelRepository(tuf).publish(bundle, "alpha")
    assert tree(repo) != before


def test_passphrase_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from channels.keys import read_passphrase

    assert read_passphrase(None) is None
    monkeypatch.setenv("TIDEHOST_KEY_PASSPHRASE", "from-env")
    assert read_passphrase(None) == b"from-env"
    f = tmp_path / "pass"
    f.write_text("from-file\n")
    assert read_passphrase(f) == b"from-file"
    with pytest.raises(PassphraseError, match="cannot read"):
        read_passphrase(tmp_path / "missing")


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(NotARepositoryError, match="no such directory"):
        with open_repository(tmp_path / "nope"):
            pass
    (tmp_path / "somedir").mkdir()
    (tmp_path / "somedir/file").write_text("x")
    with pytest.raises(NotARepositoryError, match="not a channel repository"):
        with open_repository(tmp_path / "somedir"):
            pass
    with pytest.raises(NotARepositoryError, match="exists and is not empty"):
        create(tmp_path / "somedir", None)
    (tmp_path / "somedir/tidehost-channels.json").write_text("[]")
    with pytest.raises(NotARepositoryError, match="not a tidehost-channel-repository file"):
        with open_repository(tmp_path / "somedir"):
            pass


def test_crash_before_timestamp_leaves_old_repository(open_repo, make_bundle, repo: Path,  # noqa: ANN001
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with open_repo() as r:
        r.publish(make_bundle("1.0.0"), "alpha")
    ts = (repo / "published/metadata/timestamp.json").read_bytes()
    real = layout_mod.atomic_write

    def crash(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path.name == "timestamp.json":
            raise OSError(28, "No space left on device")
        real(path, data, mode)

    monkeypatch.setattr("channels.repository.atomic_write", crash)
    with open_repo() as r, pytest.raises(OSError, match="No space"):
        r.publish(make_bundle("1.1.0"), "alpha")
    monkeypatch.setattr("channels.repository.atomic_write", real)
    assert (repo / "published/metadata/timestamp.json").read_bytes() == ts
    with open_repo() as r:  # the repository is the old one, and it can move on
        assert r.index("alpha").current.version == "1.0.0"  # type: ignore[union-attr]
        r.publish(make_bundle("1.1.0", seed="again"), "alpha")
        assert r.index("alpha").current.version == "1.1.0"  # type: ignore[union-attr]


def test_refresh_resigns_snapshot_and_timestamp(open_repo, repo: Path) -> None:  # noqa: ANN001
    with open_repo() as r:
        ts_v, snap_v = r.tuf.timestamp.signed.version, r.tuf.snapshot.signed.version
        old_exp = r.tuf.timestamp.signed.expires
        extra = r.tuf.refresh()
        assert extra == []  # nothing is past half its lifetime yet
    with open_repo() as r:
        assert r.tuf.timestamp.signed.version == ts_v + 1
        assert r.tuf.snapshot.signed.version == snap_v + 1
        assert r.tuf.timestamp.signed.expires >= old_exp
        assert sorted(r.tuf.refresh(all_roles=True)) == ["alpha", "beta", "root", "stable",
                                                          "targets"]
    assert (repo / "published/metadata/2.root.json").is_file()
    assert not [p for p in (repo / "published").rglob(".*")]
    assert os.path.getsize(repo / "published/metadata/timestamp.json") < 600


def test_refresh_resigns_roles_past_half_their_life(open_repo, repo: Path) -> None:  # noqa: ANN001
    from datetime import UTC, datetime, timedelta

    later = datetime.now(UTC) + timedelta(days=20)  # channel roles live 30 days, targets 90
    with open_repo(clock=lambda: later) as r:
        assert r.tuf.refresh() == ["alpha", "beta", "stable"]
        assert r.tuf.channels["alpha"].signed.expires > later + timedelta(days=29)
    with open_repo(clock=lambda: later) as r:
        assert r.tuf.refresh() == []


def test_newest_numbered_root_wins_over_a_stale_copy(open_repo, repo: Path) -> None:  # noqa: ANN001
    with open_repo() as r:
        r.tuf.rotate_key("root")
    md = repo / "published/metadata"
    (md / "root.json").write_bytes((md / "1.root.json").read_bytes())  # crash before the copy
    with open_repo() as r:
        assert r.tuf.root.signed.version == 2
        r.tuf.rotate_key("timestamp")
    assert (md / "3.root.json").is_file()
    assert (md / "root.json").read_bytes() == (md / "3.root.json").read_bytes()


def test_damaged_index_at_rest_is_reported(open_repo, make_bundle, repo: Path) -> None:  # noqa: ANN001
    with open_repo() as r:
        r.publish(make_bundle("1.0.0"), "alpha")
    index = next((repo / "published/targets").glob("*.index.json"))
    index.write_bytes(index.read_bytes().replace(b"1.0.0", b"6.6.6"))
    with open_repo() as r, pytest.raises(NotARepositoryError, match=r"index\.json: channel "
                                                                      "index damaged"):
        r.publish(make_bundle("1.1.0"), "alpha")


def test_refresh_works_with_the_root_key_offline(open_repo, repo: Path,  # noqa: ANN001
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from datetime import UTC, datetime, timedelta

    offline = repo.parent / "root.pem"
    (repo / "keys/root.pem").rename(offline)
    later = datetime.now(UTC) + timedelta(days=200)  # root (365 days) is past half its life
    with open_repo(clock=lambda: later) as r:
        assert r.tuf.refresh() == ["alpha", "beta", "stable", "targets"]
    assert "role root expires" in caplog.text and "not re-signed" in caplog.text
    with open_repo(clock=lambda: later) as r, pytest.raises(SigningKeyError, match="root.pem"):
        r.tuf.refresh(all_roles=True)
    offline.rename(repo / "keys/root.pem")
    with open_repo(clock=lambda: later) as r:
        assert r.tuf.refresh() == ["root"]
