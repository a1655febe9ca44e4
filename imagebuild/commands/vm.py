"""``tidehost vm run DISK``: boot a disk under QEMU (UEFI) with SSH on a local port.

``tidehost vm cluster up|status|down CLUSTER.yaml --image IMG``: every node of a cluster file
as a VM on a bridge inside a network namespace of its own (see ``imagebuild.lab.cluster``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

from imagebuild.cloudconfig.parse import parse_cluster_file
from imagebuild.core.errors import VMError
from imagebuild.core.files import read_ssh_public_key
from imagebuild.lab import cluster as vmcluster
from imagebuild.lab.vm import SSH_USER, VM

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vm", help="run Tidehost disks under QEMU")
    vsub = p.add_subparsers(dest="vm_verb", metavar="VM_VERB", required=True)
    r = vsub.add_parser("run", help="boot a disk; Ctrl-C powers it off", description=__doc__)
    r.add_argument("disk", type=Path, help="raw or qcow2 disk image")
    r.add_argument("--ssh-key", type=Path, action="append", default=[],
                   help="public key to authorise for the user 'core' (repeatable)")  # fmt: skip
    r.add_argument("--user-data", type=Path, help="#cloud-config user-data for the NoCloud seed")
    r.add_argument("--hostname", default="tidehost")
    r.add_argument("--port", type=int, default=0, help="local SSH port (default: a free one)")
    r.add_argument("--memory", type=int, default=2048, help="MiB")
    r.add_argument("--cpus", type=int, default=2)
    r.add_argument("--accel", default="auto", help="auto (try KVM, else TCG), kvm or tcg")
    r.add_argument("--serial-log", type=Path, help="serial console log (default: a temp file)")
    r.add_argument("--snapshot", action="store_true", help="discard the disk's changes on exit")
    r.add_argument("--no-wait", action="store_true", help="return once SSH answers")
    r.add_argument("--secure-boot", action="store_true",
                   help="OVMF's Secure Boot firmware in Setup Mode (with SMM): the image enrols "
                        "its fleet's keys on the first boot")
    r.add_argument("--tpm", action="store_true", help="a TPM 2.0 from swtpm")
    r.set_defaults(func=run_vm)
    _register_cluster(vsub)


def _register_cluster(vsub: argparse._SubParsersAction) -> None:
    c = vsub.add_parser("cluster", help="a cluster file's nodes as VMs on one private network")
    csub = c.add_subparsers(dest="cluster_verb", metavar="ACTION", required=True)
    for verb, text in (("up", "render seeds, create the network, boot every node"),
                       ("status", "each node's QEMU, SSH and units; etcd health; swarm nodes"),
                       ("down", "stop the VMs, remove taps, bridge, namespace and state")):
        a = csub.add_parser(verb, help=text)
        a.add_argument("cluster", type=Path, help="the cluster file")
        a.add_argument("--state-dir", type=Path, default=vmcluster.DEFAULT_STATE_ROOT,
                       help="where clusters keep their state (default: %(default)s)")
        a.set_defaults(func=run_cluster)
        if verb != "up":
            continue
        a.add_argument("--image", type=Path, required=True, help="qcow2 image (read only)")
        a.add_argument("--ssh-key", type=Path, action="append", default=[],
                       help="another public key for the user 'core' (repeatable)")
        a.add_argument("--memory", type=int, default=1280, help="MiB per node")
        a.add_argument("--cpus", type=int, default=2, help="vCPUs per node")
        a.add_argument("--accel", default="auto", help="auto (try KVM, else TCG), kvm or tcg")
        a.add_argument("--serve", type=Path, metavar="REPO",
                       help="serve this channel repository at updater.channel.url inside the "
                            "cluster's namespace; the nodes trust its root.json")
        a.add_argument("--no-wait", action="store_true", help="do not wait for SSH")
        a.add_argument("--timeout", type=float, default=900, help="seconds to wait for SSH")


def run_vm(args: argparse.Namespace) -> int:
    keys = [read_ssh_public_key(p) for p in args.ssh_key]
    user_data = None
    if args.user_data:
        try:
            user_data = args.user_data.read_text()
        except OSError as e:
            raise VMError(f"--user-data: cannot read {args.user_data} ({e.strerror})") from None
    vm = VM(disk=args.disk, authorized_keys=keys, user_data=user_data, hostname=args.hostname,
            memory=args.memory, cpus=args.cpus, accel=args.accel, ssh_port=args.port,
            serial_log=args.serial_log, snapshot=args.snapshot, secure_boot=args.secure_boot,
            tpm=args.tpm)  # fmt: skip
    vm.start()
    try:
        if keys:
            seconds = vm.wait_ssh_port()
            log.info("SSH port open after %.0fs", seconds)
        print(f"ssh -p {vm.ssh_port} {SSH_USER}@127.0.0.1    # serial log: {vm.serial_log}",
              flush=True)  # fmt: skip
        if args.no_wait:
            vm.proc = vm.swtpm = None  # leave QEMU (and its swtpm) running
            return 0
        with contextlib.suppress(KeyboardInterrupt):
            assert vm.proc is not None
            vm.proc.wait()
    finally:
        if vm.proc is not None:
            vm.stop()
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    cluster = parse_cluster_file(args.cluster)
    if args.cluster_verb == "status":
        print(vmcluster.status(cluster, args.state_dir))
        return 0
    if args.cluster_verb == "down":
        done = vmcluster.down(cluster, args.state_dir)
        print(f"cluster {cluster.name}: " + ("removed " + ", ".join(done) if done
                                             else "nothing to remove"))  # fmt: skip
        return 0
    keys = tuple(read_ssh_public_key(p) for p in args.ssh_key)
    opts = vmcluster.UpOptions(image=args.image, state_root=args.state_dir, ssh_keys=keys,
                               memory=args.memory, cpus=args.cpus, accel=args.accel,
                               serve=args.serve, wait=not args.no_wait,
                               timeout=args.timeout)  # fmt: skip
    state = vmcluster.up(cluster, opts)
    print(f"cluster {state.cluster}: {len(state.nodes)} node(s) in netns {state.netns}, "
          f"bridge {state.gateway}")  # fmt: skip
    for n in state.nodes:
        proxy = f"ProxyCommand=ip netns exec {state.netns} nc 127.0.0.1 {n.ssh_port}"
        print(f"  {n.name}: {n.address}  ssh -i {state.ssh_key} -o '{proxy}' core@{n.name}")
    print(f"`tidehost vm cluster status {args.cluster}` shows etcd and the swarm")
    return 0

