"""``tidehost vm run DISK``: boot a disk under QEMU (UEFI) with SSH on a local port."""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

from imagebuild.errors import VMError
from imagebuild.vm import SSH_USER, VM

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
    r.set_defaults(func=run_vm)


def run_vm(args: argparse.Namespace) -> int:
    keys = []
    for path in args.ssh_key:
        pub = path if path.suffix == ".pub" else path.with_suffix(".pub")
        try:
            keys.append(pub.read_text().strip())
        except OSError as e:
            raise VMError(f"--ssh-key: cannot read {pub} ({e.strerror})") from None
    user_data = None
    if args.user_data:
        try:
            user_data = args.user_data.read_text()
        except OSError as e:
            raise VMError(f"--user-data: cannot read {args.user_data} ({e.strerror})") from None
    vm = VM(disk=args.disk, authorized_keys=keys, user_data=user_data, hostname=args.hostname,
            memory=args.memory, cpus=args.cpus, accel=args.accel, ssh_port=args.port,
            serial_log=args.serial_log, snapshot=args.snapshot)  # fmt: skip
    vm.start()
    try:
        if keys:
            seconds = vm.wait_ssh_port()
            log.info("SSH port open after %.0fs", seconds)
        print(f"ssh -p {vm.ssh_port} {SSH_USER}@127.0.0.1    # serial log: {vm.serial_log}",
              flush=True)  # fmt: skip
        if args.no_wait:
            vm.proc = None  # leave QEMU running
            return 0
        with contextlib.suppress(KeyboardInterrupt):
            assert vm.proc is not None
            vm.proc.wait()
    finally:
        if vm.proc is not None:
            vm.stop()
    return 0
