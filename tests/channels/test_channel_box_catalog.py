"""`channel publish --box-url-base` lists the build's Vagrant boxes in the channel's box
catalog, and `channel promote` carries them to the next channel without copying bytes."""

from __future__ import annotations

import json
from pathlib import Path

from imagebuild.cli import main


def test_publish_and_promote_keep_the_box_catalog_in_step(repo: Path, make_bundle) -> None:
    bundle = make_bundle("1.0.0")
    box = bundle.parent / "tidehost-1.0.0-vagrant-libvirt.box"
    box.write_bytes(b"box bytes")
    assert main(["channel", "publish", str(repo), str(bundle), "--channel", "alpha",
                 "--box-url-base", "http://boxes.test/"]) == 0  # fmt: skip
    alpha = json.loads((repo / "published/vagrant/alpha.json").read_text())
    (version,) = alpha["versions"]
    assert version["version"] == "1.0.0"
    (provider,) = version["providers"]
    assert provider["name"] == "libvirt" and provider["url"].startswith("http://boxes.test/")
    assert main(["channel", "promote", str(repo), "1.0.0", "--from", "alpha", "--to", "beta"]) == 0
    beta = json.loads((repo / "published/vagrant/beta.json").read_text())
    assert beta["versions"][0]["providers"] == version["providers"]  # same URL and checksum
    boxes = list((repo / "published/vagrant/boxes").iterdir())
    assert len(boxes) == 1  # stored once


def test_publish_without_boxes_writes_no_catalog(repo: Path, make_bundle) -> None:
    bundle = make_bundle("1.0.0")
    assert main(["channel", "publish", str(repo), str(bundle), "--channel", "alpha",
                 "--box-url-base", "http://boxes.test/"]) == 0  # fmt: skip
    assert not (repo / "published/vagrant/alpha.json").exists()
    assert main(["channel", "promote", str(repo), "1.0.0", "--from", "alpha", "--to", "beta"]) == 0
