"""The seeds' demo, made real: a 3-node cluster that updates itself under its own etcd lock.

``tidehost demo`` (``make demo``) runs it, and the cluster end-to-end test drives the same
helpers (waiting for etcd and the swarm, deploying the replicated service), so what the demo
shows is what the test proves:

1. build the reference image as v1 and v2 (the Debian root tree comes from the cache after
   the first run); create a signed channel and publish v1 to alpha;
2. ``tidehost vm cluster up`` the example cluster file (cloud-config/examples/cluster.yaml)
   with the channel served inside the cluster's namespace: 3 etcd members over TLS, a swarm
   of 3 nodes, a web service with 2 replicas on 2 nodes;
3. publish v2: every node stages it, and they reboot one at a time under the reboot lock in
   the cluster's etcd (max=1) while a probe asks the service every second;
4. promote v2 to beta and stable (the same bits, new signatures).

``run_single_host_demo`` (``tidehost demo --single-host``) shows one host and a local etcd:

1. build the reference image as v1 and its successor v2;
2. create a signed channel repository, publish v1 to alpha, serve it on 127.0.0.1 and
   start a local etcd for the reboot lock;
3. boot a v1 host under QEMU and show its os-release and its verity-checked /usr;
4. publish v2 and watch the host's agent find it, stage it in slot B, take the etcd
   lock, reboot, pass its health gate, bless the boot and release the lock.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from imagebuild.cloudconfig.parse import parse_cluster_file
from imagebuild.core.errors import VMError
from imagebuild.core.files import data_file
from imagebuild.core.log import complete_step
from imagebuild.core.platforms import OutputFormat
from imagebuild.core.run import run
from imagebuild.core.wait import poll
from imagebuild.image.config import parse_image_file
from imagebuild.image.context import Artifact
from imagebuild.image.pipeline import build
from imagebuild.lab import channel
from imagebuild.lab import fleet as fleetview
from imagebuild.lab.agent import Phase, print_status
from imagebuild.lab.cluster import ClusterState, UpOptions, down, up
from imagebuild.lab.hostlab import UpdateLab, bless_latency, wait_for
from imagebuild.lab.probe import Prober
from imagebuild.lab.rollout import watch
from imagebuild.lab.vm import VM

log = logging.getLogger(__name__)

ETCDCTL = "sudo /etc/tidehost/bin/tidehost-etcdctl"
WEB_PORT = 8080
# No image can be pulled here: a tiny image of symlinks (bin -> usr/bin, ...) whose containers
# bind-mount the host's read-only /usr and run its python3.
IMPORT_USR_IMAGE = (
    "set -e; d=$(mktemp -d); cd $d; mkdir tmp etc; chmod 1777 tmp; "
    "for l in bin sbin lib lib64; do ln -s usr/$l $l; done; "
    "sudo tar -c . | sudo docker import - local/usr:1 >/dev/null; cd /; rm -rf $d; "
    "sudo docker image inspect -f '{{.Id}}' local/usr:1"
)
WEB_CMD = ("mkdir -p /tmp/w && cat /etc/hostname > /tmp/w/index.html && "
           "exec python3 -m http.server -d /tmp/w 80")  # fmt: skip


def wait_until(what: str, check: Callable[[], bool], timeout: float, every: float = 10) -> float:
    """Poll ``check`` (an SSH that fails or times out, or a half-up service's unreadable
    answer, count as "not yet"); seconds taken, or VMError."""
    t0 = time.monotonic()

    def ready() -> bool:
        try:
            return bool(check())
        except (VMError, ValueError):
            return False

    if not poll(ready, timeout, every):
        raise VMError(f"{what}: not within {timeout:.0f}s")
    return time.monotonic() - t0


def etcd_healthy(vm: VM) -> int:
    """How many members of the cluster's etcd answer healthy, asked on ``vm``."""
    out = vm.ssh(f"{ETCDCTL} endpoint health --cluster -w json", check=False)
    return sum(1 for e in json.loads(out or "[]") if e.get("health"))


def swarm_ready(vm: VM) -> list[str]:
    """The swarm's Ready nodes, asked on a manager."""
    out = vm.ssh("sudo docker node ls --format '{{.Hostname}} {{.Status}}'", check=False)
    return [line.split()[0] for line in out.splitlines() if line.endswith(" Ready")]


def wait_converged(state: ClusterState, timeout: float) -> dict[str, float]:
    first = state.vm(state.nodes[0].name)
    n = len(state.nodes)
    return {
        "etcd": wait_until(f"etcd: {n} healthy members", lambda: etcd_healthy(first) == n,
                           timeout),  # fmt: skip
        "swarm": wait_until(f"swarm: {n} ready nodes", lambda: len(swarm_ready(first)) == n,
                            timeout),  # fmt: skip
    }


def deploy_web(state: ClusterState, manager: str, timeout: float = 600) -> dict[str, str]:
    """Service ``web``: 2 replicas, at most one per node, on managers, port 8080 published,
    on the attachable overlay network ``web-net``; returns {node: task line} once running."""
    for n in state.nodes:
        out = state.vm(n.name).ssh(IMPORT_USR_IMAGE, timeout=300)
        if not out.startswith("sha256:"):
            raise VMError(f"{n.name}: docker import failed: {out.strip()}")
    m = state.vm(manager)
    m.ssh("sudo docker network create -d overlay --attachable web-net")
    m.ssh("sudo docker service create --detach --name web --replicas 2 --replicas-max-per-node 1"
          " --constraint node.role==manager --publish 8080:80 --network web-net"
          " --mount type=bind,src=/usr,dst=/usr,readonly --hostname '{{.Node.Hostname}}'"
          f" --no-resolve-image local/usr:1 sh -c '{WEB_CMD}'")  # fmt: skip

    def running() -> dict[str, str]:
        out = m.ssh("sudo docker service ps web --filter desired-state=running"
                    " --format '{{.Node}} {{.CurrentState}}'")  # fmt: skip
        return {line.split()[0]: line for line in out.splitlines() if " Running " in f"{line} "}

    wait_until("2 running replicas of web", lambda: len(running()) == 2, timeout)
    return running()


def web_urls(state: ClusterState) -> list[str]:
    return [f"http://{n.address}:{WEB_PORT}/" for n in state.nodes]


def example_cluster_file() -> Path:
    """``cloud-config/examples/cluster.yaml``, as shipped with the toolkit."""
    return data_file("imagebuild.cloudconfig", "templates/examples/cluster.yaml")


def demo_cluster_file(out: Path) -> Path:
    """The example cluster file, copied so that its certificates land under ``out``."""
    doc = yaml.safe_load(example_cluster_file().read_text())
    path = out / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


FLEET_PORT = 8090


def changed(spec: object, state: ClusterState, name: str, st: object) -> None:
    """A node's agent moved on: its status line, then the fleet as its reports say."""
    print_status(st, name)  # type: ignore[arg-type]
    print(fleetview.fleet_table(spec, state.netns), flush=True)  # type: ignore[arg-type]


def show(vm: VM, command: str) -> None:
    print(f"\n[core@{vm.hostname} ~]$ {command}", flush=True)
    print(vm.ssh(command, check=False).rstrip(), flush=True)


def run_cluster_demo(out: Path, *, keep: bool = False, v1: str = "1.0.0",
                     v2: str = "1.1.0") -> int:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    base = parse_image_file(None)
    r1 = build(base.with_overrides(version=v1, channel="alpha"), out)
    r2 = build(base.with_overrides(version=v2, channel="alpha", formats="raw"), out)
    repo = out / "repo"
    shutil.rmtree(repo, ignore_errors=True)  # versions in a channel only go forward
    channel.init(repo)
    channel.publish(repo, r1.artifacts[Artifact.RELEASE], "alpha")
    spec = parse_cluster_file(demo_cluster_file(out))
    state_root = out / "clusters"
    down(spec, state_root)  # a previous demo's leftovers
    t0, ok = time.monotonic(), False
    image = r1.artifacts[OutputFormat.QCOW2]
    print(f"\n$ tidehost vm cluster up {out / 'cluster.yaml'} --image {image} --serve {repo}",
          flush=True)  # fmt: skip
    try:
        with complete_step("Booting 3 nodes (QEMU; TCG where KVM cannot run guests)"):
            state = up(spec, UpOptions(image=Path(image), serve=repo,
                                       state_root=state_root, timeout=1800))  # fmt: skip
        with complete_step("Waiting for etcd and the swarm to form"):
            wait_converged(state, 1500)
            fleetview.grant_operator(spec, state.netns)  # root's password, for the fleet view
        log.info("cluster formed %.0fs after QEMU started", time.monotonic() - t0)
        first = state.vm("node1")
        show(first, f"{ETCDCTL} endpoint health --cluster")
        show(first, "sudo docker node ls")
        with complete_step("Deploying service web (2 replicas, one per node)"):
            deploy_web(state, "node1")
        show(first, "sudo docker service ps web")
        for n in state.nodes:
            show(state.vm(n.name), "tidehost-update status")
        with Prober(state.netns, web_urls(state)) as probe:
            probe.wait_answering(120)
            print(f"\n== publishing {v2} to alpha; the nodes update one at a time", flush=True)
            channel.publish(repo, r2.artifacts[Artifact.RELEASE], "alpha")
            report = watch(state, v2, 3600, prober=probe,
                           on_change=lambda name, st: changed(spec, state, name, st),
                           say=lambda line: print(line, flush=True))
        print("\n" + report.summary(), flush=True)
        print(f"\n$ tidehost fleet status --etcd {spec.client_endpoints()[0]} ...\n"
              + fleetview.fleet_table(spec, state.netns), flush=True)
        for n in state.nodes:
            show(state.vm(n.name), "tidehost-update status")
        show(first, "sudo tidehost-update lock status")
        print("\n== promoting to beta and stable (the same bits, re-signed)", flush=True)
        channel.promote(repo, v2, "alpha", "beta")
        channel.promote(repo, v2, "beta", "stable")
        channel.show_status(repo)
        ok = True
    finally:
        if keep:
            print(f"\nthe cluster is still up: tidehost vm cluster status {out / 'cluster.yaml'}"
                  f" --state-dir {state_root}", flush=True)  # fmt: skip
            if ok:
                pid = fleetview.serve(spec, state.netns, FLEET_PORT, state_root)
                print(f"the fleet page: http://127.0.0.1:{FLEET_PORT}/ (tidehost fleet serve, "
                      f"pid {pid}; kill it when done)", flush=True)
        else:
            down(spec, state_root, keep_logs=not ok)
            if not ok:
                log.error("serial logs of the nodes kept in %s", state_root / spec.name)
    return 0


def run_single_host_demo(out: Path, *, v1: str = "1.0.0", v2: str = "1.1.0") -> int:
    out.mkdir(parents=True, exist_ok=True)
    key = out / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
    base = parse_image_file(None)
    r1 = build(base.with_overrides(version=v1, channel="alpha"), out)
    r2 = build(base.with_overrides(version=v2, channel="alpha", formats="raw"), out)
    disk = out / "demo-host.qcow2"
    disk.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", r1.artifacts[OutputFormat.QCOW2],
         "-F", "qcow2", disk, "8G"])  # fmt: skip
    lab = UpdateLab(out / "lab")
    # A fresh repository every run: versions in a channel only go forward.
    shutil.rmtree(lab.repo, ignore_errors=True)
    lab.start()
    try:
        print(f"\n== channel served at {lab.server.url if lab.server else ''}, "
              f"etcd at {lab.etcd.url}", flush=True)  # fmt: skip
        lab.publish(r1.artifacts[Artifact.RELEASE])
        vm = lab.boot(disk, key, "demo-host")
        try:
            with complete_step("Booting the v1.0.0 host (QEMU; TCG where KVM cannot run guests)"):
                seconds = vm.wait_ssh(timeout=900)
            log.info("SSH answered %.0fs after QEMU started", seconds)
            show(vm, "cat /etc/os-release")
            show(vm, "findmnt /usr")
            show(vm, "sudo veritysetup status usr | head -3")
            show(vm, "tidehost-update status")
            print(f"\n== publishing {v2} to alpha", flush=True)
            lab.publish(r2.artifacts[Artifact.RELEASE])
            start = time.monotonic()
            wait_for(vm, lambda s: s.version == v2 and s.phase is Phase.IDLE, timeout=2400,
                     on_change=print_status)  # fmt: skip
            latency = bless_latency(vm)
            shown = "not in the journal" if latency is None else f"{latency:.1f} s"
            print(f"\n== updated to {v2} in {time.monotonic() - start:.0f}s; boot-complete.target "
                  f"to blessed and lock released: {shown}", flush=True)  # fmt: skip
            show(vm, "tidehost-update status")
            show(vm, "findmnt /usr")
            show(vm, "sudo /usr/lib/systemd/systemd-bless-boot status")
            show(vm, "sudo ls /efi/loader/entries")
            print(f"\nreboot lock holders now: {lab.lock_holders() or 'none'}", flush=True)
        finally:
            vm.stop()
    finally:
        lab.stop()
    return 0
