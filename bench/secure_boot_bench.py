#!/usr/bin/env python3
"""Verified-boot figures: boot to SSH with and without Secure Boot, UKI size vs kernel + initrd.

    .venv/bin/python bench/secure_boot_bench.py [--runs N] [--skip-boot]

Builds the reference image twice (unsigned UKIs; and signed with a fresh key set made by
``tidehost keys init``), then boots each under QEMU (TCG here): the unsigned one on plain
OVMF, the signed one on OVMF's Secure Boot firmware in Setup Mode (its first boot enrols the
keys and resets, so the first Secure Boot figure includes that) and then again, enrolled.
Run it on a quiet machine: two TCG guests' figures differ by tens of seconds under load.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from channels.authenticode import pe_sections
from imagebuild.core.files import data_file
from imagebuild.image.config import parse_image_text
from imagebuild.image.keys import init_keys
from imagebuild.image.pipeline import build
from imagebuild.lab.vm import VM


def boot_seconds(disk: Path, key: Path, work: Path, secure_boot: bool, runs: int) -> list[float]:
    """Seconds to SSH for ``runs`` boots of one QEMU session (first: cold; then reboots)."""
    overlay = work / f"{disk.stem}-{'sb' if secure_boot else 'plain'}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk), "-F", "raw",
                    str(overlay), "4G"], check=True)  # fmt: skip
    vm = VM(disk=overlay, ssh_key=key, secure_boot=secure_boot, accel="tcg",
            serial_log=work / f"{overlay.stem}.serial.log")  # fmt: skip
    out = []
    with vm:
        out.append(vm.wait_ssh(timeout=1200))
        for _ in range(runs - 1):
            vm.ssh("sudo systemctl reboot", check=False)
            vm.started = time.monotonic()
            while vm.answers(timeout=10):
                pass
            out.append(vm.wait_ssh(timeout=1200))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2, help="boots per configuration")
    ap.add_argument("--skip-boot", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    reference = data_file("imagebuild.image.data", "reference.yaml").read_text()
    with tempfile.TemporaryDirectory(prefix="tidehost-sb-bench-") as tmp:
        t = Path(tmp)
        init_keys(t / "keys", name="Bench fleet")
        plain = parse_image_text(reference, "<reference>", t)
        signed = parse_image_text(reference + f"secure_boot:\n  keys: {t / 'keys'}\n",
                                  "<reference, secure_boot>", t)  # fmt: skip
        built = {name: build(c.with_overrides(version="1.0.0", formats="raw"), t / name)
                 for name, c in (("unsigned", plain), ("signed", signed))}  # fmt: skip
        for name, result in built.items():
            uki = (result.artifacts["release"] / "uki.efi").read_bytes()
            s = pe_sections(uki)
            parts = len(s[".linux"]) + len(s[".initrd"])
            print(f"{name:9s} UKI {len(uki):,} B = kernel + initrd {parts:,} B "
                  f"+ {len(uki) - parts:,} B ({(len(uki) / parts - 1) * 100:.2f} %)")
        if args.skip_boot:
            return 0
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(t / "id")],
                       check=True)  # fmt: skip
        off = boot_seconds(built["unsigned"].artifacts["raw"], t / "id", t, False, args.runs)
        on = boot_seconds(built["signed"].artifacts["raw"], t / "id", t, True, args.runs)
        print("boot to SSH without Secure Boot: " + ", ".join(f"{s:.1f} s" for s in off))
        print("boot to SSH with Secure Boot:    " + ", ".join(f"{s:.1f} s" for s in on)
              + "  (the first includes enrolling the keys and a reset)")
        print(f"ratio, first boots: {on[0] / off[0]:.2f}")
        if len(on) > 1:
            print(f"ratio, later boots: {sum(on[1:]) / sum(off[1:]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
