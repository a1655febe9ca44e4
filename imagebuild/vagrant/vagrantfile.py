"""``tidehost vagrant init``: a Vagrantfile for an N-node cluster, its seeds and cluster file.

The cluster file is generated (or given), each node's user-data is rendered by the
cloud-config renderer for provider ``vagrant`` and written as a NoCloud seed folder, and the
Vagrantfile (``vagrant/Vagrantfile.j2``) takes the box from the channel's catalog.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment

from channels.bundle import CHANNELS
from imagebuild.cloudconfig import generate_certs, parse_cluster_file
from imagebuild.cloudconfig import render_user_data as render
from imagebuild.cloudconfig.seed import write_seed
from imagebuild.core.errors import ConfigError
from imagebuild.core.files import data_dir, write_atomic
from imagebuild.core.platforms import BoxProvider, Provider
from imagebuild.vagrant.catalog import catalog_name, catalog_path

TEMPLATE = "Vagrantfile.j2"
MAX_NODES = 9


@dataclass(frozen=True)
class InitOptions:
    nodes: int
    channel_url: str
    channel: str
    provider: BoxProvider = BoxProvider.LIBVIRT
    image: str = "tidehost"
    subnet: str = "192.168.56.0/24"  # VirtualBox's default host-only range
    memory: int = 2048
    cpus: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise ConfigError(f"--nodes: {self.nodes} is not from 1 to {MAX_NODES}")
        if not self.channel_url:
            raise ConfigError("--channel-url: missing (the URL the channel repository is at)")
        if not self.channel_url.startswith(("http://", "https://")):
            raise ConfigError(f"--channel-url: {self.channel_url!r} is not an http(s):// URL")
        if self.channel not in CHANNELS:
            raise ConfigError(f"--channel: {self.channel!r} is not one of {', '.join(CHANNELS)}")
        try:
            net = ipaddress.IPv4Network(self.subnet)
        except ValueError as e:
            raise ConfigError(f"--subnet: {e}") from None
        if net.num_addresses < 16 + self.nodes:
            raise ConfigError(f"--subnet: {self.subnet} is too small for {self.nodes} nodes")

    @property
    def box_name(self) -> str:
        return catalog_name(self.image, self.channel)

    @property
    def box_url(self) -> str:
        """The channel's box catalog, served beside its metadata."""
        return f"{self.channel_url.rstrip('/')}/{catalog_path(self.channel)}"


def cluster_document(o: InitOptions) -> dict[str, Any]:
    """A cluster file for ``o`` (pure): an odd number of etcd members and swarm managers (up
    to three), so that one rebooting node leaves both their quorum; the rest are workers."""
    net = ipaddress.IPv4Network(o.subnet)
    core = 3 if o.nodes >= 3 else 1
    nodes = []
    for i in range(o.nodes):
        roles = ["etcd", "manager"] if i < core else ["worker"]
        nodes.append({"name": f"node{i + 1}", "address": str(net[11 + i]), "roles": roles})
    return {
        "cluster": "vagrant",
        "domain": "tidehost.test",
        "network": {"prefix": net.prefixlen},
        "nodes": nodes,
        "etcd": {"bootstrap": "static", "tls": True, "cert_dir": "certs"},
        "scheduler": {"kind": "swarm"},
        "updater": {
            "channel": {"url": o.channel_url, "name": o.channel},
            "strategy": "etcd-lock",
            "group": "default",
            "max": 1,
        },
        "ssh_authorized_keys": [],
    }


def cluster_yaml(o: InitOptions) -> str:
    head = "# Written by `tidehost vagrant init`; edit and pass it back with --cluster.\n"
    return head + yaml.safe_dump(cluster_document(o), sort_keys=False)


def _rb(value: object) -> str:
    """A single-quoted Ruby string literal (no interpolation)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def template_dir() -> Path:
    """The templates of ``vagrant/``, shipped in this package as ``templates/``."""
    return data_dir("imagebuild.vagrant", "templates")


def render_vagrantfile(context: dict[str, Any], tdir: Path | None = None) -> str:
    tdir = tdir or template_dir()
    if not (tdir / TEMPLATE).is_file():
        raise ConfigError(f"{tdir}: no {TEMPLATE} (not the Vagrant template folder)")
    env = SandboxedEnvironment(loader=jinja2.FileSystemLoader(str(tdir)),
                               undefined=jinja2.StrictUndefined, autoescape=False,
                               keep_trailing_newline=True)  # fmt: skip
    env.filters["rb"] = _rb
    env.filters["json"] = json.dumps
    try:
        return env.get_template(TEMPLATE).render(context)
    except jinja2.TemplateError as e:
        raise ConfigError(f"{tdir / TEMPLATE}: {e}") from None


def init_cluster(
    o: InitOptions,
    out: Path,
    *,
    cluster_file: Path | None = None,
    ssh_keys: tuple[str, ...] = (),
    command: str = "tidehost vagrant init",
) -> list[Path]:
    """Write OUT/Vagrantfile, OUT/seeds/<node>/ and (if not given) OUT/cluster.yaml.

    Everything is rendered before the Vagrantfile is written, so a bad cluster leaves no
    Vagrantfile behind.
    """
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if cluster_file is None:
        cluster_file = out / "cluster.yaml"
        write_atomic(cluster_file, cluster_yaml(o))
        written.append(cluster_file)
    cluster = parse_cluster_file(cluster_file)
    if cluster.etcd.tls and cluster.etcd.cert_dir is not None:
        generate_certs(cluster, cluster.etcd.cert_dir)
    rendered = {n.name: render(cluster, n.name, Provider.VAGRANT, extra_ssh_keys=ssh_keys)
                for n in cluster.nodes}  # fmt: skip
    net = ipaddress.IPv4Network(f"0.0.0.0/{cluster.network.prefix}")
    context = {
        "command": command,
        "channel": o.channel,
        "box_name": o.box_name,
        "box_url": o.box_url,
        "netmask": str(net.netmask),
        "network_name": f"tidehost-{cluster.name}",
        "memory": o.memory,
        "cpus": o.cpus,
        "nodes": [
            {"name": n.name, "address": n.address, "mac": n.cluster_mac} for n in cluster.nodes
        ],  # fmt: skip
    }
    vagrantfile = render_vagrantfile(context)
    for node in cluster.nodes:
        written += write_seed(out / "seeds" / node.name, cluster, node, rendered[node.name])
    write_atomic(out / "Vagrantfile", vagrantfile)
    written.append(out / "Vagrantfile")
    return written
