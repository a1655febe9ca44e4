#!/usr/bin/env python3
"""Image build figures: cold and warm build time, image and payload sizes, boot to SSH.

    .venv/bin/python bench/build.py [--skip-cold] [--skip-boot]

Cold: an empty root-tree cache (mmdebstrap from Debian's archive). Warm: the cache filled.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from channels.bundle import load_bundle
from imagebuild.image.config import parse_image_file
from imagebuild.image.context import default_cache_dir
from imagebuild.image.pipeline import build
from imagebuild.lab.vm import VM

MB = 1_000_000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-boot", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = parse_image_file(None).with_overrides(version="1.0.0")
    with tempfile.TemporaryDirectory(prefix="tidehost-bench-") as tmp:
        out = Path(tmp) / "out"
        if not args.skip_cold:
            cold_cache = Path(tmp) / "cache"
            t = time.monotonic()
            build(config, out / "cold", cache_dir=cold_cache)
            print(f"cold build (empty cache):  {time.monotonic() - t:6.1f} s")
        build(config, out / "prime")  # make sure the shared cache is filled
        t = time.monotonic()
        result = build(config, out / "warm", cache_dir=default_cache_dir())
        print(f"warm build (cached tree):  {time.monotonic() - t:6.1f} s")
        raw, qcow = result.artifacts["raw"], result.artifacts["qcow2"]
        bundle = result.artifacts["release"]
        m = load_bundle(bundle, verify=False)
        print(f"raw disk:                  {raw.stat().st_size / MB:8.1f} MB virtual, "
              f"{raw.stat().st_blocks * 512 / MB:.1f} MB allocated")  # fmt: skip
        print(f"qcow2 disk:                {qcow.stat().st_size / MB:8.1f} MB")
        usr = m.files["usr.img"].size
        print(f"/usr payload ({m.usr_filesystem}, zstd): {usr / MB:8.1f} MB (goal <= 200 MB)")
        total = sum(f.size for f in m.files.values())
        print(f"whole update bundle:       {total / MB:8.1f} MB (usr + verity + kernel + initrd)")
        if args.skip_boot:
            return 0
        key = Path(tmp) / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        disk = Path(tmp) / "boot.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(qcow), "-F",
                        "qcow2", str(disk)], check=True)  # fmt: skip
        with VM(disk=disk, ssh_key=key) as vm:
            seconds = vm.wait_ssh()
            print(f"boot to SSH (QEMU start):  {seconds:6.1f} s (goal <= 60 s, TCG, 2 vCPUs)")
            vm.ssh("cloud-init status --wait >/dev/null; systemctl is-system-running --wait",
                   check=False)  # fmt: skip
            print("systemd-analyze:          ", vm.ssh("systemd-analyze", check=False).strip())
            print(vm.ssh("systemd-analyze critical-chain ssh.service", check=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
