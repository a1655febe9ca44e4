"""``tidehost vm cluster``: the nodes of a cluster file as QEMU VMs on one private network.

Everything lives in a network namespace that ``up`` creates and ``down`` removes
(BOOT-NOTES, "Networks for several VMs")::

    netns th-CLUSTER
      lo                        127.0.0.1: each VM's SSH forward (user networking, hostfwd)
      thbr0 GATEWAY/PREFIX      the cluster bridge (network.gateway, or the subnet's first host)
        tap0 .. tapN-1          one per node; the VM's cluster NIC, MAC = Node.cluster_mac

Each QEMU runs under ``ip netns exec``, with a per-node qcow2 overlay of the image and the
node's NoCloud seed (``tidehost cloud-config seed``: user-data, meta-data, a static
network-config for the cluster NIC, DHCP on the SSH NIC). The state folder (default
``/run/tidehost/clusters/CLUSTER``) holds the overlays, seeds, serial logs, an SSH key made
for the cluster and ``state.json`` (namespace, QEMU pids, SSH ports), which ``status`` and
``down`` read. Nothing leaves the namespace: no address outside it and loopback is used.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from imagebuild.cloudconfig.certs import generate_certs
from imagebuild.cloudconfig.model import Cluster
from imagebuild.cloudconfig.render import render_user_data
from imagebuild.cloudconfig.seed import write_seed
from imagebuild.core.errors import VMError
from imagebuild.core.files import private_dir, read_ssh_public_key, write_atomic
from imagebuild.core.platforms import Provider
from imagebuild.core.run import reap, require, run
from imagebuild.core.wait import poll
from imagebuild.lab import channel as clusterchannel
from imagebuild.lab.bootstage import BootWatch, Stage
from imagebuild.lab.net import netns_exists
from imagebuild.lab.vm import VM

log = logging.getLogger(__name__)

DEFAULT_STATE_ROOT = Path("/run/tidehost/clusters")
BRIDGE = "thbr0"
SSH_PORT_BASE = 22000  # inside the namespace: its loopback is ours alone
SILENT = 180  # seconds: try SSH even if the console has not shown the real root yet
TOOLS = ("ip", "nc", "qemu-system-x86_64", "qemu-img", "genisoimage", "ssh", "ssh-keygen")


def netns_name(cluster: str) -> str:
    return f"th-{cluster}"


def user_mac(index: int) -> str:
    """The SSH (user networking) NIC's MAC: locally administered, never a cluster MAC."""
    return f"02:74:68:00:00:{index + 1:02x}"


@dataclass(frozen=True)
class NodeState:
    name: str
    address: str
    tap: str
    mac: str
    ssh_port: int
    workdir: str
    pid: int = 0

    @property
    def serial_log(self) -> Path:
        return Path(self.workdir) / "serial.log"


@dataclass(frozen=True)
class ClusterState:
    """What ``up`` started, as written to ``STATE/state.json``."""

    cluster: str
    netns: str
    bridge: str
    gateway: str  # CIDR on the bridge
    image: str
    ssh_key: str  # private key for user core
    state_dir: str
    nodes: tuple[NodeState, ...] = ()
    server_pid: int = 0  # the channel server (`up --serve`), 0: none

    def save(self) -> None:
        write_atomic(Path(self.state_dir) / "state.json", json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState:
        try:
            raw = json.loads((state_dir / "state.json").read_text())
        except (OSError, ValueError) as e:
            raise VMError(f"{state_dir}/state.json: cannot read the cluster state ({e})") from None
        raw["nodes"] = tuple(NodeState(**n) for n in raw.get("nodes", ()))
        return cls(**raw)

    def node(self, name: str) -> NodeState:
        for n in self.nodes:
            if n.name == name:
                return n
        raise VMError(f"cluster {self.cluster}: no node {name!r}")

    def vm(self, name: str) -> VM:
        """A VM handle for SSH into a running node (no process attached)."""
        n = self.node(name)
        return VM(disk=Path(n.workdir) / "disk.qcow2", ssh_key=Path(self.ssh_key),
                  netns=self.netns, ssh_port=n.ssh_port, hostname=n.name,
                  serial_log=n.serial_log)  # fmt: skip


@dataclass(frozen=True)
class UpOptions:
    image: Path
    state_root: Path = DEFAULT_STATE_ROOT
    ssh_keys: tuple[str, ...] = ()  # more public keys for user core
    memory: int = 1280
    cpus: int = 2  # the node that reboots in a rolling update has both cores of a 2-core machine
    serve: Path | None = None  # a channel repository to serve at updater.channel.url
    accel: str = "auto"
    wait: bool = True
    timeout: float = 900


def state_dir(cluster: Cluster, state_root: Path) -> Path:
    return state_root / cluster.name


def bridge_address(cluster: Cluster) -> str:
    """The bridge's CIDR: ``network.gateway``, or the first host of the nodes' subnet."""
    prefix = cluster.network.prefix
    net = ipaddress.ip_network(f"{cluster.nodes[0].address}/{prefix}", strict=False)
    gw = cluster.network.gateway or str(next(net.hosts()))
    if gw in {n.address for n in cluster.nodes}:
        raise VMError(f"{cluster.source}: the bridge address {gw} is also a node's address")
    return f"{gw}/{prefix}"


def _ns(netns: str, *args: str) -> list[str]:
    return ["ip", "-n", netns, *args]


def create_network(state: ClusterState) -> None:
    ns = state.netns
    run(["ip", "netns", "add", ns])
    run(_ns(ns, "link", "set", "lo", "up"))
    run(_ns(ns, "link", "add", state.bridge, "type", "bridge"))
    run(_ns(ns, "addr", "add", state.gateway, "dev", state.bridge))
    run(_ns(ns, "link", "set", state.bridge, "up"))
    for n in state.nodes:
        run(_ns(ns, "tuntap", "add", "dev", n.tap, "mode", "tap"))
        run(_ns(ns, "link", "set", n.tap, "master", state.bridge, "up"))


def up(cluster: Cluster, opts: UpOptions) -> ClusterState:
    """Start every node of ``cluster``; on any failure, remove what was started."""
    require(*TOOLS)
    if not opts.image.is_file():
        raise VMError(f"--image: {opts.image}: no such disk image")
    sdir = state_dir(cluster, opts.state_root)
    ns = netns_name(cluster.name)
    if (sdir / "state.json").exists() or netns_exists(ns):
        raise VMError(f"cluster {cluster.name} is already up (netns {ns}, state {sdir}); "
                      "run `tidehost vm cluster down` first")  # fmt: skip
    if cluster.etcd.tls:
        cert_dir = cluster.etcd.cert_dir or sdir / "certs"
        written = generate_certs(cluster, cert_dir)
        log.info("certificates in %s (%d new)", cert_dir, len(written))
        cluster = replace(cluster, etcd=replace(cluster.etcd, cert_dir=cert_dir))
    if opts.serve is not None:
        cluster = clusterchannel.trust_repository(cluster, opts.serve)
        serve_at = clusterchannel.serve_address(cluster, bridge_address(cluster))
    private_dir(sdir)  # the cluster's SSH key, certificates and seeds
    key = sdir / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"tidehost-{cluster.name}",
             "-f", key])  # fmt: skip
    keys = (read_ssh_public_key(key, "the cluster's key"), *opts.ssh_keys)
    # Render every node first: a bad cluster file fails before anything runs.
    texts = {n.name: render_user_data(cluster, n.name, Provider.NOCLOUD, extra_ssh_keys=keys)
             for n in cluster.nodes}  # fmt: skip
    nodes = tuple(
        NodeState(name=n.name, address=n.address, tap=f"tap{i}", mac=n.cluster_mac,
                  ssh_port=SSH_PORT_BASE + i, workdir=str(sdir / n.name))
        for i, n in enumerate(cluster.nodes)
    )  # fmt: skip
    state = ClusterState(cluster=cluster.name, netns=ns, bridge=BRIDGE,
                         gateway=bridge_address(cluster), image=str(opts.image.resolve()),
                         ssh_key=str(key), state_dir=str(sdir), nodes=nodes)  # fmt: skip
    state.save()
    try:
        create_network(state)
        if opts.serve is not None:
            pid = clusterchannel.start(ns, opts.serve, *serve_at, sdir)
            state = replace(state, server_pid=pid)
            state.save()
            log.info("channel %s served at %s in netns %s (pid %d)", opts.serve,
                     cluster.updater.channel_url, ns, pid)  # fmt: skip
        started = []
        for i, n in enumerate(nodes):
            pid = _start_node(state, cluster, n, i, texts[n.name], opts)
            started.append(replace(n, pid=pid))
            state = replace(state, nodes=(*started, *nodes[len(started):]))
            state.save()
        if opts.wait:
            wait_ssh(state, opts.timeout)
    except BaseException:
        log.error("cluster %s: bringing it up failed; removing it", cluster.name)
        down(cluster, opts.state_root, keep_logs=True)
        raise
    return state


def _start_node(state: ClusterState, cluster: Cluster, n: NodeState, index: int, text: str,
                opts: UpOptions) -> int:  # fmt: skip
    work = private_dir(Path(n.workdir))
    seed = work / "seed"
    write_seed(seed, cluster, cluster.node(n.name), text, (user_mac(index),))
    disk = work / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", state.image, disk])
    vm = VM(disk=disk, ssh_key=Path(state.ssh_key), hostname=n.name, memory=opts.memory,
            cpus=opts.cpus, accel=opts.accel, ssh_port=n.ssh_port, serial_log=n.serial_log,
            netns=state.netns, seed_dir=seed, tap=n.tap, tap_mac=n.mac,
            user_mac=user_mac(index), detach=True, workdir=work)  # fmt: skip
    vm.start()
    assert vm.proc is not None
    (work / "qemu.pid").write_text(f"{vm.proc.pid}\n")
    log.info("%s: QEMU pid %d, %s on %s (%s), serial log %s", n.name, vm.proc.pid, n.address,
             n.tap, n.mac, n.serial_log)  # fmt: skip
    return vm.proc.pid


def qemu_alive(n: NodeState) -> bool:
    """Whether ``n.pid`` is still this node's QEMU (not a recycled pid)."""
    if n.pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{n.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline and n.workdir.encode() in cmdline


def wait_ssh(state: ClusterState, timeout: float) -> dict[str, float]:
    """Wait until every node answers SSH; return seconds since ``up`` started each QEMU.

    Meanwhile each node's boot stage (firmware, kernel, initrd, system, cloud-init, ssh) is
    logged as it changes, read from its serial console, with the time so far. SSH is tried
    once a node runs its real root (or after ``SILENT`` seconds, for a quiet console).
    """
    t0 = time.monotonic()
    watch = BootWatch(t0)
    times: dict[str, float] = {}
    pending = list(state.nodes)

    def all_answer() -> bool:
        for n in list(pending):
            if not qemu_alive(n):
                raise VMError(f"{n.name}: QEMU exited (see {Path(n.workdir) / 'qemu.log'})")
            seen = watch.console(n.name, n.serial_log)
            early = seen.stage.rank < Stage.SYSTEM.rank and time.monotonic() - t0 < SILENT
            if not early and state.vm(n.name).answers(timeout=120):
                watch.answered(n.name)
                times[n.name] = time.monotonic() - t0
                pending.remove(n)
        return not pending

    if not poll(all_answer, timeout, every=3):
        n = pending[0]
        try:  # what ssh itself says, for the log (sshd not listening, too slow to greet, ...)
            state.vm(n.name).ssh("true", timeout=60)
            said = "it answers now"
        except VMError as e:
            said = str(e)
        raise VMError(f"{n.name}: SSH did not answer within {timeout:.0f}s (last seen: "
                      f"{watch.last.get(n.name, '-')}; {said}; serial log "
                      f"{n.serial_log})")  # fmt: skip
    return times


def _stop_qemu(n: NodeState, timeout: float = 15) -> None:
    if not qemu_alive(n):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(n.pid, signal.SIGTERM)
    if not poll(lambda: not qemu_alive(n), timeout, every=0.3):
        with contextlib.suppress(ProcessLookupError):
            os.kill(n.pid, signal.SIGKILL)
    reap(n.pid)  # when it is our child (the test's in-process `up`)


def down(cluster: Cluster, state_root: Path = DEFAULT_STATE_ROOT, *,
         keep_logs: bool = False) -> list[str]:  # fmt: skip
    """Stop the QEMUs, remove taps, bridge and namespace and the state folder; say what went."""
    sdir = state_dir(cluster, state_root)
    ns = netns_name(cluster.name)
    done: list[str] = []
    state = None
    with contextlib.suppress(VMError):
        state = ClusterState.load(sdir)
    if state is not None:
        if clusterchannel.alive(state.server_pid):
            clusterchannel.stop(state.server_pid)
            done.append(f"channel server (pid {state.server_pid})")
        for n in state.nodes:
            if qemu_alive(n):
                _stop_qemu(n)
                done.append(f"QEMU {n.name} (pid {n.pid})")
    if netns_exists(ns):
        taps = [n.tap for n in state.nodes] if state else []
        for dev in [*taps, BRIDGE]:
            r = run(_ns(ns, "link", "del", dev), check=False, capture=True)
            if r.returncode == 0:
                done.append(f"{'tap' if dev != BRIDGE else 'bridge'} {dev}")
        run(["ip", "netns", "del", ns])
        done.append(f"netns {ns}")
    if sdir.exists():
        if keep_logs:
            for p in sdir.glob("*/disk.qcow2"):
                p.unlink(missing_ok=True)
            (sdir / "state.json").unlink(missing_ok=True)
            done.append(f"state {sdir}/state.json (logs kept)")
        else:
            shutil.rmtree(sdir, ignore_errors=True)
            done.append(f"state {sdir}")
    return done


ETCDCTL = "sudo /etc/tidehost/bin/tidehost-etcdctl"
NODE_CHECKS = ("if test -e /run/cloud-init/result.json; then echo done; else echo running; fi;"
               " systemctl is-active etcd docker tidehost-swarm tidehost-node-publish"
               " | paste -sd' '")  # fmt: skip


def status(cluster: Cluster, state_root: Path = DEFAULT_STATE_ROOT) -> str:
    """A human-readable report: each node's QEMU, SSH and units, then etcd and the swarm."""
    sdir = state_dir(cluster, state_root)
    if not (sdir / "state.json").exists():
        ns = netns_name(cluster.name)
        left = f" (but netns {ns} exists: run down)" if netns_exists(ns) else ""
        return f"cluster {cluster.name}: not up{left}"
    state = ClusterState.load(sdir)
    lines = [f"cluster {state.cluster}: netns {state.netns}, bridge {state.gateway}, "
             f"image {state.image}"]  # fmt: skip
    if state.server_pid:
        running = "running" if clusterchannel.alive(state.server_pid) else "NOT running"
        lines.append(f"channel server: {cluster.updater.channel_url} (pid {state.server_pid}, "
                     f"{running})")  # fmt: skip
    reachable = []
    for n in state.nodes:
        vm = state.vm(n.name)
        if not qemu_alive(n):
            lines.append(f"  {n.name:<10} {n.address:<15} QEMU not running")
            continue
        out = vm.probe(NODE_CHECKS, timeout=120).split()  # unreachable: a status, not an error
        if not out:
            lines.append(f"  {n.name:<10} {n.address:<15} pid {n.pid}, SSH not answering yet")
            continue
        reachable.append(n.name)
        units = " ".join(f"{u}={s}" for u, s in zip(
            ("etcd", "docker", "swarm", "publish"), out[1:], strict=False))
        lines.append(f"  {n.name:<10} {n.address:<15} pid {n.pid}, cloud-init {out[0]}, {units}")
    for name in reachable:
        n = state.node(name)
        proxy = f"ProxyCommand=ip netns exec {state.netns} nc 127.0.0.1 {n.ssh_port}"
        lines.append(f"  ssh -i {state.ssh_key} -o '{proxy}' core@{n.name}")
    if reachable:
        vm = state.vm(reachable[0])
        lines.append("etcd:")
        lines += _indent(vm.probe(f"{ETCDCTL} endpoint health --cluster 2>&1", timeout=120))
        managers = [n.name for n in cluster.managers if n.name in reachable]
        if managers:
            lines.append("swarm:")
            lines += _indent(state.vm(managers[0]).probe("docker node ls 2>&1", timeout=120))
    return "\n".join(lines)


def _indent(text: str) -> list[str]:
    return ["  " + line for line in text.strip().splitlines()]
