"""etcd's authentication for a cluster: a user per node and roles by key prefix (pure).

With ``etcd.auth`` (the default with TLS) every node is the etcd user of its name: by its
client certificate's CN for gRPC clients (etcdctl, kube-apiserver), by a password for the
agent, whose JSON-gateway certificate has no CN (SPECS §11.3). Each user has one role,
``node-NAME``, that may write only what that node writes:

==========================================  ========  =====================================
key                                         access    who
==========================================  ========  =====================================
``/tidehost/nodes/NAME``                    rw        its registry (node-publish)
``/tidehost/nodes/``                        r prefix  every node
``tidehost/rebootlock/groups/G/semaphore``  rw        the lock's semaphore (compare-and-swap)
``tidehost/rebootlock/groups/G/holders/``   r prefix  every node (dead holders are checked)
``…/holders/NAME``                          rw        its own liveness key
``tidehost/fleet/hosts/NAME``               rw        its fleet report
``tidehost/fleet/hosts/``                   r prefix  every node (rollouts halt on reports)
``/tidehost/swarm/``                        rw prefix managers (tokens, managers/, members/)
``/tidehost/swarm/worker-token``,           r         workers: never the manager token
``manager-addr``, ``managers/`` (prefix)
``/tidehost/swarm/members/NAME``            rw        workers
``/tidehost/kubeadm/``, ``/registry/``      rw prefix managers (kubeadm: kube-apiserver's store)
``/tidehost/kubeadm/join-command``          r         workers
==========================================  ========  =====================================

``root`` (role root) may do all: the operator, by the admin certificate (CN root) or the
root password (``tidehost cloud-config certs`` writes both; neither ever reaches a node).
The first etcd member's ``tidehost-etcd-auth`` creates the roles and users and turns
authentication on, once, when the cluster forms (``forms_etcd``).

etcd's permissions cannot tell a put from a delete: a node that may compare-and-swap the
semaphore can also delete that one key; it cannot delete a range of the lock's keys nor
another node's liveness key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote

from imagebuild.cloudconfig.model import (
    FLEET_PREFIX,
    KUBEADM_PREFIX,
    KUBERNETES_PREFIX,
    LOCK_GROUPS_PREFIX,
    NODES_PREFIX,
    SWARM_PREFIX,
    Cluster,
    Node,
    Role,
    SchedulerKind,
)


class Perm(StrEnum):
    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"


@dataclass(frozen=True)
class Grant:
    perm: Perm
    key: str
    prefix: bool = False  # the key and every key below it


@dataclass(frozen=True)
class NodeUser:
    """An etcd user named like its node, with its one role."""

    name: str
    role: str
    grants: tuple[Grant, ...]


def lock_keys(group: str, holder: str) -> tuple[str, str, str]:
    """The reboot lock's semaphore, holders prefix and ``holder``'s liveness key for ``group``
    (``updater.lock.etcd``: ids URL-escaped)."""
    base = f"{LOCK_GROUPS_PREFIX}{quote(group, safe='')}"
    return f"{base}/semaphore", f"{base}/holders/", f"{base}/holders/{quote(holder, safe='')}"


def node_user(cluster: Cluster, node: Node) -> NodeUser:
    rw, r = Perm.READWRITE, Perm.READ
    semaphore, holders, mine = lock_keys(cluster.updater.group, node.name)
    grants = [
        Grant(rw, f"{NODES_PREFIX}{node.name}"), Grant(r, NODES_PREFIX, prefix=True),
        Grant(rw, semaphore), Grant(r, holders, prefix=True), Grant(rw, mine),
        Grant(rw, f"{FLEET_PREFIX}{node.name}"), Grant(r, FLEET_PREFIX, prefix=True),
    ]  # fmt: skip
    kind = cluster.scheduler.kind
    if node.has(Role.MANAGER) and kind is SchedulerKind.SWARM:
        grants.append(Grant(rw, SWARM_PREFIX, prefix=True))
    elif node.has(Role.WORKER) and kind is SchedulerKind.SWARM:
        grants += [Grant(r, f"{SWARM_PREFIX}worker-token"), Grant(r, f"{SWARM_PREFIX}manager-addr"),
                   Grant(r, f"{SWARM_PREFIX}managers/", prefix=True),
                   Grant(rw, f"{SWARM_PREFIX}members/{node.name}")]  # fmt: skip
    elif node.has(Role.MANAGER) and kind is SchedulerKind.KUBEADM:
        grants += [Grant(rw, KUBEADM_PREFIX, prefix=True),
                   Grant(rw, KUBERNETES_PREFIX, prefix=True)]  # fmt: skip
    elif node.has(Role.WORKER) and kind is SchedulerKind.KUBEADM:
        grants.append(Grant(r, f"{KUBEADM_PREFIX}join-command"))
    return NodeUser(name=node.name, role=f"node-{node.name}", grants=tuple(grants))


def node_users(cluster: Cluster) -> tuple[NodeUser, ...]:
    """Every node's user, in the cluster file's order."""
    return tuple(node_user(cluster, n) for n in cluster.nodes)
