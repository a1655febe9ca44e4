"""``tidehost demo``: the main job, end to end, on this machine.

By default the 3-node cluster demo (``imagebuild.lab.demo``): build v1 and v2, publish v1,
bring up the example cluster, publish v2 and watch the nodes update one at a time under the
etcd lock while their replicated service keeps answering, then promote v2 to beta and stable.

``--single-host``: one host, a local etcd, and its agent step by step:

1. build the reference image as v1.0.0 and its successor v1.1.0 (the Debian root tree comes
   from the cache after the first run);
2. create a signed channel repository, publish v1.0.0 to alpha, serve it on 127.0.0.1 and
   start a local etcd for the reboot lock;
3. boot a v1.0.0 host under QEMU and show its os-release and its verity-checked /usr;
4. publish v1.1.0 and watch the host's agent find it, stage it in slot B, take the etcd
   lock, reboot, pass its health gate, bless the boot and release the lock.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from imagebuild.core.log import complete_step
from imagebuild.core.run import run
from imagebuild.image.config import parse_image_file
from imagebuild.image.pipeline import build
from imagebuild.lab.demo import run_cluster_demo, show
from imagebuild.lab.hostlab import UpdateLab, bless_latency, print_status, wait_for

log = logging.getLogger(__name__)
V1, V2 = "1.0.0", "1.1.0"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build, publish, boot and update a cluster (or one host)",
                       description=__doc__)  # fmt: skip
    p.add_argument("-o", "--output", type=Path, default=Path("out/demo"))
    p.add_argument("--single-host", action="store_true",
                   help="one host and a local etcd instead of the 3-node cluster")
    p.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    out: Path = args.output.resolve()
    if not args.single_host:
        return run_cluster_demo(out / "cluster", keep=args.keep, v1=V1, v2=V2)
    out.mkdir(parents=True, exist_ok=True)
    key = out / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
    base = parse_image_file(None)
    v1 = build(base.with_overrides(version=V1, channel="alpha"), out)
    v2 = build(base.with_overrides(version=V2, channel="alpha", formats="raw"), out)
    disk = out / "demo-host.qcow2"
    disk.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", v1.artifacts["qcow2"], "-F", "qcow2",
         disk, "8G"])  # fmt: skip
    lab = UpdateLab(out / "lab")
    # A fresh repository every run: versions in a channel only go forward.
    run(["rm", "-rf", lab.repo])
    lab.start()
    try:
        print(f"\n== channel served at {lab.server.url if lab.server else ''}, "
              f"etcd at {lab.etcd.url}", flush=True)  # fmt: skip
        lab.publish(v1.artifacts["release"])
        vm = lab.boot(disk, key, "demo-host")
        try:
            with complete_step("Booting the v1.0.0 host (QEMU; TCG where KVM cannot run guests)"):
                seconds = vm.wait_ssh(timeout=900)
            log.info("SSH answered %.0fs after QEMU started", seconds)
            show(vm, "cat /etc/os-release")
            show(vm, "findmnt /usr")
            show(vm, "sudo veritysetup status usr | head -3")
            show(vm, "tidehost-update status")
            print(f"\n== publishing {V2} to alpha", flush=True)
            lab.publish(v2.artifacts["release"])
            start = time.monotonic()
            wait_for(vm, lambda s: s["version"] == V2 and s["state"] == "idle", timeout=2400,
                     on_change=print_status)  # fmt: skip
            latency = bless_latency(vm)
            shown = "not in the journal" if latency is None else f"{latency:.1f} s"
            print(f"\n== updated to {V2} in {time.monotonic() - start:.0f}s; boot-complete.target "
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
