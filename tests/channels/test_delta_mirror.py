"""``channel mirror`` (issue 12, item 6): a verified, resumable copy of a served repository
that ``channel serve`` (or any static server) serves as is; hosts trusting the same root.json
update from it, by delta; a second run fetches only what is new."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_mirror import Tamper

from channels import delta
from channels import mirror as mirror_mod
from channels.client import ChannelClient
from channels.delta import SeedSource
from channels.errors import TargetVerificationError
from channels.serve import ChannelServer
from imagebuild.cli import main


def test_mirror_then_a_host_updates_from_it(
        open_repo, delta_pair: tuple[Path, Path], served, root_json: Path,  # noqa: ANN001
        tmp_path: Path, capsys) -> None:  # noqa: ANN001
    v1, v2 = delta_pair
    with open_repo() as r:
        r.publish(v1, "alpha")
    site = tmp_path / "site"
    argv = ["channel", "mirror", served.url, str(site), "--root", str(root_json), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["releases"] == 1 and first["chunks_fetched"] > 0
    with open_repo() as r:
        r.publish(v2, "alpha")
        r.promote("1.0.0", "alpha", "beta")
    seen = len(served.seen)
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["targets_present"] >= 9 and second["chunks_fetched"] < 10  # only what is new
    payload = [p for p, _ in served.seen[seen:] if p.endswith((".usr.img", ".initrd"))]
    assert len(payload) == 2 and all("1.1.0" in p for p in payload)  # beta's 1.0.0: linked
    assert main(argv) == 0  # nothing new: no payload, no chunk fetched
    third = json.loads(capsys.readouterr().out)
    assert third["targets_fetched"] == third["chunks_fetched"] == 0

    local = ChannelServer(site, "127.0.0.1", 0)  # what `channel serve SITE` runs
    local.start()
    try:
        host = ChannelClient(local.url, "alpha", tmp_path / "host", root_json, timeout=5)
        offer = host.offer("m", "1.0.0")
        assert offer is not None and offer.version == "1.1.0"
        path, report = delta.download(host, offer, tmp_path / "dl",
                                      [SeedSource(v1 / f) for f in ("usr.img", "initrd")])
        for f in ("usr.img", "usr.verity", "vmlinuz", "initrd", "manifest.json"):
            assert (path / f).read_bytes() == (v2 / f).read_bytes()
        assert report.fetched_bytes < report.full_bytes / 5
        beta = ChannelClient(local.url, "beta", tmp_path / "host-b", root_json, timeout=5)
        assert beta.offer("m", "0.9.0").version == "1.0.0"  # type: ignore[union-attr]
    finally:
        local.stop()


def test_a_tampered_upstream_is_not_mirrored(
        open_repo, delta_pair: tuple[Path, Path], mirror, served,  # noqa: ANN001
        root_json: Path, tmp_path: Path) -> None:
    with open_repo() as r:
        r.publish(delta_pair[0], "alpha")
    mirror.attack("targets/*.usr.img", Tamper())
    with pytest.raises(TargetVerificationError):
        mirror_mod.mirror(served.url, tmp_path / "site", root_json, ["alpha"], timeout=5)
    site = tmp_path / "site/published"
    assert not list(site.rglob("*.usr.img"))  # nothing unverified placed ...
    assert not (site / "metadata/timestamp.json").exists()  # ... and nothing to serve yet
