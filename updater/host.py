"""The agent's side effects on the host, behind one small interface the tests replace."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from updater.errors import CommandError
from updater.run import run

log = logging.getLogger(__name__)


class Host(Protocol):
    def cmdline(self) -> str: ...
    def boot_id(self) -> str: ...
    def os_release(self) -> dict[str, str]: ...
    def machine_id(self) -> str: ...
    def unit_active(self, unit: str) -> bool: ...
    def unit_failed(self, unit: str) -> bool: ...
    def check_command(self, argv: Sequence[str]) -> bool: ...
    def bless(self, good: bool) -> None: ...
    def reboot(self) -> None: ...


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


class SystemdHost:
    """The real host: /proc, /etc, systemctl, systemd-bless-boot."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root

    def _read(self, rel: str) -> str:
        try:
            return (self.root / rel).read_text().strip()
        except OSError:
            return ""

    def cmdline(self) -> str:
        return self._read("proc/cmdline")

    def boot_id(self) -> str:
        return self._read("proc/sys/kernel/random/boot_id")

    def os_release(self) -> dict[str, str]:
        return parse_os_release(self._read("usr/lib/os-release"))

    def machine_id(self) -> str:
        return self._read("etc/machine-id")

    def unit_active(self, unit: str) -> bool:
        proc = run(["systemctl", "is-active", "--quiet", "--", unit], check=False, timeout=30)
        return proc.returncode == 0

    def unit_failed(self, unit: str) -> bool:
        proc = run(["systemctl", "is-failed", "--quiet", "--", unit], check=False, timeout=30)
        return proc.returncode == 0

    def check_command(self, argv: Sequence[str]) -> bool:
        try:
            return run(list(argv), check=False, timeout=120).returncode == 0
        except CommandError:
            return False

    def bless(self, good: bool) -> None:
        from updater.secureboot import bless_guard

        if good and (why := bless_guard()):
            log.warning("%s", why)
            return
        try:
            run(["/usr/lib/systemd/systemd-bless-boot", "good" if good else "bad"], timeout=60)
        except CommandError as e:  # e.g. not booted with boot counting: nothing to bless
            log.warning("systemd-bless-boot %s: %s", "good" if good else "bad", e)

    def reboot(self) -> None:
        run(["systemctl", "reboot"], timeout=60)
