"""NoCloud seeds: meta-data and a static network-config that cloud-init itself can render."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml
from cloudconfig_helpers import EXAMPLE, cloud_init_schema

from imagebuild.cli import main
from imagebuild.cloudconfig import parse_cluster_file
from imagebuild.core.run import run


def test_seed_folder(tmp_path: Path, cluster_file, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["network"] = {"prefix": 24, "gateway": "10.77.0.1", "nameservers": ["10.77.0.1"]}
    data["nodes"][2]["mac"] = "52:54:00:AA:BB:CC"
    path = cluster_file(data)
    seed = tmp_path / "seed"
    argv = ["cloud-config", "seed", str(path), "--node", "node2", "--out", str(seed)]
    assert main([*argv, "--dhcp-mac", "52:54:00:12:34:56"]) == 0
    assert sorted(p.name for p in seed.iterdir()) == ["meta-data", "network-config", "user-data"]
    cloud_init_schema(seed / "user-data")
    meta = yaml.safe_load((seed / "meta-data").read_text())
    assert meta == {"instance-id": "demo-node2", "local-hostname": "node2"}

    # cloud-init's own renderer turns it into systemd-networkd files with the node's address.
    out = tmp_path / "net"
    run(["cloud-init", "devel", "net-convert", "-p", seed / "network-config", "-k", "yaml",
         "-d", out, "-D", "debian", "-O", "networkd"], capture=True)  # fmt: skip
    cluster_net = (out / "etc/systemd/network/10-cloud-init-cluster0.network").read_text()
    assert "Address=10.77.0.12/24" in cluster_net
    assert "MACAddress=52:54:00:4d:00:0c" in cluster_net
    assert "Gateway=10.77.0.1" in cluster_net
    assert "DHCP=ipv4" in (out / "etc/systemd/network/10-cloud-init-dhcp0.network").read_text()

    cluster = parse_cluster_file(path)
    assert cluster.node("node3").cluster_mac == "52:54:00:aa:bb:cc"
    assert cluster.node("node1").cluster_mac == "52:54:00:4d:00:0b"


def test_seed_and_its_iso_are_private(tmp_path: Path, cluster_file) -> None:
    """The seed holds the node's private keys: its folder 0700, user-data and the ISO 0600."""
    from imagebuild.lab.vm import make_seed, make_seed_iso

    path = cluster_file(yaml.safe_load(EXAMPLE.read_text()))
    seed = tmp_path / "seed"
    assert main(["cloud-config", "seed", str(path), "--node", "node1", "--out", str(seed)]) == 0
    assert stat.S_IMODE(seed.stat().st_mode) == 0o700
    assert stat.S_IMODE((seed / "user-data").stat().st_mode) == 0o600
    old = os.umask(0o022)
    try:
        iso = make_seed_iso(seed, tmp_path / "seed.iso")
        other = make_seed(tmp_path / "other.iso", "#cloud-config\n{}\n", "h")
    finally:
        os.umask(old)
    for f in (iso, other):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in iso.read_bytes()  # why: the node's keys are in it
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_seed_refuses_cloud_providers(cluster_file, capsys: pytest.CaptureFixture[str]) -> None:
    path = cluster_file(yaml.safe_load(EXAMPLE.read_text()))
    argv = ["cloud-config", "seed", str(path), "--node", "node1", "--out", "/nonexistent/x"]
    assert main([*argv, "--provider", "ec2"]) == 2
    assert "seeds are for nocloud, vagrant" in capsys.readouterr().err


def test_duplicate_mac(tmp_path: Path, cluster_file) -> None:
    from imagebuild.core.errors import ConfigError

    data = yaml.safe_load(EXAMPLE.read_text())
    data["nodes"][1]["mac"] = "52:54:00:4d:00:0b"  # node1's derived MAC
    with pytest.raises(
        ConfigError, match=r"nodes\[1\].mac: 52:54:00:4d:00:0b is already nodes\[0\]"
    ):
        parse_cluster_file(cluster_file(data))
