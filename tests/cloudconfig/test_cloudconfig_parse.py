"""The cluster file: the example parses; every mistake is one line naming the file and field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
from cloudconfig_helpers import EXAMPLE, example_data, write_cluster

from imagebuild.cloudconfig import Role, Strategy, parse_cluster_file
from imagebuild.cloudconfig.model import Bootstrap, SchedulerKind
from imagebuild.core.errors import ConfigError


def test_example_parses() -> None:
    c = parse_cluster_file(EXAMPLE)
    assert c.name == "demo"
    assert [n.name for n in c.nodes] == ["node1", "node2", "node3"]
    assert all(n.address.startswith("10.77.0.") for n in c.nodes)
    assert c.etcd.members == ("node1", "node2", "node3")
    assert c.etcd.tls and c.etcd.bootstrap is Bootstrap.STATIC
    assert c.etcd.cert_dir == EXAMPLE.parent / "certs"
    assert c.scheduler.kind is SchedulerKind.SWARM
    assert [n.name for n in c.managers] == ["node1", "node2", "node3"]  # odd: a quorum
    assert c.node("node3").roles == frozenset({Role.ETCD, Role.MANAGER})
    assert c.updater.halt_after == 2 and c.updater.drain.swarm is True
    assert c.updater.strategy is Strategy.ETCD_LOCK and c.updater.max == 1
    assert c.client_endpoints()[0] == "https://10.77.0.11:2379"


def test_defaults_and_normalisation(tmp_path: Path) -> None:
    data = example_data()
    del data["etcd"]["members"]
    data["updater"]["window"]["length"] = "90m"
    c = parse_cluster_file(write_cluster(tmp_path / "c.yaml", data))
    assert c.etcd.members == ("node1", "node2", "node3")  # every node with the etcd role
    assert c.etcd.token == "demo"
    assert c.updater.window is not None and c.updater.window.length == "1h30m"


def test_updater_check_health_and_channel_root(tmp_path: Path) -> None:
    data = example_data()
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo/root.json").write_text("{}")
    data["updater"]["channel"]["root"] = "repo/root.json"
    data["updater"]["check"] = {"interval": "1m30s", "jitter": 5}
    data["updater"]["health"] = {"units": ["docker.service"], "deadline": "10m"}
    u = parse_cluster_file(write_cluster(tmp_path / "c.yaml", data)).updater
    assert u.channel_root == tmp_path / "repo/root.json"  # relative to the cluster file
    assert (u.check_interval, u.check_jitter) == (90, 5)
    assert u.health_units == ("docker.service",) and u.health_deadline == 600


def _set(path: str, value: object) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        if value is _DELETE:
            del d[last]
        elif isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value

    return edit


_DELETE = object()


def _all(*edits: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        for e in edits:
            e(d)

    return edit


BAD: list[tuple[str, Callable[[dict], None], str]] = [
    ("bad-address", _set("nodes.1.address", "10.0.0.300"),
     "nodes[1].address: '10.0.0.300' is not an IPv4 address"),
    ("unknown-top-key", _set("flannel", {"net": "10.1.0.0/16"}), "flannel: unknown field"),
    ("unknown-node-key", _set("nodes.0.zone", "a"), "nodes[0].zone: unknown field"),
    ("unknown-role", _set("nodes.2.roles", ["etcd", "master"]),
     "nodes[2].roles[1]: 'master' is not one of etcd, manager, worker"),
    ("duplicate-name", _set("nodes.2.name", "node1"),
     "nodes[2].name: 'node1' is already nodes[0]'s name"),
    ("duplicate-address", _set("nodes.1.address", "10.77.0.11"),
     "nodes[1].address: 10.77.0.11 is already nodes[0]'s address"),
    ("manager-and-worker", _set("nodes.0.roles", ["manager", "worker"]),
     "nodes[0].roles: a node is a manager or a worker, not both"),
    ("no-roles", _set("nodes.0.roles", []), "nodes[0].roles: name at least one"),
    ("bad-name", _set("nodes.0.name", "Node_1"), "nodes[0].name: 'Node_1' is not a lowercase"),
    ("member-unknown", _set("etcd.members", ["node1", "node9"]),
     "etcd.members[1]: 'node9' is not a node's name"),
    ("member-without-role", _set("nodes.2.roles", ["worker"]),
     "etcd.members[2]: node 'node3' has no etcd role"),
    ("dns-without-domain", _set("etcd.bootstrap", "dns"),
     "etcd.discovery_domain: missing (needed for bootstrap: dns)"),
    ("bad-bootstrap", _set("etcd.bootstrap", "discovery-url"),
     "etcd.bootstrap: 'discovery-url' is not one of static, dns"),
    ("same-ports", _set("etcd.peer_port", 2379), "etcd.peer_port: 2379 is also the client_port"),
    ("tls-not-bool", _set("etcd.tls", "yes please"), "etcd.tls: expected true or false"),
    ("bad-mirror", _set("docker.registry_mirrors", ["ftp://x"]),
     "docker.registry_mirrors[0]: 'ftp://x' is not an http:// or https:// URL"),
    ("bad-scheduler", _set("scheduler.kind", "nomad"),
     "scheduler.kind: 'nomad' is not one of swarm, kubeadm"),
    ("kubeadm-opts-with-swarm", _set("scheduler.kubeadm", {"pod_subnet": "10.244.0.0/16"}),
     "scheduler.kubeadm: only for kind: kubeadm"),
    ("bad-strategy", _set("updater.strategy", "best-effort"),
     "updater.strategy: 'best-effort' is not one of etcd-lock, fleetlock, reboot, off"),
    ("fleetlock-without-url", _set("updater.strategy", "fleetlock"),
     "updater.fleetlock_url: missing"),
    ("no-channel-url", _set("updater.channel.url", _DELETE), "updater.channel.url: missing"),
    ("max-zero", _set("updater.max", 0), "updater.max: 0 is not a whole number from 1 to 10000"),
    ("bad-day", _set("updater.window.days", ["mon", "funday"]),
     "updater.window.days[1]: 'funday' is not one of mon, tue"),
    ("bad-start", _set("updater.window.start", "25:00"),
     "updater.window.start: '25:00' is not a time of day HH:MM"),
    ("bad-length", _set("updater.window.length", "forever"),
     "updater.window.length: 'forever' is not a duration"),
    ("bad-tz", _set("updater.window.tz", "Mars/Olympus"),
     "updater.window.tz: 'Mars/Olympus' is not an IANA time zone"),
    ("bad-interval", _set("updater.check", {"interval": "soon"}),
     "updater.check.interval: 'soon' is not a duration like 30s"),
    ("zero-interval", _set("updater.check", {"interval": 0}),
     "updater.check.interval: 0 is not from 1s to 366d"),
    ("unknown-check-field", _set("updater.check", {"every": "1m"}),
     "updater.check.every: unknown field (known: interval, jitter)"),
    ("health-units-not-a-list", _set("updater.health", {"units": "etcd.service"}),
     "updater.health.units: expected a list"),
    ("bad-health-deadline", _set("updater.health", {"deadline": "-5m"}),
     "updater.health.deadline: '-5m' is not a duration"),
    ("missing-channel-root", _set("updater.channel.root", "nowhere/root.json"),
     "updater.channel.root: "),
    ("bad-ssh-key", _set("ssh_authorized_keys", ["hunter2"]),
     "ssh_authorized_keys[0]: not an OpenSSH public key line"),
    ("workers-without-manager",
     _all(_set("nodes.0.roles", ["etcd"]), _set("nodes.1.roles", ["etcd", "worker"]),
          _set("nodes.2.roles", ["etcd"])),
     "nodes: there are workers but no node has the manager role"),
    ("no-nodes", _set("nodes", []), "nodes: expected a non-empty list of nodes"),
    ("bad-halt-after", _set("updater.halt_after", -1), "updater.halt_after: "),
    ("bad-drain-on-timeout", _set("updater.drain", {"on_timeout": "later"}),
     "updater.drain.on_timeout: 'later' is not one of reboot, wait"),
    ("no-cluster-name", _set("cluster", _DELETE), "cluster: missing"),
    ("auth-without-tls", _set("etcd", {"tls": False, "auth": True}),
     "etcd.auth: needs tls: true"),
    # issue 11, items 3 and 7: closed choices, strict types, bounds, no control characters
    ("channel-gamma", _set("updater.channel.name", "gamma"),
     "updater.channel.name: 'gamma' is not one of alpha, beta, stable"),
    ("strategy-true", _set("updater.strategy", True),
     "updater.strategy: True is not one of etcd-lock, fleetlock, reboot, off"),
    ("scheduler-number", _set("scheduler.kind", 1), "scheduler.kind: 1 is not one of swarm"),
    ("max-bool", _set("updater.max", True), "updater.max: True is not a whole number"),
    ("port-bool", _set("etcd.client_port", True), "etcd.client_port: True is not a whole number"),
    ("heartbeat-float", _set("etcd.heartbeat_ms", 100.5),
     "etcd.heartbeat_ms: 100.5 is not a whole number"),
    ("window-length-huge", _set("updater.window.length", "100000000d"),
     "updater.window.length: '100000000d' is not from 1m to 7d"),
    ("window-length-seconds", _set("updater.window.length", 30),
     "updater.window.length: 30 is not from 1m to 7d"),
    ("interval-huge", _set("updater.check", {"interval": "100000000d"}),
     "updater.check.interval: '100000000d' is not from 1s to 366d"),
    ("jitter-bool", _set("updater.check", {"jitter": False}),
     "updater.check.jitter: False is not a duration"),
    ("deadline-huge", _set("updater.health", {"deadline": "400d"}),
     "updater.health.deadline: '400d' is not from 1s to 366d"),
    ("days-backwards", _set("updater.window.days", ["fri-mon"]),
     "updater.window.days[0]: 'fri-mon' runs backwards"),
    ("days-three-ends", _set("updater.window.days", ["mon-wed-fri"]),
     "updater.window.days[0]: 'mon-wed-fri' is not a day or a range like mon-fri"),
    ("days-bad-end", _set("updater.window.days", ["mon-funday"]),
     "updater.window.days[0]: 'funday' is not one of mon, tue"),
    ("days-number", _set("updater.window.days", [1]),
     "updater.window.days[0]: 1 is not a day of the week"),
    ("days-empty", _set("updater.window.days", []),
     "updater.window.days: expected a list of days"),
    ("start-bool", _set("updater.window.start", True),
     "updater.window.start: True is not a time of day HH:MM"),
    ("cri-socket-newline", _all(_set("scheduler", {"kind": "kubeadm", "kubeadm": {
        "cri_socket": "unix:///run/containerd/containerd.sock\nreboot"}})),
     "scheduler.kubeadm.cri_socket: 'unix:///run/containerd/containerd.sock\\nreboot' contains "
     "the control character '\\n'"),
    ("cri-socket-relative", _set("scheduler", {"kind": "kubeadm",
                                               "kubeadm": {"cri_socket": "containerd.sock"}}),
     "scheduler.kubeadm.cri_socket: 'containerd.sock' is not a Unix socket"),
    ("cri-socket-number", _set("scheduler", {"kind": "kubeadm", "kubeadm": {"cri_socket": 7}}),
     "scheduler.kubeadm.cri_socket: expected a non-empty string, got 7"),
    ("log-opt-newline", _set("docker.log_opts", {"tag": "a\nb"}),
     "docker.log_opts.tag: 'a\\nb' contains the control character '\\n'"),
    ("ssh-key-newline", _set("ssh_authorized_keys", [
        "ssh-ed25519 AAAAC3Nza me\nruncmd: [reboot]"]),
     "ssh_authorized_keys[0]: 'ssh-ed25519 AAAAC3Nza me\\nruncmd: [reboot]' contains the control"),
    ("url-escape", _set("updater.channel.url", "http://10.77.0.1:8080/\x1b[2J"),
     "updater.channel.url: 'http://10.77.0.1:8080/\\x1b[2J' contains the control character"),
    ("unit-with-space", _set("updater.health", {"units": ["docker.service; reboot"]}),
     "updater.health.units[0]: 'docker.service; reboot' is not a systemd unit name"),
    ("command-open-quote", _set("updater.health", {"commands": ["docker 'info"]}),
     "updater.health.commands[0]: \"docker 'info\" is not a command line in shell words"),
    ("command-tab", _set("updater.health", {"commands": ["docker\tinfo"]}),
     "updater.health.commands[0]: 'docker\\tinfo' contains the control character '\\t'"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_cluster_file(tmp_path: Path, edit: Callable[[dict], None], message: str) -> None:
    data = copy.deepcopy(example_data())
    edit(data)
    path = write_cluster(tmp_path / "cluster.yaml", data)
    with pytest.raises(ConfigError) as err:
        parse_cluster_file(path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: "), text
    assert message in text, text


def test_values_mean_what_they_say(tmp_path: Path) -> None:
    """``strategy: off`` and ``start: 02:00`` unquoted (YAML 1.1 reads false and 120), day
    ranges as systemd's calendar writes them, durations in the agent's syntax."""
    text = EXAMPLE.read_text().replace("strategy: etcd-lock", "strategy: off")
    text = text.replace('start: "00:00"', "start: 02:00").replace("length: 24h", "length: 1d")
    text = text.replace("days: [mon, tue, wed, thu, fri, sat, sun]", "days: [mon-wed, fri..sat]")
    text = text.replace("check: {interval: 1m, jitter: 10s}", "check: {interval: 1h30m, jitter: 600}")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    u = parse_cluster_file(path).updater
    assert u.strategy is Strategy.OFF
    assert u.window is not None and u.window.start == "02:00" and u.window.length == "24h"
    assert [d.value for d in u.window.days] == ["mon", "tue", "wed", "fri", "sat"]
    assert (u.check_interval, u.check_jitter) == (5400, 600)
    data = example_data()
    data["updater"]["window"]["days"] = "sat,sun"
    u = parse_cluster_file(write_cluster(tmp_path / "d.yaml", data)).updater
    assert u.window is not None and [d.value for d in u.window.days] == ["sat", "sun"]


def test_invalid_utf8_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(EXAMPLE.read_bytes().replace(b"cluster: demo", b"cluster: d\xffmo"))
    with pytest.raises(ConfigError) as err:
        parse_cluster_file(p)
    assert str(err.value) == f"{p}: the cluster file is not UTF-8 text (byte {EXAMPLE.read_bytes().index(b'cluster: demo') + 10})"


def test_not_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("nodes: [\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not valid YAML \(line"):
        parse_cluster_file(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the cluster file"):
        parse_cluster_file(tmp_path / "nope.yaml")
