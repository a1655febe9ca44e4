#!/usr/bin/env python3
"""Image build figures: build time, payload sizes, and where a first boot's time goes.

    .venv/bin/python bench/build.py [--skip-cold] [--skip-boot] [--boots N] [--reboot]
    .venv/bin/python bench/build.py --disk IMAGE.qcow2 [--boots N] [--reboot]  # boots only

Cold: an empty root-tree cache (mmdebstrap from Debian's archive). Warm: the cache filled.
Each boot is a *first* boot (a fresh qcow2 overlay, a NoCloud seed), as a new host's is.
Per boot it prints: firmware + boot loader (from the console: the time QEMU had run when
the kernel started, i.e. the smallest "wall clock seen - kernel timestamp" over the
console's kernel lines), systemd-analyze's kernel / initrd / userspace, the SSH port's
banner and a key login after QEMU started, then `systemd-analyze blame` (top) and
`critical-chain ssh.service`; with several boots, the medians. With --reboot, each host is
then rebooted (`systemctl reboot`, as the agent does for an update) and its second boot is
measured as well: from the reboot command to SSH answering (what an update's reboot
costs), its boot alone (from the reset to SSH: its kernel's start on the console, less the
first boot's firmware time) and systemd-analyze's phases.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from channels.bundle import load_bundle
from imagebuild.core.run import run
from imagebuild.core.wait import poll
from imagebuild.image.config import parse_image_file
from imagebuild.image.context import default_cache_dir
from imagebuild.image.pipeline import build
from imagebuild.lab.vm import VM, VMError

MB = 1_000_000
KERNEL_LINE = re.compile(r"^\[\s*(\d+\.\d+)\]")
UNIT = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "us": 1e-6}


def span(text: str) -> float:
    """Seconds of a systemd time span such as ``1min 2.345s``, ``812ms`` (pure)."""
    return sum(float(n) * UNIT[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(min|ms|us|s|h)", text))


def startup_phases(analyze: str) -> dict[str, float]:
    """``Startup finished in 3.6s (kernel) + 9.2s (initrd) + ...`` -> {kernel: 3.6, ...}."""
    line = next((ln for ln in analyze.splitlines() if "Startup finished" in ln), "")
    body = line.split(" in ", 1)[-1].split(" = ")[0]
    return {m.group(2): span(m.group(1)) for m in re.finditer(r"([\d.\sminu]+?s) \((\w+)\)", body)}


class ConsoleClock:
    """Tails a serial log and notes when each line first appeared (seconds after ``t0``)."""

    def __init__(self, path: Path, t0: float) -> None:
        self.path, self.t0 = path, t0
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tail, daemon=True)
        self._thread.start()

    def _tail(self) -> None:
        pos, partial = 0, ""
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos += len(chunk)
            except OSError:
                chunk = b""
            now = time.monotonic() - self.t0
            text = partial + chunk.decode(errors="replace")
            *done, partial = text.split("\n")
            self.lines += [(now, ln.rstrip("\r")) for ln in done]
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def kernel_start(self, after: float = 0.0) -> float | None:
        """When the kernel started, in seconds after QEMU did: firmware + boot loader. With
        ``after``, the first kernel that started after that time (a reboot's)."""
        starts = [seen - float(m.group(1)) for seen, ln in self.lines
                  if (m := KERNEL_LINE.match(ln))]  # fmt: skip
        starts = [t for t in starts if t > after]
        return min(starts) if starts else None


DETAILS = ("journalctl -b -o short-monotonic --no-pager _PID=1 | grep -A30 'Switching root'; "
           "journalctl -b -o short-monotonic --no-pager -u systemd-networkd "
           "-u systemd-networkd-wait-online -u cloud-init-main -u cloud-init-local "
           "-u cloud-init-network | tail -40; systemd-analyze critical-chain --no-pager")


def reboot_once(vm: VM, clock: ConsoleClock) -> dict[str, float]:
    """Reboot a booted host as the agent does; its second boot's figures, printed. Its boot
    to SSH is counted from the reset: the first boot's firmware time before the new kernel
    started (as the console shows), so the shutdown before it is not."""
    boot_id = vm.ssh("cat /proc/sys/kernel/random/boot_id").strip()
    t = time.monotonic()
    with contextlib.suppress(VMError):  # the connection may end with the host's shutdown
        vm.ssh("sudo systemctl reboot", check=False, timeout=60)
    poll(lambda: vm.probe("cat /proc/sys/kernel/random/boot_id") not in (boot_id, ""), 900)
    seconds = time.monotonic() - t
    answered = time.monotonic() - clock.t0
    firmware, kernel = clock.kernel_start(), clock.kernel_start(after=t - clock.t0)
    vm.ssh("systemctl is-system-running --wait", check=False, timeout=600)
    analyze = vm.ssh("systemd-analyze", check=False).strip()
    chain = vm.ssh("systemd-analyze critical-chain --no-pager ssh.service", check=False)
    cloud = vm.ssh("cloud-init status", check=False).strip()
    print(f"--- reboot: {analyze}\n{chain.rstrip()}\n    cloud-init: {cloud}")
    figures = {f"again {k}": v for k, v in startup_phases(analyze).items()}
    figures["reboot to ssh"] = seconds
    if firmware is not None and kernel is not None:
        figures["again boot to ssh"] = answered - kernel + firmware
    return figures


def boot_once(qcow: Path, key: Path, work: Path, n: int, details: bool = False,
              reboot: bool = False) -> dict[str, float]:  # fmt: skip
    disk = work / f"boot{n}.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", qcow, "-F", "qcow2", disk])
    serial = work / f"serial{n}.log"
    vm = VM(disk=disk, ssh_key=key, serial_log=serial)
    vm.start()
    clock = ConsoleClock(serial, vm.started)
    try:
        port = vm.wait_ssh_port(timeout=900)
        login = vm.wait_ssh(timeout=600)
        vm.ssh("cloud-init status --wait >/dev/null; systemctl is-system-running --wait",
               check=False, timeout=600)  # fmt: skip
        analyze = vm.ssh("systemd-analyze", check=False).strip()
        blame = vm.ssh("systemd-analyze blame --no-pager | grep -v "
                       "'\\.device$' | head -20", check=False)
        chain = vm.ssh("systemd-analyze critical-chain --no-pager ssh.service", check=False)
        failed = vm.ssh("systemctl --failed --plain --no-legend", check=False).strip()
        if details:
            print(vm.ssh(DETAILS, check=False))
        again = reboot_once(vm, clock) if reboot else {}
    finally:
        vm.stop(timeout=30)
        clock.stop()
    fw = clock.kernel_start()
    phases = startup_phases(analyze)
    print(f"--- boot {n}: {analyze}")
    print(blame.rstrip())
    print(chain.rstrip())
    if failed:
        print(f"FAILED UNITS: {failed}")
    figures = {"firmware+loader": fw if fw is not None else float("nan"), **phases,
               "ssh port": port, "ssh login": login, **again}  # fmt: skip
    print("    " + ", ".join(f"{k} {v:.1f} s" for k, v in figures.items()))
    return figures


def boot_figures(qcow: Path, boots: int, details: bool = False, reboot: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="tidehost-bench-boot-") as tmp:
        key = Path(tmp) / "key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
        results = [boot_once(qcow, key, Path(tmp), n, details, reboot)
                   for n in range(1, boots + 1)]
    keys = [k for k in results[0] if all(k in r for r in results)]
    print(f"\nfirst boot under QEMU, median of {boots} (TCG if KVM cannot run guests, 2 vCPUs):")
    for k in keys:
        values = [r[k] for r in results]
        print(f"  {k:16s} {statistics.median(values):6.1f} s   "
              f"({', '.join(f'{v:.1f}' for v in values)})")  # fmt: skip


def sizes(bundle: Path) -> None:
    m = load_bundle(bundle, verify=False)
    for name, info in m.files.items():
        print(f"  {name:12s} {info.size / MB:8.1f} MB")
    total = sum(f.size for f in m.files.values())
    print(f"  {'payload':12s} {total / MB:8.1f} MB (usr + verity + kernel + initrd; goal <= 160)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-boot", action="store_true")
    ap.add_argument("--boots", type=int, default=3, help="first boots to take the median of")
    ap.add_argument("--disk", type=Path, help="boot this qcow2 instead of building one")
    ap.add_argument("--details", action="store_true", help="also PID 1's, the network's and "
                    "cloud-init's journal and the default target's critical chain")
    ap.add_argument("--reboot", action="store_true", help="also reboot each host once and "
                    "measure its second boot (an update's reboot)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.disk:
        boot_figures(args.disk.resolve(), args.boots, args.details, args.reboot)
        return 0
    config = parse_image_file(None).with_overrides(version="1.0.0")
    with tempfile.TemporaryDirectory(prefix="tidehost-bench-") as tmp:
        out = Path(tmp) / "out"
        if not args.skip_cold:
            t = time.monotonic()
            build(config, out / "cold", cache_dir=Path(tmp) / "cache")
            print(f"cold build (empty cache):  {time.monotonic() - t:6.1f} s")
        build(config, out / "prime")  # make sure the shared cache is filled
        t = time.monotonic()
        result = build(config, out / "warm", cache_dir=default_cache_dir())
        print(f"warm build (cached tree):  {time.monotonic() - t:6.1f} s")
        qcow = result.artifacts["qcow2"]
        print(f"qcow2 disk:                {qcow.stat().st_size / MB:8.1f} MB")
        sizes(result.artifacts["release"])
        if not args.skip_boot:
            boot_figures(qcow, args.boots, args.details, args.reboot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
