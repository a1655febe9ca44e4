"""The health gate: boot-complete.target, units that must be active, commands that must pass."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from updater.host import Host

log = logging.getLogger(__name__)
BOOT_COMPLETE = "boot-complete.target"


def failures(host: Host, units: Sequence[str], commands: Sequence[Sequence[str]],
             *, boot_complete: bool = True) -> list[str]:
    """What is not healthy right now (empty list: healthy)."""
    bad = []
    if boot_complete and not host.unit_active(BOOT_COMPLETE):
        bad.append(BOOT_COMPLETE)
    bad += [u for u in units if not host.unit_active(u)]
    bad += [" ".join(c) for c in commands if not host.check_command(c)]
    return bad


def wait_healthy(
    host: Host,
    units: Sequence[str],
    commands: Sequence[Sequence[str]],
    deadline: float,
    *,
    boot_complete: bool = True,
    poll: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    tick: Callable[[], None] | None = None,
) -> list[str]:
    """Poll until healthy or ``deadline`` seconds passed; the last failures (empty: healthy).

    ``tick`` runs between polls (the agent renews its lock there).
    """
    end = clock() + deadline
    while True:
        bad = failures(host, units, commands, boot_complete=boot_complete)
        if not bad or clock() >= end:
            if bad:
                log.warning("health: still failing after %ds: %s", deadline, ", ".join(bad))
            return bad
        if tick:
            tick()
        sleep(min(poll, max(0.0, end - clock())))
