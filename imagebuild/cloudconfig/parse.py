"""Parse a cluster file into a frozen ``Cluster``; every mistake is a one-line ConfigError.

Strict types (an int is not a bool), no control characters in any string, every closed
choice and span checked here, with the agent's own bounds (``updater/fields.py``): what
parses here renders into scripts, units, etcd flags and YAML that mean what they say.

The format (every field, with its default; see cloud-config/examples/cluster.yaml)::

    cluster: demo                      # [a-z0-9-]
    domain: null                       # optional DNS domain: fqdn = NAME.DOMAIN
    network: {prefix: 24, gateway: null, nameservers: []}   # for seeds' static network-config
    nodes:                             # at least one; names, addresses and MACs unique
      - {name: node1, address: 10.77.0.11, roles: [etcd, manager]}   # roles: etcd manager worker
        # mac: optional cluster NIC MAC (default 52:54:00 + the address's last three octets)
    etcd:
      bootstrap: static                # static | dns
      members: null                    # node names; default: every node with the etcd role
      discovery_domain: null           # dns: domain holding _etcd-server-ssl._tcp SRV records
      client_port: 2379
      peer_port: 2380
      tls: true
      cert_dir: certs                  # from `tidehost cloud-config certs`; relative to this file
      token: null                      # --initial-cluster-token; default: the cluster name
      heartbeat_ms: null               # --heartbeat-interval (etcd: 100); raise on slow hosts
      election_timeout_ms: null        # --election-timeout (etcd: 1000), >= 5 x heartbeat
      auth: true                       # (default: tls) users per node, roles by key prefix;
                                       #   the first member turns it on (cloudconfig/auth.py)
    docker:
      registry_mirrors: []             # URLs
      insecure_registries: []          # host[:port] or CIDR
      log_driver: journald
      log_opts: {}
      data_path_addr: null             # swarm data path address; default: the node's address
    scheduler:
      kind: swarm                      # swarm | kubeadm (bring kubeadm/kubelet/containerd)
      kubeadm: {kubernetes_version: stable-1, pod_subnet: 10.244.0.0/16,
                service_subnet: 10.96.0.0/12, cri_socket: unix:///run/containerd/containerd.sock}
                                       # cri_socket: unix:///ABSOLUTE/PATH (or /ABSOLUTE/PATH)
    updater:
      channel: {url: http://10.77.0.1:8080/, name: stable,   # alpha | beta | stable
                root: null}                 # the channel's root.json (relative to this file);
                                            # null: the one baked into the image
      check: {interval: null, jitter: null} # how often the agent polls (agent: 1h, 10m);
                                            # durations: seconds, or 30s 15m 1h30m 1d; <= 366d
      health:                               # what must be up before a new boot is blessed
        units: null                         # null: etcd.service (etcd members), docker.service
        commands: []                        # shell commands; etcd members always add a
        deadline: null                      #   local `etcdctl endpoint health` (agent: 5m)
      strategy: etcd-lock              # etcd-lock | fleetlock | reboot | off (unquoted too)
      group: default
      max: 1                           # 1 to 10000
      fleetlock_url: null              # required for strategy fleetlock
      window: null                     # {days: [mon-fri], start: "02:00", length: 1h30m, tz: UTC}
                                       # days as systemd's calendar: mon, mon-fri, sat,sun;
                                       # length 1m to 7d
      halt_after: null                 # rollbacks in the group that halt a version (agent: 2)
      drain: {swarm: null, timeout: null, # swarm: drain the node before its reboot (null: on
              on_timeout: null,        #   for swarm clusters); reboot | wait; shell commands
              pre_reboot: [], post_health: []}
    ssh_authorized_keys: []            # for the user `core`
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from channels.bundle import CHANNELS
from imagebuild.cloudconfig.model import (
    Bootstrap,
    Cluster,
    Docker,
    Drain,
    Etcd,
    Kubeadm,
    Network,
    Node,
    Role,
    Scheduler,
    SchedulerKind,
    Strategy,
    Updater,
    Weekday,
    Window,
)
from imagebuild.core import fields as f
from imagebuild.core.errors import ConfigError

TOP = ("cluster", "domain", "network", "nodes", "etcd", "docker", "scheduler", "updater",
       "ssh_authorized_keys")  # fmt: skip


def parse_cluster_file(path: Path) -> Cluster:
    path = Path(path)
    return parse_cluster_text(f.read_text(path, "cluster file"), str(path), path.parent)


def parse_cluster_text(text: str, source: str, base: Path) -> Cluster:
    raw = f.yaml_mapping(text, source, "cluster file")
    w = f"{source}: "
    for key in raw:
        if key not in TOP:
            raise ConfigError(f"{w}{key}: unknown field (known: {', '.join(TOP)})")
    top: Mapping[str, Any] = raw
    if "cluster" not in top:
        raise ConfigError(f"{w}cluster: missing (the cluster's name)")
    name = f.name(f"{w}cluster", top["cluster"])
    domain = f.domain(f"{w}domain", top["domain"]) if top.get("domain") is not None else None
    nodes = _nodes(w, top.get("nodes"))
    network = _network(w, top.get("network"))
    etcd = _etcd(w, top.get("etcd"), nodes, name, base)
    scheduler = _scheduler(w, top.get("scheduler"))
    _check_scheduler_roles(w, nodes)
    return Cluster(
        source=source,
        name=name,
        domain=domain,
        network=network,
        nodes=nodes,
        etcd=etcd,
        docker=_docker(w, top.get("docker")),
        scheduler=scheduler,
        updater=_updater(w, top.get("updater"), base),
        ssh_authorized_keys=f.listof(f.ssh_key)(
            f"{w}ssh_authorized_keys", top.get("ssh_authorized_keys")
        ),
    )


def _nodes(w: str, raw: Any) -> tuple[Node, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{w}nodes: expected a non-empty list of nodes")
    nodes: list[Node] = []
    for i, item in enumerate(raw):
        where = f"{w}nodes[{i}]"
        m = f.mapping(where, item, ("name", "address", "roles", "mac"))
        for key in ("name", "address", "roles"):
            if key not in m:
                raise ConfigError(f"{where}.{key}: missing")
        node = Node(
            name=f.name(f"{where}.name", m["name"]),
            address=f.ipv4(f"{where}.address", m["address"]),
            roles=frozenset(f.listof(f.enum(Role))(f"{where}.roles", m["roles"])),
            mac=f.mac(f"{where}.mac", m["mac"]) if m.get("mac") is not None else None,
        )
        if not node.roles:
            raise ConfigError(f"{where}.roles: name at least one of etcd, manager, worker")
        if node.has(Role.MANAGER) and node.has(Role.WORKER):
            raise ConfigError(f"{where}.roles: a node is a manager or a worker, not both")
        for j, other in enumerate(nodes):
            if other.name == node.name:
                raise ConfigError(f"{where}.name: {node.name!r} is already nodes[{j}]'s name")
            if other.address == node.address:
                raise ConfigError(
                    f"{where}.address: {node.address} is already nodes[{j}]'s address"
                )
            if other.cluster_mac == node.cluster_mac:
                raise ConfigError(f"{where}.mac: {node.cluster_mac} is already nodes[{j}]'s MAC")
        nodes.append(node)
    return tuple(nodes)


def _network(w: str, raw: Any) -> Network:
    where = f"{w}network"
    m = f.mapping(where, raw, ("prefix", "gateway", "nameservers"))
    gw = m.get("gateway")
    return Network(
        prefix=f.int_range(8, 30)(f"{where}.prefix", m.get("prefix", 24)),
        gateway=f.ipv4(f"{where}.gateway", gw) if gw is not None else None,
        nameservers=f.listof(f.ipv4)(f"{where}.nameservers", m.get("nameservers")),
    )


def _etcd(w: str, raw: Any, nodes: tuple[Node, ...], cluster: str, base: Path) -> Etcd:
    where = f"{w}etcd"
    m = f.mapping(where, raw, ("bootstrap", "members", "discovery_domain", "client_port",
                               "peer_port", "tls", "cert_dir", "token", "heartbeat_ms",
                               "election_timeout_ms", "auth"))  # fmt: skip
    bootstrap = f.enum(Bootstrap)(f"{where}.bootstrap", m.get("bootstrap", "static"))
    by_name = {n.name: n for n in nodes}
    if m.get("members") is None:
        members = tuple(n.name for n in nodes if n.has(Role.ETCD))
        if not members:
            raise ConfigError(f"{w}nodes: no node has the etcd role (the cluster needs etcd)")
    else:
        members = f.listof(f.name)(f"{where}.members", m["members"])
        if not members:
            raise ConfigError(f"{where}.members: name at least one member")
        for i, member in enumerate(members):
            if member not in by_name:
                raise ConfigError(f"{where}.members[{i}]: {member!r} is not a node's name")
            if not by_name[member].has(Role.ETCD):
                raise ConfigError(f"{where}.members[{i}]: node {member!r} has no etcd role")
    discovery = m.get("discovery_domain")
    if bootstrap is Bootstrap.DNS and discovery is None:
        raise ConfigError(f"{where}.discovery_domain: missing (needed for bootstrap: dns)")
    if bootstrap is Bootstrap.STATIC and discovery is not None:
        raise ConfigError(f"{where}.discovery_domain: only for bootstrap: dns")
    client_port = f.int_range(1, 65535)(f"{where}.client_port", m.get("client_port", 2379))
    peer_port = f.int_range(1, 65535)(f"{where}.peer_port", m.get("peer_port", 2380))
    if client_port == peer_port:
        raise ConfigError(f"{where}.peer_port: {peer_port} is also the client_port")
    cert_dir = Path(f.string(f"{where}.cert_dir", m.get("cert_dir", "certs"))).expanduser()
    hb, et = m.get("heartbeat_ms"), m.get("election_timeout_ms")
    hb = f.int_range(10, 10_000)(f"{where}.heartbeat_ms", hb) if hb is not None else None
    et = f.int_range(50, 60_000)(f"{where}.election_timeout_ms", et) if et is not None else None
    if et is not None and et < 5 * (hb or 100):
        raise ConfigError(f"{where}.election_timeout_ms: {et} is less than 5 x the heartbeat "
                          f"({hb or 100} ms)")  # fmt: skip
    tls = f.boolean(f"{where}.tls", m.get("tls", True))
    auth = f.boolean(f"{where}.auth", m.get("auth", tls))
    if auth and not tls:
        raise ConfigError(f"{where}.auth: needs tls: true (certificates carry the users)")
    return Etcd(
        bootstrap=bootstrap,
        members=members,
        discovery_domain=f.domain(f"{where}.discovery_domain", discovery) if discovery else None,
        client_port=client_port,
        peer_port=peer_port,
        tls=tls,
        auth=auth,
        cert_dir=cert_dir if cert_dir.is_absolute() else base / cert_dir,
        token=f.token(f"{where}.token", m["token"]) if m.get("token") is not None else cluster,
        heartbeat_ms=hb,
        election_timeout_ms=et,
    )


def _docker(w: str, raw: Any) -> Docker:
    where = f"{w}docker"
    m = f.mapping(where, raw, ("registry_mirrors", "insecure_registries", "log_driver",
                               "log_opts", "data_path_addr"))  # fmt: skip
    dpa = m.get("data_path_addr")
    return Docker(
        registry_mirrors=f.listof(f.url)(f"{where}.registry_mirrors", m.get("registry_mirrors")),
        insecure_registries=f.listof(f.registry)(
            f"{where}.insecure_registries", m.get("insecure_registries")
        ),
        log_driver=f.token(f"{where}.log_driver", m.get("log_driver", "journald")),
        log_opts=f.str_map(f"{where}.log_opts", m.get("log_opts")),
        data_path_addr=f.ipv4(f"{where}.data_path_addr", dpa) if dpa is not None else None,
    )


def _scheduler(w: str, raw: Any) -> Scheduler:
    where = f"{w}scheduler"
    m = f.mapping(where, raw, ("kind", "kubeadm"))
    kind = f.enum(SchedulerKind)(f"{where}.kind", m.get("kind", "swarm"))
    km = f.mapping(
        f"{where}.kubeadm",
        m.get("kubeadm"),
        ("kubernetes_version", "pod_subnet", "service_subnet", "cri_socket"),
    )
    if km and kind is not SchedulerKind.KUBEADM:
        raise ConfigError(f"{where}.kubeadm: only for kind: kubeadm")
    d = Kubeadm()
    return Scheduler(
        kind=kind,
        kubeadm=Kubeadm(
            kubernetes_version=f.token(f"{where}.kubeadm.kubernetes_version",
                                       km.get("kubernetes_version", d.kubernetes_version)),
            pod_subnet=_cidr(f"{where}.kubeadm.pod_subnet", km.get("pod_subnet", d.pod_subnet)),
            service_subnet=_cidr(f"{where}.kubeadm.service_subnet",
                                 km.get("service_subnet", d.service_subnet)),
            cri_socket=f.socket(f"{where}.kubeadm.cri_socket", km.get("cri_socket", d.cri_socket)),
        ),
    )  # fmt: skip


def _cidr(where: str, raw: Any) -> str:
    try:
        return str(ipaddress.IPv4Network(f.string(where, raw)))
    except ValueError:
        raise ConfigError(f"{where}: {raw!r} is not an IPv4 network like 10.244.0.0/16") from None


def _check_scheduler_roles(w: str, nodes: tuple[Node, ...]) -> None:
    if any(n.has(Role.WORKER) for n in nodes) and not any(n.has(Role.MANAGER) for n in nodes):
        raise ConfigError(f"{w}nodes: there are workers but no node has the manager role")


def _updater(w: str, raw: Any, base: Path) -> Updater:
    where = f"{w}updater"
    if raw is None:
        raise ConfigError(f"{where}: missing (at least updater.channel.url)")
    m = f.mapping(where, raw, ("channel", "strategy", "group", "max", "window", "fleetlock_url",
                               "check", "health", "halt_after", "drain"))  # fmt: skip
    ch = f.mapping(f"{where}.channel", m.get("channel"), ("url", "name", "root"))
    if "url" not in ch:
        raise ConfigError(f"{where}.channel.url: missing (the channel repository's URL)")
    raw_strategy = m.get("strategy", "etcd-lock")
    # ``strategy: off`` unquoted is YAML 1.1's false: it means off, as in update.yaml
    strategy = Strategy.OFF if raw_strategy is False else \
        f.enum(Strategy)(f"{where}.strategy", raw_strategy)
    fleetlock = m.get("fleetlock_url")
    if strategy is Strategy.FLEETLOCK and fleetlock is None:
        raise ConfigError(f"{where}.fleetlock_url: missing (needed for strategy: fleetlock)")
    return Updater(
        channel_url=f.url(f"{where}.channel.url", ch["url"]),
        channel_name=f.one_of(CHANNELS)(f"{where}.channel.name", ch.get("name", "stable")),
        strategy=strategy,
        group=f.name(f"{where}.group", m.get("group", "default")),
        max=f.int_range(1, f.MAX_SLOTS)(f"{where}.max", m.get("max", 1)),
        window=_window(f"{where}.window", m["window"]) if m.get("window") is not None else None,
        fleetlock_url=f.url(f"{where}.fleetlock_url", fleetlock) if fleetlock else None,
        channel_root=_root_json(f"{where}.channel.root", ch.get("root"), base),
        **_check(f"{where}.check", m.get("check")),
        **_health(f"{where}.health", m.get("health")),
        halt_after=f.int_range(0, 10_000)(f"{where}.halt_after", m["halt_after"])
        if m.get("halt_after") is not None else None,
        drain=_drain(f"{where}.drain", m.get("drain")),
    )


def _drain(where: str, raw: Any) -> Drain:
    m = f.mapping(where, raw, ("swarm", "timeout", "on_timeout", "pre_reboot", "post_health"))
    on_timeout = m.get("on_timeout")
    if on_timeout is not None and on_timeout not in ("reboot", "wait"):
        raise ConfigError(f"{where}.on_timeout: {on_timeout!r} is not one of reboot, wait")
    timeout = m.get("timeout")
    return Drain(
        swarm=f.boolean(f"{where}.swarm", m["swarm"]) if m.get("swarm") is not None else None,
        timeout=f.span(1, 2 * f.DAY)(f"{where}.timeout", timeout) if timeout is not None
        else None,
        on_timeout=on_timeout,
        pre_reboot=f.listof(f.command)(f"{where}.pre_reboot", m.get("pre_reboot")),
        post_health=f.listof(f.command)(f"{where}.post_health", m.get("post_health")),
    )


def _root_json(where: str, raw: Any, base: Path) -> Path | None:
    if raw is None:
        return None
    path = Path(f.string(where, raw)).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ConfigError(f"{where}: {path}: no such file (the channel's metadata/root.json)")
    return path


def _check(where: str, raw: Any) -> dict[str, Any]:
    m = f.mapping(where, raw, ("interval", "jitter"))
    out = {}
    for key, lo in (("interval", 1), ("jitter", 0)):
        if m.get(key) is not None:
            out[f"check_{key}"] = f.span(lo)(f"{where}.{key}", m[key])
    return out


def _health(where: str, raw: Any) -> dict[str, Any]:
    m = f.mapping(where, raw, ("units", "commands", "deadline"))
    out: dict[str, Any] = {
        "health_commands": f.listof(f.command)(f"{where}.commands", m.get("commands")),
    }
    if m.get("units") is not None:
        out["health_units"] = f.listof(f.unit)(f"{where}.units", m["units"])
    if m.get("deadline") is not None:
        out["health_deadline"] = f.span(1)(f"{where}.deadline", m["deadline"])
    return out


def _window(where: str, raw: Any) -> Window:
    m = f.mapping(where, raw, ("days", "start", "length", "tz"))
    for key in ("days", "start", "length"):
        if key not in m:
            raise ConfigError(f"{where}.{key}: missing")
    return Window(
        days=tuple(Weekday(d) for d in f.weekdays(f"{where}.days", m["days"])),
        start=f.hhmm(f"{where}.start", m["start"]),
        length=f.duration(f"{where}.length", m["length"]),
        tz=f.timezone(f"{where}.tz", m.get("tz", "UTC")),
    )
