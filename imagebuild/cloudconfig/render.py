"""Render one node's user-data from the templates in ``cloud-config/``.

The environment is jinja2's ``SandboxedEnvironment`` with ``StrictUndefined``: a template
cannot reach Python internals and an undefined variable is an error. Structured content
(daemon.json, update.yaml, cluster.json, the etcd flags) is built here from the typed cluster
and handed to the templates as text; the templates decide which files and units a node gets.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment

from channels.bundle import control_character
from imagebuild.cloudconfig.auth import node_users
from imagebuild.cloudconfig.certs import NodeCerts, load_node_certs, node_passwords
from imagebuild.cloudconfig.model import (
    BIN_DIR,
    CHANNEL_ROOT,
    ETCD_DATA_DIR,
    ETCD_PASSWORD,
    ETCD_TLS_DIR,
    ETCDCTL_ENV,
    KUBEADM_CONFIG,
    KUBEADM_PREFIX,
    NODES_PREFIX,
    SWARM_PREFIX,
    UPDATE_YAML,
    Bootstrap,
    Cluster,
    Node,
    Role,
    SchedulerKind,
    Strategy,
)
from imagebuild.cloudconfig.providers import PROVIDERS
from imagebuild.core.errors import ConfigError
from imagebuild.core.fields import read_text
from imagebuild.core.files import data_dir
from imagebuild.core.platforms import Provider

MAIN_TEMPLATE = "user-data.yaml.j2"
HEADER = "#cloud-config\n"


def default_template_dir() -> Path:
    """The templates of ``cloud-config/``, shipped in this package as ``templates/``."""
    return data_dir("imagebuild.cloudconfig", "templates")


def environment(template_dir: Path) -> SandboxedEnvironment:
    if not (template_dir / MAIN_TEMPLATE).is_file():
        raise ConfigError(
            f"{template_dir}: no {MAIN_TEMPLATE} (not a cloud-config template folder)"
        )
    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["json"] = lambda v: json.dumps(v)
    env.filters["yaml"] = lambda v: json.dumps(v)  # a JSON scalar is a YAML flow scalar
    env.filters["sh"] = sh_word
    env.filters["unit"] = unit_word
    return env


def _printable(v: object, into: str) -> str:
    s = str(v)
    bad = control_character(s)
    if bad:  # parse refuses these; a template must never write one either
        raise ConfigError(f"refusing to write {s!r} into {into}: control character {bad}")
    return s


def sh_word(v: object) -> str:
    """One word of a shell script (every value a ``.sh.j2`` writes goes through this)."""
    return shlex.quote(_printable(v, "a shell script"))


_UNIT_SAFE = re.compile(r"^[A-Za-z0-9_./:=,@+-]+$")


def unit_word(v: object) -> str:
    """One word of a unit's ``ExecStart=`` (systemd.service "Command lines"): double-quoted
    with ``\\`` and ``"`` escaped when it is not plain; ``%`` (specifiers) and ``$``
    (variables) doubled always."""
    s = _printable(v, "a unit").replace("%", "%%").replace("$", "$$")
    if _UNIT_SAFE.match(s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_user_data(
    cluster: Cluster,
    node_name: str,
    provider: Provider,
    *,
    extra_ssh_keys: tuple[str, ...] = (),
    template_dir: Path | None = None,
) -> str:
    """The ``#cloud-config`` text for one node; raises ConfigError before anything is written."""
    try:
        node = cluster.node(node_name)
    except KeyError as e:
        raise ConfigError(f"{cluster.source}: --node: {e.args[0]}") from None
    if node.has(Role.ETCD) and node.name not in cluster.etcd.members:
        raise ConfigError(
            f"{cluster.source}: etcd.members: does not include {node.name!r}, "
            f"which has the etcd role (members: {', '.join(cluster.etcd.members)})"
        )
    certs = load_node_certs(cluster, node) if cluster.etcd.tls else None
    tdir = template_dir or default_template_dir()
    env = environment(tdir)
    context = build_context(cluster, node, provider, certs, extra_ssh_keys)
    try:
        text = env.get_template(MAIN_TEMPLATE).render(context)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(
            f"{tdir / (e.name or MAIN_TEMPLATE)}: line {e.lineno}: {e.message}"
        ) from None
    except jinja2.TemplateError as e:
        raise ConfigError(f"{tdir}: template error: {e.message}") from None
    check_user_data(text, f"{tdir / MAIN_TEMPLATE} (node {node.name})")
    return text


def check_user_data(text: str, where: str) -> dict[str, Any]:
    """The rendered text must be a ``#cloud-config`` YAML mapping."""
    if not text.startswith(HEADER):
        raise ConfigError(f"{where}: output does not start with #cloud-config")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(
            f"{where}: rendered invalid YAML (line {mark.line + 1 if mark else '?'})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: rendered YAML is not a mapping")
    return data


def build_context(
    cluster: Cluster,
    node: Node,
    provider: Provider,
    certs: NodeCerts | None,
    extra_ssh_keys: tuple[str, ...],
) -> dict[str, Any]:
    info = PROVIDERS[provider]
    first = cluster.first_manager
    keys = tuple(dict.fromkeys(cluster.ssh_authorized_keys + extra_ssh_keys))
    return {
        "cluster": cluster,
        "node": node,
        "roles": list(node.sorted_roles),
        "provider": provider.value,
        "info": info,
        "headers": dict(info.headers),
        "datasources": list(info.datasources),
        "fqdn": cluster.fqdn(node),
        "ssh_authorized_keys": list(keys),
        "is_etcd": node.has(Role.ETCD),
        "is_manager": node.has(Role.MANAGER),
        "is_worker": node.has(Role.WORKER),
        "is_first_manager": first is not None and first.name == node.name,
        "first_manager": first or node,
        "swarm_role": "manager" if node.has(Role.MANAGER) else "worker",
        "scheduler": cluster.scheduler.kind.value,
        "kubeadm": cluster.scheduler.kubeadm,
        "bootstrap": cluster.etcd.bootstrap.value,
        "tls": cluster.etcd.tls,
        "certs": _certs_context(certs),
        "etcd_auth": cluster.etcd_auth,
        "forms_etcd": cluster.forms_etcd(node),
        "auth_users": _auth_users(cluster) if cluster.forms_etcd(node) else [],
        "etcd_password_path": ETCD_PASSWORD,
        "client_endpoints": list(cluster.client_endpoints()),
        "etcd_flags": etcd_flags(cluster, node),
        "data_path_addr": cluster.docker.data_path_addr or node.address,
        "docker_json": docker_json(cluster),
        "update_yaml": update_yaml(cluster, node),
        "cluster_json": cluster_json(cluster, node, provider),
        "bin_dir": BIN_DIR,
        "etcd_tls_dir": ETCD_TLS_DIR,
        "etcdctl_env": ETCDCTL_ENV,
        "update_yaml_path": UPDATE_YAML,
        "channel_root_path": CHANNEL_ROOT,
        "channel_root_json": _read_root(cluster),
        "nodes_prefix": NODES_PREFIX,
        "swarm_prefix": SWARM_PREFIX,
        "kubeadm_prefix": KUBEADM_PREFIX,
        "kubeadm_config_path": KUBEADM_CONFIG,
    }


def _read_root(cluster: Cluster) -> str:
    path = cluster.updater.channel_root
    if path is None:
        return ""
    return read_text(path, "channel root.json (updater.channel.root)")


def _certs_context(certs: NodeCerts | None) -> dict[str, str]:
    if certs is None:
        return {}
    out = {"ca": certs.ca, "password": certs.password}
    for name, pem in certs.files:
        out[name.replace(".", "_")] = pem
    return out


def _auth_users(cluster: Cluster) -> list[dict[str, Any]]:
    """What the first member's tidehost-etcd-auth creates: each node's user, role, password."""
    passwords = node_passwords(cluster)
    return [{"name": u.name, "role": u.role, "grants": u.grants, "password": passwords[u.name]}
            for u in node_users(cluster)]  # fmt: skip


def etcd_flags(cluster: Cluster, node: Node) -> list[str]:
    """The etcd command-line flags of a member, one ``--flag=value`` per item."""
    e = cluster.etcd
    host = cluster.etcd_host(node)
    peer = f"{e.scheme}://{host}:{e.peer_port}"
    listen_clients = [f"{e.scheme}://{a}:{e.client_port}" for a in (node.address, "127.0.0.1")]
    flags = [
        f"--name={node.name}",
        f"--data-dir={ETCD_DATA_DIR}",
        f"--listen-peer-urls={e.scheme}://{node.address}:{e.peer_port}",
        f"--initial-advertise-peer-urls={peer}",
        "--listen-client-urls=" + ",".join(dict.fromkeys(listen_clients)),
        f"--advertise-client-urls={e.scheme}://{host}:{e.client_port}",
    ]
    if e.bootstrap is Bootstrap.DNS:
        flags.append(f"--discovery-srv={e.discovery_domain}")
    else:
        members = ",".join(
            f"{m.name}={e.scheme}://{m.address}:{e.peer_port}" for m in cluster.etcd_members
        )
        flags.append(f"--initial-cluster={members}")
    flags += ["--initial-cluster-state=new", f"--initial-cluster-token={e.token}"]
    if e.heartbeat_ms is not None:
        flags.append(f"--heartbeat-interval={e.heartbeat_ms}")
    if e.election_timeout_ms is not None:
        flags.append(f"--election-timeout={e.election_timeout_ms}")
    if e.tls:
        d = ETCD_TLS_DIR
        flags += [
            "--client-cert-auth", f"--trusted-ca-file={d}/ca.crt",
            f"--cert-file={d}/server.crt", f"--key-file={d}/server.key",
            "--peer-client-cert-auth", f"--peer-trusted-ca-file={d}/ca.crt",
            f"--peer-cert-file={d}/peer.crt", f"--peer-key-file={d}/peer.key",
        ]  # fmt: skip
    return flags


def docker_json(cluster: Cluster) -> str:
    d = cluster.docker
    conf: dict[str, Any] = {"log-driver": d.log_driver}
    if d.log_opts:
        conf["log-opts"] = dict(d.log_opts)
    if d.registry_mirrors:
        conf["registry-mirrors"] = list(d.registry_mirrors)
    if d.insecure_registries:
        conf["insecure-registries"] = list(d.insecure_registries)
    return json.dumps(conf, indent=2) + "\n"


def update_mapping(cluster: Cluster, node: Node) -> dict[str, Any]:
    """What /etc/tidehost/update.yaml holds (the updater's settings), as a plain mapping."""
    u, e = cluster.updater, cluster.etcd
    etcd: dict[str, Any] = {"endpoints": list(cluster.client_endpoints())}
    if e.bootstrap is Bootstrap.DNS:
        etcd["discovery_srv"] = e.discovery_domain
    if cluster.etcd_auth:  # the gateway refuses a certificate with a CN: the agent's has none
        etcd |= {"cacert": f"{ETCD_TLS_DIR}/ca.crt", "cert": f"{ETCD_TLS_DIR}/agent.crt",
                 "key": f"{ETCD_TLS_DIR}/agent.key", "user": node.name,
                 "password_file": ETCD_PASSWORD}  # fmt: skip
    elif e.tls:
        etcd |= {"cacert": f"{ETCD_TLS_DIR}/ca.crt", "cert": f"{ETCD_TLS_DIR}/client.crt",
                 "key": f"{ETCD_TLS_DIR}/client.key"}  # fmt: skip
    window = None
    if u.window is not None:
        w = u.window
        window = {
            "days": [d.value for d in w.days],
            "start": w.start,
            "length": w.length,
            "tz": w.tz,
        }
    channel = {"url": u.channel_url, "name": u.channel_name}
    if u.channel_root is not None:
        channel["root"] = CHANNEL_ROOT
    out: dict[str, Any] = {
        "node": node.name,
        "channel": channel,
        "strategy": u.strategy.value,
        "etcd": etcd,
        "group": u.group,
        "max": u.max,
        "window": window,
    }
    if u.strategy is Strategy.FLEETLOCK:
        out["fleetlock"] = {"url": u.fleetlock_url}
    check = {"interval": u.check_interval, "jitter": u.check_jitter}
    if any(v is not None for v in check.values()):
        out["check"] = {k: v for k, v in check.items() if v is not None}
    out["health"] = health_mapping(cluster, node)
    if u.halt_after is not None:
        out["halt_after"] = u.halt_after
    d = u.drain
    swarm = d.swarm if d.swarm is not None else cluster.scheduler.kind is SchedulerKind.SWARM
    drain: dict[str, Any] = {"swarm": swarm, "pre_reboot": list(d.pre_reboot),
                             "post_health": list(d.post_health)}
    if d.timeout is not None:
        drain["timeout"] = d.timeout
    if d.on_timeout is not None:
        drain["on_timeout"] = d.on_timeout
    out["drain"] = drain
    return out


def health_mapping(cluster: Cluster, node: Node) -> dict[str, Any]:
    """What must be up before a new boot is blessed and the reboot lock released.

    By default the services the node's roles run: an etcd member must serve again (its local
    endpoint healthy, so the next host's reboot cannot cost the cluster its quorum) and
    Docker must be running.
    """
    u, e = cluster.updater, cluster.etcd
    is_etcd = node.has(Role.ETCD)
    units = u.health_units
    if units is None:
        units = (*(["etcd.service"] if is_etcd else []), "docker.service")
    commands = list(u.health_commands)
    if is_etcd:
        argv = ["etcdctl", f"--endpoints={e.scheme}://127.0.0.1:{e.client_port}"]
        if e.tls:
            argv += [f"--cacert={ETCD_TLS_DIR}/ca.crt", f"--cert={ETCD_TLS_DIR}/client.crt",
                     f"--key={ETCD_TLS_DIR}/client.key"]  # fmt: skip
        commands.insert(0, shlex.join([*argv, "endpoint", "health"]))
    out: dict[str, Any] = {"units": list(units), "commands": commands}
    if u.health_deadline is not None:
        out["deadline"] = u.health_deadline
    return out


def update_yaml(cluster: Cluster, node: Node) -> str:
    head = "# Tidehost updater settings, written by cloud-init from the cluster file.\n"
    return head + yaml.safe_dump(update_mapping(cluster, node), sort_keys=False)


def cluster_json(cluster: Cluster, node: Node, provider: Provider) -> str:
    def entry(n: Node) -> dict[str, Any]:
        return {"name": n.name, "address": n.address, "roles": list(n.sorted_roles)}

    data = {
        "cluster": cluster.name,
        "provider": provider.value,
        "node": entry(node),
        "nodes": [entry(n) for n in cluster.nodes],
        "etcd_members": list(cluster.etcd.members),
        "scheduler": cluster.scheduler.kind.value,
    }
    return json.dumps(data, indent=2) + "\n"
