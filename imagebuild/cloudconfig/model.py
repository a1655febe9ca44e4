"""The cluster file, parsed once into frozen dataclasses (see ``parse.py`` for the format)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

# Where things live on a host. /usr is read-only on Tidehost images, so scripts go to /etc.
TIDEHOST_ETC = "/etc/tidehost"
BIN_DIR = f"{TIDEHOST_ETC}/bin"
ETCD_TLS_DIR = f"{TIDEHOST_ETC}/etcd"
ETCDCTL_ENV = f"{TIDEHOST_ETC}/etcdctl.env"
UPDATE_YAML = f"{TIDEHOST_ETC}/update.yaml"
CHANNEL_ROOT = f"{TIDEHOST_ETC}/channel-root.json"
KUBEADM_CONFIG = f"{TIDEHOST_ETC}/kubeadm.yaml"
ETCD_DATA_DIR = "/var/lib/etcd/tidehost"

ETCD_PASSWORD = f"{ETCD_TLS_DIR}/password"  # the node's etcd password (the agent's token)

# The etcd keys the hosts share (documented in cloud-config/README.md).
KEY_PREFIX = "/tidehost"
NODES_PREFIX = f"{KEY_PREFIX}/nodes/"
SWARM_PREFIX = f"{KEY_PREFIX}/swarm/"
KUBEADM_PREFIX = f"{KEY_PREFIX}/kubeadm/"
KUBERNETES_PREFIX = "/registry/"  # kube-apiserver's store (its --etcd-prefix)


class Role(StrEnum):
    ETCD = "etcd"
    MANAGER = "manager"
    WORKER = "worker"


class Bootstrap(StrEnum):
    STATIC = "static"
    DNS = "dns"


class SchedulerKind(StrEnum):
    SWARM = "swarm"
    KUBEADM = "kubeadm"


class Strategy(StrEnum):
    ETCD_LOCK = "etcd-lock"
    FLEETLOCK = "fleetlock"
    REBOOT = "reboot"
    OFF = "off"


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    roles: frozenset[Role]
    mac: str | None = None  # the cluster NIC's MAC for a static network-config (nocloud)

    @property
    def cluster_mac(self) -> str:
        """``mac``, or one derived from the address: 52:54:00 + its last three octets."""
        if self.mac:
            return self.mac
        octets = [int(o) for o in self.address.split(".")[1:]]
        return "52:54:00:" + ":".join(f"{o:02x}" for o in octets)

    def has(self, role: Role) -> bool:
        return role in self.roles

    @property
    def sorted_roles(self) -> tuple[str, ...]:
        return tuple(r.value for r in Role if r in self.roles)


@dataclass(frozen=True)
class Etcd:
    bootstrap: Bootstrap = Bootstrap.STATIC
    members: tuple[str, ...] = ()  # node names; static: default every node with role etcd
    discovery_domain: str | None = None  # dns: the domain with the _etcd-server(-ssl)._tcp SRV
    client_port: int = 2379
    peer_port: int = 2380
    tls: bool = True
    cert_dir: Path | None = None  # resolved against the cluster file's folder
    token: str = ""  # --initial-cluster-token; default: the cluster name
    heartbeat_ms: int | None = None  # --heartbeat-interval; None: etcd's 100
    election_timeout_ms: int | None = None  # --election-timeout; None: etcd's 1000
    auth: bool = True  # users and roles (cloudconfig/auth.py); needs tls

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


@dataclass(frozen=True)
class Docker:
    registry_mirrors: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    log_driver: str = "journald"
    log_opts: tuple[tuple[str, str], ...] = ()
    data_path_addr: str | None = None  # swarm --data-path-addr; default: the node's address


@dataclass(frozen=True)
class Kubeadm:
    kubernetes_version: str = "stable-1"
    pod_subnet: str = "10.244.0.0/16"
    service_subnet: str = "10.96.0.0/12"
    cri_socket: str = "unix:///run/containerd/containerd.sock"


@dataclass(frozen=True)
class Scheduler:
    kind: SchedulerKind = SchedulerKind.SWARM
    kubeadm: Kubeadm = Kubeadm()


@dataclass(frozen=True)
class Window:
    days: tuple[Weekday, ...]
    start: str  # HH:MM
    length: str  # a duration like 1h30m (locksmith's REBOOT_WINDOW_LENGTH)
    tz: str = "UTC"


@dataclass(frozen=True)
class Drain:
    """The agent's ``drain:`` (None: the agent's default; swarm: on for a swarm cluster)."""

    swarm: bool | None = None
    timeout: int | None = None  # seconds
    on_timeout: str | None = None  # reboot | wait
    pre_reboot: tuple[str, ...] = ()  # shell words, as the agent's drain.pre_reboot
    post_health: tuple[str, ...] = ()


@dataclass(frozen=True)
class Updater:
    channel_url: str = ""
    channel_name: str = "stable"
    strategy: Strategy = Strategy.ETCD_LOCK
    group: str = "default"
    max: int = 1
    window: Window | None = None
    fleetlock_url: str | None = None
    channel_root: Path | None = None  # the channel's root.json, the hosts' trust anchor
    check_interval: int | None = None  # seconds; None: the agent's default (1h)
    check_jitter: int | None = None
    health_units: tuple[str, ...] | None = None  # None: what the node's roles run
    health_commands: tuple[str, ...] = ()  # shell words, as the agent's health.commands
    health_deadline: int | None = None  # seconds
    halt_after: int | None = None  # None: the agent's default (2); 0: never halt
    drain: Drain = Drain()


@dataclass(frozen=True)
class Network:
    """The cluster network, for static network-config (nocloud, vagrant)."""

    prefix: int = 24
    gateway: str | None = None
    nameservers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cluster:
    source: str  # the cluster file's path, for messages
    name: str
    nodes: tuple[Node, ...]
    domain: str | None = None
    network: Network = Network()
    etcd: Etcd = Etcd()
    docker: Docker = Docker()
    scheduler: Scheduler = Scheduler()
    updater: Updater = Updater()
    ssh_authorized_keys: tuple[str, ...] = ()

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise KeyError(f"no node {name!r} (known: {known})")

    @property
    def etcd_members(self) -> tuple[Node, ...]:
        return tuple(self.node(m) for m in self.etcd.members)

    @property
    def etcd_auth(self) -> bool:
        """etcd's authentication is on (it needs TLS: certificates and passwords)."""
        return self.etcd.tls and self.etcd.auth

    def forms_etcd(self, node: Node) -> bool:
        """``node`` is the first etcd member: it turns authentication on when etcd forms."""
        return self.etcd_auth and self.etcd.members[0] == node.name

    @property
    def managers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.has(Role.MANAGER))

    @property
    def first_manager(self) -> Node | None:
        return self.managers[0] if self.managers else None

    def fqdn(self, node: Node) -> str:
        return f"{node.name}.{self.domain}" if self.domain else node.name

    def etcd_host(self, node: Node) -> str:
        """How peers and clients name this member: its address, or its DNS name (dns)."""
        if self.etcd.bootstrap is Bootstrap.DNS:
            return f"{node.name}.{self.etcd.discovery_domain}"
        return node.address

    def client_endpoints(self) -> tuple[str, ...]:
        e = self.etcd
        return tuple(f"{e.scheme}://{self.etcd_host(n)}:{e.client_port}" for n in self.etcd_members)
