"""``tidehost demo``: the main job, end to end, on this machine.

Builds the reference image (the root tree comes from the cache after the first run), boots
it under QEMU and shows, over SSH, what the host runs: its os-release and its read-only,
verity-checked /usr.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imagebuild.config import parse_image_file
from imagebuild.log import complete_step
from imagebuild.pipeline import build
from imagebuild.run import run
from imagebuild.vm import VM

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build the reference image, boot it, show it",
                       description=__doc__)  # fmt: skip
    p.add_argument("-o", "--output", type=Path, default=Path("out/demo"))
    p.set_defaults(func=run_demo)


def show(vm: VM, command: str) -> None:
    print(f"\n[core@tidehost ~]$ {command}", flush=True)
    print(vm.ssh(command).rstrip(), flush=True)


def run_demo(args: argparse.Namespace) -> int:
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    key = out / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
    config = parse_image_file(None).with_overrides(version="1.0.0", channel="alpha")
    result = build(config, out)
    disk = out / "demo-host.qcow2"
    disk.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", result.artifacts["qcow2"].resolve(),
         "-F", "qcow2", disk, "8G"])  # fmt: skip
    with VM(disk=disk, ssh_key=key, serial_log=out / "serial.log") as vm:
        with complete_step("Booting the host (QEMU; TCG where KVM cannot run guests)"):
            seconds = vm.wait_ssh()
        log.info("SSH answered %.0fs after QEMU started", seconds)
        show(vm, "cat /etc/os-release")
        show(vm, "findmnt /usr")
        show(vm, "sudo veritysetup status usr | head -3")
        show(vm, "cat /proc/cmdline")
        show(vm, "df -h /")
        with complete_step("Powering the host off"):
            vm.stop()
    return 0
