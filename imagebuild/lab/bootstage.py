"""Where a booting node is, read from its serial console, and a printer of the changes.

``console_stage`` is pure: console text in, the stage of the node's latest boot out. The
markers are what the firmware, the kernel, dracut's systemd initrd, systemd and cloud-init
print on ``console=ttyS0`` (seen on the reference image under QEMU)::

    BdsDxe: loading Boot0001 ...                        firmware
    [    0.000000] Linux version 6.12...                 kernel
    Run /init as init process / Running in initrd.      initrd
    Welcome to Tidehost 1.0.0 (alpha)!                  system (the real root)
    Starting cloud-init-main.service / Cloud-init v.    cloud-init
    Entering emergency mode                             emergency (a console waits)
    reboot: Restarting system                           rebooting

A reboot starts a new boot: only the text after the last ``reboot: Restarting system``
counts, and within one boot the furthest stage reached wins (systemd prints its
"running in system mode" line in the initrd too, so order of appearance alone would not
do). ``ssh`` is not on the console: the caller says when SSH answers.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class Stage(enum.StrEnum):
    REBOOTING = "rebooting"
    FIRMWARE = "firmware"
    KERNEL = "kernel"
    INITRD = "initrd"
    SYSTEM = "system"
    CLOUD_INIT = "cloud-init"
    EMERGENCY = "emergency"
    SSH = "ssh"

    @property
    def rank(self) -> int:
        return list(Stage).index(self)


# (stage, pattern): the furthest stage whose pattern occurs in the current boot wins.
MARKERS: tuple[tuple[Stage, re.Pattern[str]], ...] = (
    (Stage.FIRMWARE, re.compile(r"BdsDxe: |UEFI Interactive Shell|Tianocore")),
    (Stage.KERNEL, re.compile(r"Linux version \d|EFI stub: ")),
    (Stage.INITRD, re.compile(r"Run /init as init process|Running in initrd\.")),
    (Stage.SYSTEM, re.compile(r"Welcome to (?![^\n]*(?:[Ii]nitramfs|initrd))[^\n]*!"
                              r"|Stopped initrd-switch-root\.service")),  # fmt: skip
    (Stage.CLOUD_INIT, re.compile(r"Starting cloud-init|Cloud-init v\. \S+ running")),
    (Stage.EMERGENCY, re.compile(r"Entering emergency mode|You are in emergency mode")),
)
RESTART = re.compile(r"reboot: (?:Restarting system|machine restart)")


@dataclass(frozen=True)
class BootStage:
    stage: Stage
    boot: int  # 1 for the first boot, 2 after one reboot, ...

    def __str__(self) -> str:
        return self.stage.value if self.boot == 1 else f"{self.stage.value} (boot {self.boot})"


def console_stage(text: str) -> BootStage:
    """The stage of the latest boot in the console text ``text`` (pure).

    No output yet means the firmware runs (OVMF prints little before its boot manager);
    after a restart and before the firmware speaks again, ``rebooting``.
    """
    restarts = list(RESTART.finditer(text))
    boot = len(restarts) + 1
    current = text[restarts[-1].end():] if restarts else text
    reached = [stage for stage, pattern in MARKERS if pattern.search(current)]
    if reached:
        return BootStage(max(reached, key=lambda s: s.rank), boot)
    return BootStage(Stage.REBOOTING if restarts else Stage.FIRMWARE, boot)


def read_console(path: Path) -> str:
    """A serial log's text so far ("" before QEMU has written any)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class BootWatch:
    """Says each node's stage once when it changes, with the seconds since ``t0``::

        node1: firmware (0s)
        node1: kernel (9s)
        node2: initrd (31s)
    """

    def __init__(self, t0: float | None = None, say: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.clock = clock
        self.t0 = clock() if t0 is None else t0
        self.say = say or log.info
        self.last: dict[str, BootStage] = {}

    def show(self, name: str, now: BootStage) -> bool:
        """Say ``now`` for ``name`` if it differs from what was said last; whether it did."""
        if self.last.get(name) == now:
            return False
        self.last[name] = now
        self.say(f"{name}: {now} ({self.clock() - self.t0:.0f}s)")
        return True

    def console(self, name: str, serial_log: Path) -> BootStage:
        """Read ``serial_log``, say the stage if it changed, and return it."""
        now = console_stage(read_console(serial_log))
        self.show(name, now)
        return now

    def answered(self, name: str) -> None:
        """SSH answers on ``name``: the last stage of its boot."""
        boot = self.last[name].boot if name in self.last else 1
        self.show(name, BootStage(Stage.SSH, boot))
