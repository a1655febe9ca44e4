"""NoCloud seed files for a node: user-data, meta-data and a static network-config.

On vagrant and nocloud nothing hands the node its cluster address, so the seed carries a
network-config (version 2) that puts ``ADDRESS/PREFIX`` on the NIC with the node's cluster
MAC (``nodes[].mac``, or 52:54:00 + the address's last three octets: 10.77.0.11 ->
52:54:00:4d:00:0b). NICs named with ``dhcp_macs`` (e.g. QEMU user networking for SSH) get
DHCP. A VM launcher gives the cluster NIC ``node.cluster_mac`` and packs the folder as an ISO
with the volume label ``cidata``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from imagebuild.cloudconfig.model import Cluster, Node
from imagebuild.core.errors import ConfigError
from imagebuild.core.fields import mac
from imagebuild.core.files import private_dir, write_atomic
from imagebuild.core.platforms import Provider

SEED_PROVIDERS = (Provider.NOCLOUD, Provider.VAGRANT)


def network_config(cluster: Cluster, node: Node, dhcp_macs: tuple[str, ...] = ()) -> str:
    net = cluster.network
    cluster_nic: dict[str, Any] = {
        "match": {"macaddress": node.cluster_mac},
        "set-name": "cluster0",
        "addresses": [f"{node.address}/{net.prefix}"],
    }
    if net.gateway:
        cluster_nic["routes"] = [{"to": "0.0.0.0/0", "via": net.gateway}]
    if net.nameservers:
        search = [cluster.domain] if cluster.domain else []
        cluster_nic["nameservers"] = {"addresses": list(net.nameservers), "search": search}
    ethernets: dict[str, Any] = {"cluster0": cluster_nic}
    for i, m in enumerate(dhcp_macs):
        m = mac(f"--dhcp-mac[{i}]", m)
        if m == node.cluster_mac:
            raise ConfigError(f"--dhcp-mac: {m} is {node.name}'s cluster NIC")
        ethernets[f"dhcp{i}"] = {"match": {"macaddress": m}, "set-name": f"dhcp{i}", "dhcp4": True}
    doc = {"version": 2, "ethernets": ethernets}
    return yaml.safe_dump(doc, sort_keys=False)


def meta_data(cluster: Cluster, node: Node) -> str:
    return yaml.safe_dump(
        {"instance-id": f"{cluster.name}-{node.name}", "local-hostname": node.name},
        sort_keys=False,
    )


def write_seed(
    dest: Path, cluster: Cluster, node: Node, user_data: str, dhcp_macs: tuple[str, ...] = ()
) -> list[Path]:
    """Write DEST/{user-data,meta-data,network-config}; everything is built before writing.

    DEST is made 0700 and the user-data 0600: it holds the node's private keys."""
    files = {
        "user-data": (user_data, 0o600),
        "meta-data": (meta_data(cluster, node), 0o644),
        "network-config": (network_config(cluster, node, dhcp_macs), 0o644),
    }
    out = []
    private_dir(dest)
    for name, (text, mode) in files.items():
        write_atomic(dest / name, text, mode)
        out.append(dest / name)
    return out
