"""``tidehost channel publish`` of format-2 releases: their UKIs must be signed by the db
certificate their manifest names, and a channel whose releases are signed takes no unsigned
or foreign-signed release (the hosts that took the earlier ones would refuse it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from channels.bundle import Slot, load_bundle
from imagebuild.cli import main


def db_fingerprint(keys: Path) -> str:
    return hashlib.sha256((keys / "db.cer").read_bytes()).hexdigest()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    assert main(["channel", "init", str(r)]) == 0
    return r


def test_signed_releases_publish_and_an_unsigned_one_is_refused(
        repo, tmp_path, tiny_pe, uki_maker, make_bundle, sbsign, fleet_keys, stranger_keys,
        capsys) -> None:  # fmt: skip
    fp = db_fingerprint(fleet_keys)
    ours = uki_maker(tiny_pe, sign=lambda d: sbsign(d, fleet_keys))
    v1 = make_bundle(tmp_path / "1", "1.0.0", {s: ours for s in Slot}, db_sha256=fp)
    assert main(["channel", "publish", str(repo), str(v1), "--channel", "alpha"]) == 0
    capsys.readouterr()
    unsigned = make_bundle(tmp_path / "2", "1.1.0", {s: uki_maker(tiny_pe) for s in Slot})
    assert main(["channel", "publish", str(repo), str(unsigned), "--channel", "alpha"]) == 4
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"tidehost: error: {unsigned}: its UKIs are unsigned, but channel alpha's "
                   f"releases are signed by db {fp[:12]}…: hosts that enforce Secure Boot "
                   "would refuse it")
    theirs = uki_maker(tiny_pe, sign=lambda d: sbsign(d, stranger_keys))
    lying = make_bundle(tmp_path / "3", "1.1.0", {s: theirs for s in Slot}, db_sha256=fp)
    assert main(["channel", "publish", str(repo), str(lying), "--channel", "alpha"]) == 4
    assert f"uki-a.efi: not signed by the db certificate {fp[:12]}…" in capsys.readouterr().err
    v2 = make_bundle(tmp_path / "4", "1.1.0", {s: ours for s in Slot}, db_sha256=fp)
    assert main(["channel", "publish", str(repo), str(v2), "--channel", "alpha"]) == 0
    assert load_bundle(v2).uki


def test_an_unsigned_channel_takes_unsigned_releases(repo, tmp_path, tiny_pe, uki_maker,
                                                     make_bundle) -> None:  # fmt: skip
    plain = make_bundle(tmp_path / "1", "1.0.0", {s: uki_maker(tiny_pe) for s in Slot})
    assert main(["channel", "publish", str(repo), str(plain), "--channel", "beta"]) == 0
