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
``tidehost/rebootlock/groups/G/``           r prefix  every node (holders, queue, semaphore)
``tidehost/rebootlock/groups/G/semaphore``  rw        the lock's semaphore (compare-and-swap)
``…/holders/NAME``, ``…/waiters/NAME``      rw        its own liveness and queue keys
``tidehost/fleet/hosts/NAME``               rw        its fleet report
``tidehost/fleet/hosts/``                   r prefix  every node
``tidehost/fleet/rollbacks/G/``             rw prefix the group's rollback marks (the halt rule)
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
another node's liveness key. The rollback marks are ``G/<version>/<id>`` (``channels.fleet``):
no prefix is one node's, so a node may write or remove any mark of its group (it can halt or
un-halt a version there, nothing more). Keys come from ``channels.fleet``, the agent's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote

from channels import fleet
from imagebuild.cloudconfig.model import (
    KUBEADM_PREFIX,
    KUBERNETES_PREFIX,
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


def lock_keys(group: str, holder: str) -> tuple[str, str, str, str]:
    """The reboot lock's keys of ``group``: its prefix, the semaphore, and ``holder``'s
    liveness and queue keys (``updater.lock``: ids URL-escaped)."""
    base = f"{fleet.LOCK_GROUPS}{quote(group, safe='')}/"
    mine = quote(holder, safe="")
    return base, f"{base}semaphore", f"{base}holders/{mine}", f"{base}waiters/{mine}"


def node_user(cluster: Cluster, node: Node) -> NodeUser:
    rw, r = Perm.READWRITE, Perm.READ
    group, semaphore, holder, waiter = lock_keys(cluster.updater.group, node.name)
    grants = [
        Grant(rw, f"{NODES_PREFIX}{node.name}"), Grant(r, NODES_PREFIX, prefix=True),
        Grant(r, group, prefix=True), Grant(rw, semaphore), Grant(rw, holder), Grant(rw, waiter),
        Grant(rw, fleet.host_key(node.name)), Grant(r, fleet.HOSTS, prefix=True),
        Grant(rw, fleet.rollbacks_prefix(cluster.updater.group), prefix=True),
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
