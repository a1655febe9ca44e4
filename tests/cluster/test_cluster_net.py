"""`tidehost vm cluster` without booting: addresses, QEMU and SSH arguments, state, and the
real namespace + bridge + taps that `up` creates and `down` removes (no VM, a second)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imagebuild.cli import main
from imagebuild.cloudconfig.parse import parse_cluster_file, parse_cluster_text
from imagebuild.core.errors import ConfigError, VMError
from imagebuild.lab import channel as clusterchannel
from imagebuild.lab.channel import serve_address, trust_repository
from imagebuild.lab.cluster import (
    BRIDGE,
    ClusterState,
    NodeState,
    UpOptions,
    bridge_address,
    create_network,
    down,
    netns_exists,
    netns_name,
    status,
    up,
    user_mac,
)
from imagebuild.lab.vm import VM

EXAMPLE = Path(__file__).resolve().parents[2] / "cloud-config" / "examples" / "cluster.yaml"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root"
)


def _cluster(name: str, tmp_path: Path, extra: str = ""):  # type: ignore[no-untyped-def]
    text = EXAMPLE.read_text().replace("cluster: demo", f"cluster: {name}") + extra
    return parse_cluster_text(text, str(tmp_path / "cluster.yaml"), tmp_path)


def test_bridge_is_the_gateway_or_the_subnets_first_host(tmp_path: Path) -> None:
    assert bridge_address(parse_cluster_file(EXAMPLE)) == "10.77.0.1/24"
    c = _cluster("gw", tmp_path, "network: {prefix: 16, gateway: 10.77.9.9}\n")
    assert bridge_address(c) == "10.77.9.9/16"
    c = _cluster("clash", tmp_path, "network: {gateway: 10.77.0.12}\n")
    with pytest.raises(VMError, match="10.77.0.12 is also a node's address"):
        bridge_address(c)


def test_ssh_nic_macs_never_collide_with_cluster_macs() -> None:
    cluster = parse_cluster_file(EXAMPLE)
    cluster_macs = {n.cluster_mac for n in cluster.nodes}
    ssh_macs = {user_mac(i) for i in range(len(cluster.nodes))}
    assert len(ssh_macs) == 3 and not ssh_macs & cluster_macs


def test_vm_in_a_namespace_gets_a_tap_nic_and_an_ssh_proxy(tmp_path: Path) -> None:
    vm = VM(disk=tmp_path / "d.qcow2", ssh_key=tmp_path / "k", netns="th-x", ssh_port=22001,
            tap="tap1", tap_mac="52:54:00:4d:00:0c", user_mac="02:74:68:00:00:02",
            accel="tcg", cpus=1, workdir=tmp_path, serial_log=tmp_path / "s.log")  # fmt: skip
    cmd = vm.command()
    assert cmd[:4] == ["ip", "netns", "exec", "th-x"]
    assert "tap,id=n1,ifname=tap1,script=no,downscript=no" in cmd
    assert "virtio-net-pci,netdev=n1,mac=52:54:00:4d:00:0c" in cmd
    assert "virtio-net-pci,netdev=n0,mac=02:74:68:00:00:02" in cmd
    assert "user,id=n0,hostfwd=tcp:127.0.0.1:22001-:22" in cmd
    assert not any("socket" in a or "mcast" in a for a in cmd)  # never multicast networking
    assert "ProxyCommand=ip netns exec th-x nc 127.0.0.1 22001" in vm.ssh_args()


def test_a_plain_vm_keeps_its_old_command(tmp_path: Path) -> None:
    vm = VM(disk=tmp_path / "d.raw", accel="tcg", workdir=tmp_path, ssh_port=2222,
            serial_log=tmp_path / "s.log")  # fmt: skip
    cmd = vm.command()
    assert cmd[0] == "qemu-system-x86_64" and "-netdev" in cmd
    assert not any(a.startswith("tap,") for a in cmd)
    assert "virtio-net-pci,netdev=n0" in cmd
    assert not any("ProxyCommand" in a for a in vm.ssh_args())


def test_state_round_trips(tmp_path: Path) -> None:
    state = ClusterState(cluster="c", netns="th-c", bridge=BRIDGE, gateway="10.77.0.1/24",
                         image="/i.qcow2", ssh_key="/k", state_dir=str(tmp_path),
                         nodes=(NodeState("n1", "10.77.0.11", "tap0", "52:54:00:4d:00:0b",
                                          22000, str(tmp_path / "n1"), pid=42),))  # fmt: skip
    state.save()
    assert ClusterState.load(tmp_path) == state
    assert state.vm("n1").ssh_port == 22000
    with pytest.raises(VMError, match="no node 'n9'"):
        state.node("n9")


def test_status_and_down_of_a_cluster_that_is_not_up(tmp_path: Path) -> None:
    cluster = _cluster("t-notup", tmp_path)
    assert status(cluster, tmp_path) == "cluster t-notup: not up"
    if os.geteuid() == 0:
        assert down(cluster, tmp_path) == []


def test_up_refuses_a_missing_image_before_doing_anything(tmp_path: Path) -> None:
    cluster = _cluster("t-noimg", tmp_path)
    with pytest.raises(VMError, match="no such disk image"):
        up(cluster, UpOptions(image=tmp_path / "nope.qcow2", state_root=tmp_path / "state"))
    assert not (tmp_path / "state").exists()


@needs_root
def test_network_is_created_inside_its_namespace_and_removed(tmp_path: Path) -> None:
    cluster = _cluster(f"t-net{os.getpid() % 10000}", tmp_path)
    ns = netns_name(cluster.name)
    sdir = tmp_path / cluster.name
    sdir.mkdir()
    nodes = tuple(NodeState(n.name, n.address, f"tap{i}", n.cluster_mac, 22000 + i,
                            str(sdir / n.name)) for i, n in enumerate(cluster.nodes))  # fmt: skip
    state = ClusterState(cluster=cluster.name, netns=ns, bridge=BRIDGE,
                         gateway=bridge_address(cluster), image="/i", ssh_key="/k",
                         state_dir=str(sdir), nodes=nodes)  # fmt: skip
    state.save()
    try:
        create_network(state)
        assert netns_exists(ns)
        links = subprocess.run(["ip", "-n", ns, "-br", "link"], capture_output=True, text=True,
                               check=True).stdout  # fmt: skip
        for tap in ("tap0", "tap1", "tap2"):
            assert tap in links
        brif = subprocess.run(["ip", "-n", ns, "link", "show", "master", BRIDGE],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert all(t in brif for t in ("tap0", "tap1", "tap2"))
        addr = subprocess.run(["ip", "-n", ns, "-br", "addr", "show", BRIDGE],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "10.77.0.1/24" in addr
        # Nothing of it outside the namespace.
        host = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        assert BRIDGE not in host
        image = tmp_path / "i.qcow2"
        image.touch()
        with pytest.raises(VMError, match="already up"):
            up(cluster, UpOptions(image=image, state_root=tmp_path))
    finally:
        removed = down(cluster, tmp_path)
    assert not netns_exists(ns)
    assert f"netns {ns}" in removed and "tap tap2" in removed and f"bridge {BRIDGE}" in removed
    assert not sdir.exists()


def test_cli_status_of_a_cluster_that_is_not_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(EXAMPLE.read_text().replace("cluster: demo", "cluster: t-cli"))
    assert main(["vm", "cluster", "status", str(cfg), "--state-dir", str(tmp_path)]) == 0
    assert "cluster t-cli: not up" in capsys.readouterr().out
    assert main(["vm", "cluster", "up", str(cfg), "--image", str(tmp_path / "x.qcow2"),
                 "--state-dir", str(tmp_path)]) == 1  # fmt: skip
    assert "no such disk image" in capsys.readouterr().err



def test_slow_raft_for_loaded_hosts_reaches_etcds_flags(tmp_path: Path) -> None:
    from imagebuild.cloudconfig.render import etcd_flags

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["etcd"] |= {"heartbeat_ms": 1000, "election_timeout_ms": 10000}
    text = yaml.safe_dump(doc)
    cluster = parse_cluster_text(text, "c.yaml", tmp_path)
    flags = etcd_flags(cluster, cluster.nodes[0])
    assert "--heartbeat-interval=1000" in flags and "--election-timeout=10000" in flags
    for key in ("heartbeat_ms", "election_timeout_ms"):  # unset: etcd's own defaults
        del doc["etcd"][key]
    plain = parse_cluster_text(yaml.safe_dump(doc), "c.yaml", tmp_path)
    assert not any("heartbeat" in f or "election" in f
                   for f in etcd_flags(plain, plain.nodes[0]))
    bad = text.replace("10000", "2000")
    with pytest.raises(ConfigError, match="less than 5 x the heartbeat"):
        parse_cluster_text(bad, "c.yaml", tmp_path)


def test_served_channel_must_be_on_the_bridge(tmp_path: Path) -> None:
    c = _cluster("t-url", tmp_path)
    assert serve_address(c, bridge_address(c)) == ("10.77.0.1", 8080)
    other = dataclasses.replace(c, updater=dataclasses.replace(
        c.updater, channel_url="http://192.0.2.7:8080/"))  # fmt: skip
    with pytest.raises(VMError, match=r"updater.channel.url: http://192.0.2.7:8080/ is not on "
                                      r"the cluster bridge \(serve it as http://10.77.0.1:PORT/\)"):
        serve_address(other, bridge_address(other))


@needs_root
def test_up_serve_runs_the_channel_inside_the_namespace(tmp_path: Path) -> None:
    """`up --serve REPO`'s server: reachable on the bridge from inside, trusted, stopped by down."""
    repo = tmp_path / "repo"
    assert main(["channel", "init", str(repo)]) == 0
    cluster = trust_repository(_cluster(f"t-ch{os.getpid() % 10000}", tmp_path), repo)
    root = repo / "published/metadata/root.json"
    assert cluster.updater.channel_root == root  # the nodes will trust this repository
    ns = netns_name(cluster.name)
    sdir = tmp_path / cluster.name
    sdir.mkdir()
    state = ClusterState(cluster=cluster.name, netns=ns, bridge=BRIDGE,
                         gateway=bridge_address(cluster), image="/i", ssh_key="/k",
                         state_dir=str(sdir))  # fmt: skip
    state.save()
    try:
        create_network(state)
        pid = clusterchannel.start(ns, repo, *serve_address(cluster, state.gateway), sdir)
        dataclasses.replace(state, server_pid=pid).save()
        fetch = ("import urllib.request; print(urllib.request.urlopen("
                 "'http://10.77.0.1:8080/metadata/root.json', timeout=5).read().decode())")
        got = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", fetch],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert json.loads(got) == json.loads(root.read_text())
        assert "running" in status(cluster, tmp_path)
    finally:
        removed = down(cluster, tmp_path)
    assert f"channel server (pid {pid})" in removed
    assert not clusterchannel.alive(pid)


@needs_root
def test_prober_asks_from_inside_the_namespace_only(tmp_path: Path) -> None:
    """The rollout's probe runs in a thread that entered the namespace; the rest stays out."""
    from imagebuild.lab.net import enter_netns
    from imagebuild.lab.probe import Prober, probe

    repo = tmp_path / "repo"
    assert main(["channel", "init", str(repo)]) == 0
    cluster = _cluster(f"t-pr{os.getpid() % 10000}", tmp_path)
    sdir = tmp_path / cluster.name
    sdir.mkdir()
    state = ClusterState(cluster=cluster.name, netns=netns_name(cluster.name), bridge=BRIDGE,
                         gateway=bridge_address(cluster), image="/i", ssh_key="/k",
                         state_dir=str(sdir))  # fmt: skip
    state.save()
    url = "http://10.77.0.1:8080/metadata/root.json"
    try:
        create_network(state)
        pid = clusterchannel.start(state.netns, repo, "10.77.0.1", 8080, sdir)
        dataclasses.replace(state, server_pid=pid).save()
        with Prober(state.netns, [url], every=0.2) as prober:
            prober.wait_answering(20)
        assert prober.last_answer.startswith("{")
        assert probe([url], timeout=1) == "-"  # this thread is not in the namespace
        with pytest.raises(VMError, match="netns th-nosuch"):
            enter_netns("th-nosuch")
    finally:
        down(cluster, tmp_path)
    assert not clusterchannel.alive(pid)
