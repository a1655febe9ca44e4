"""End to end under QEMU: the example cluster file as three VMs (`tidehost vm cluster up`).

ONE bring-up, shared by every test of this module (a module fixture): an etcd cluster of 3
healthy TLS members, a swarm of 3 nodes, a replicated web service (2 replicas on the two
managers) answering HTTP on the routing mesh, a container on the worker reaching it by name
over an attachable overlay network, and every node published under /tidehost/nodes/.

No image can be pulled here (no internet): each node imports a tiny image of symlinks only
(bin -> usr/bin, lib64 -> usr/lib64, ...) and its containers bind-mount the host's read-only
/usr, so they run the image's own python3 (http.server) without any extra package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from imagebuild.cloudconfig.parse import parse_cluster_file
from imagebuild.config import parse_image_file
from imagebuild.pipeline import build
from imagebuild.vmcluster import ClusterState, UpOptions, down, status, up

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vm,
    # Not yet green in one uninterrupted run here (3 TCG guests on 2 cores take 35-45 min):
    # opt in until it is, so CI stays inside its 90 minutes.
    pytest.mark.skipif(os.environ.get("TIDEHOST_CLUSTER_E2E") != "1",
                       reason="set TIDEHOST_CLUSTER_E2E=1 to run the 3-node QEMU cluster test"),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "cloud-config" / "examples" / "cluster.yaml"
ETCDCTL = "sudo /etc/tidehost/bin/tidehost-etcdctl"
BOOT_TIMEOUT = 1800  # three TCG guests on a shared 2-core machine
CONVERGE_TIMEOUT = 1500
IMPORT_USR_IMAGE = (
    "set -e; d=$(mktemp -d); cd $d; mkdir tmp etc; chmod 1777 tmp; "
    "for l in bin sbin lib lib64; do ln -s usr/$l $l; done; "
    "sudo tar -c . | sudo docker import - local/usr:1 >/dev/null; cd /; rm -rf $d; "
    "sudo docker image inspect -f '{{.Id}}' local/usr:1"
)
WEB_CMD = ("mkdir -p /tmp/w && cat /etc/hostname > /tmp/w/index.html && "
           "exec python3 -m http.server -d /tmp/w 80")  # fmt: skip
FETCH = ("import sys, urllib.request; "
         "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().strip())")  # fmt: skip
TIMES: dict[str, float] = {}


def wait_for(what: str, check: Callable[[], bool], timeout: float, every: float = 10) -> float:
    t0 = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - t0
        except (subprocess.TimeoutExpired, Exception):  # noqa: BLE001 - not ready yet
            pass
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


@pytest.fixture(scope="module")
def cluster_image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference image, plus ``docker-cli`` while the reference lacks it.

    trixie split the docker client out of docker.io (a Recommends, which the image build
    does not install): without it the nodes' swarm units wait for `docker info` forever.
    """
    ref = parse_image_file(None)
    if "docker-cli" in ref.packages:
        return Path(request.getfixturevalue("reference_image").artifacts["qcow2"])
    if os.geteuid() != 0:
        pytest.fail("the image build needs root (mmdebstrap --mode=root)")
    config = replace(ref, packages=(*ref.packages, "docker-cli"))
    config = config.with_overrides(version="1.0.0", channel="alpha")
    return Path(build(config, tmp_path_factory.mktemp("cluster-image")).artifacts["qcow2"])


@pytest.fixture(scope="module")
def cluster(
    cluster_image: Path, ssh_keypair: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterState]:
    """The example cluster (renamed, with the test's key) up; torn down even on failure."""
    work = tmp_path_factory.mktemp("cluster")
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["cluster"] = "e2e"
    # Three TCG guests on a loaded 2-core machine miss etcd's 100 ms heartbeats: leaders
    # flap and `endpoint health` fails. Slow raft down (as one would across regions).
    doc["etcd"] |= {"heartbeat_ms": 1000, "election_timeout_ms": 10000}
    doc["ssh_authorized_keys"] = [ssh_keypair.with_suffix(".pub").read_text().strip()]
    (work / "cluster.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    spec = parse_cluster_file(work / "cluster.yaml")
    image = cluster_image
    state_root = work / "state"
    down(spec, state_root)  # a previous run's leftovers, if any
    t0 = time.monotonic()
    try:
        state = up(spec, UpOptions(image=image, state_root=state_root, memory=1280, cpus=1,
                                   timeout=BOOT_TIMEOUT))  # fmt: skip
        TIMES["ssh"] = time.monotonic() - t0
        first = state.vm("node1")
        wait_for("etcd: 3 healthy members", lambda: _etcd_healthy(first) == 3, CONVERGE_TIMEOUT)
        TIMES["etcd"] = time.monotonic() - t0
        wait_for("swarm: 3 ready nodes", lambda: len(_swarm_ready(first)) == 3, CONVERGE_TIMEOUT)
        TIMES["swarm"] = time.monotonic() - t0
        yield state
    finally:
        TIMES["total"] = time.monotonic() - t0
        print(f"\ncluster timings (s since up): {json.dumps({k: round(v) for k, v in TIMES.items()})}")
        if "swarm" not in TIMES:
            print(status(spec, state_root))
            logs = work.parent / "cluster-logs"
            shutil.copytree(state_root, logs, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.qcow2", "*.fd", "*.iso", "*.sock"))
            print(f"serial logs kept in {logs}")
        down(spec, state_root)


def _etcd_healthy(vm: object) -> int:
    out = vm.ssh(f"{ETCDCTL} endpoint health --cluster -w json", check=False)  # type: ignore[attr-defined]
    return sum(1 for e in json.loads(out or "[]") if e.get("health"))


def _swarm_ready(vm: object) -> list[str]:
    out = vm.ssh("sudo docker node ls --format '{{.Hostname}} {{.Status}}'", check=False)  # type: ignore[attr-defined]
    return [line.split()[0] for line in out.splitlines() if line.endswith(" Ready")]


def test_etcd_has_three_healthy_tls_members(cluster: ClusterState) -> None:
    for name in ("node1", "node2", "node3"):
        out = cluster.vm(name).ssh(f"{ETCDCTL} endpoint health --cluster -w json")
        health = json.loads(out)
        assert len(health) == 3 and all(e["health"] for e in health), out
        assert all(e["endpoint"].startswith("https://10.77.0.") for e in health), out
    members = cluster.vm("node3").ssh(f"{ETCDCTL} member list -w json")
    assert sorted(m["name"] for m in json.loads(members)["members"]) == ["node1", "node2", "node3"]


def test_nodes_publish_address_and_roles(cluster: ClusterState) -> None:
    vm = cluster.vm("node2")
    wait_for("three nodes under /tidehost/nodes/",
             lambda: len(vm.ssh(f"{ETCDCTL} get --prefix --keys-only /tidehost/nodes/").split()) == 3,
             300)  # fmt: skip
    out = vm.ssh(f"{ETCDCTL} get --prefix --print-value-only /tidehost/nodes/")
    nodes = {v["name"]: v for v in map(json.loads, filter(None, out.splitlines()))}
    assert {n: (v["address"], v["roles"]) for n, v in nodes.items()} == {
        "node1": ("10.77.0.11", ["etcd", "manager"]),
        "node2": ("10.77.0.12", ["etcd", "manager"]),
        "node3": ("10.77.0.13", ["etcd", "worker"]),
    }
    swarm = vm.ssh(f"{ETCDCTL} get --prefix --keys-only /tidehost/swarm/").split()
    assert "/tidehost/swarm/worker-token" in swarm and "/tidehost/swarm/manager-addr" in swarm


def test_swarm_has_three_nodes(cluster: ClusterState) -> None:
    out = cluster.vm("node1").ssh(
        "sudo docker node ls --format '{{.Hostname}} {{.Status}} {{.ManagerStatus}}'"
    )
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert sorted(rows) == ["node1", "node2", "node3"], out
    assert all(r[0] == "Ready" for r in rows.values()), out
    # Managers show Leader/Reachable (a loaded TCG manager may briefly show Unreachable).
    assert rows["node1"][1:] and rows["node2"][1:] and "Leader" in out, out
    assert rows["node3"][1:] == [], out  # the worker


@pytest.fixture(scope="module")
def web(cluster: ClusterState) -> dict[str, str]:
    """Service `web`: 2 replicas, at most one per node, on the managers, port 8080 published."""
    for name in ("node1", "node2", "node3"):
        assert cluster.vm(name).ssh(IMPORT_USR_IMAGE, timeout=300).startswith("sha256:")
    m = cluster.vm("node1")
    m.ssh("sudo docker network create -d overlay --attachable web-net")
    m.ssh("sudo docker service create --detach --name web --replicas 2 --replicas-max-per-node 1"
          " --constraint node.role==manager --publish 8080:80 --network web-net"
          " --mount type=bind,src=/usr,dst=/usr,readonly --hostname '{{.Node.Hostname}}'"
          f" --no-resolve-image local/usr:1 sh -c '{WEB_CMD}'")  # fmt: skip
    t0 = time.monotonic()

    def running() -> dict[str, str]:
        out = m.ssh("sudo docker service ps web --filter desired-state=running"
                    " --format '{{.Node}} {{.CurrentState}}'")  # fmt: skip
        return {line.split()[0]: line for line in out.splitlines() if " Running " in f"{line} "}

    wait_for("2 running replicas of web", lambda: len(running()) == 2, 600)
    TIMES["web"] = time.monotonic() - t0
    return running()


def _get(cluster: ClusterState, url: str) -> str:
    """An HTTP GET from inside the cluster's namespace (its bridge is the only way in)."""
    r = subprocess.run(["ip", "netns", "exec", cluster.netns, "python3", "-c", FETCH, url],
                       capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    return r.stdout.strip() if r.returncode == 0 else ""


def test_service_two_replicas_on_two_nodes_answer_http(
    cluster: ClusterState, web: dict[str, str]
) -> None:
    assert sorted(web) == ["node1", "node2"], web
    seen: set[str] = set()
    wait_for("the routing mesh answers on every node",
             lambda: all(_get(cluster, f"http://{n.address}:8080/") for n in cluster.nodes), 300,
             every=5)  # fmt: skip
    for _ in range(8):
        for n in cluster.nodes:
            seen.add(_get(cluster, f"http://{n.address}:8080/"))
    assert seen == {"node1", "node2"}, seen  # both replicas answer, through any node


def test_container_on_worker_reaches_service_by_name(
    cluster: ClusterState, web: dict[str, str]
) -> None:
    cmd = ("sudo docker run --rm --network web-net --mount type=bind,src=/usr,dst=/usr,readonly"
           f" local/usr:1 python3 -c \"{FETCH}\" http://web/")  # fmt: skip
    answer = ""

    def reached() -> bool:
        nonlocal answer
        answer = cluster.vm("node3").ssh(cmd, timeout=300).strip()
        return answer in ("node1", "node2")

    wait_for("node3 reaches web over the overlay", reached, 300)
    assert answer in ("node1", "node2")
