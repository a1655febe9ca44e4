"""The health gate: boot-complete.target, units that must be active, commands that must pass."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial

from updater.host import Host

log = logging.getLogger(__name__)
BOOT_COMPLETE = "boot-complete.target"
HEALTH_UNIT = "tidehost-update-health.service"  # the gate ordered before boot-complete.target


def failures(host: Host, units: Sequence[str], commands: Sequence[Sequence[str]],
             *, boot_complete: bool = True, first: bool = False) -> list[str]:
    """What is not healthy right now (empty list: healthy). With ``first``, only up to the
    first failure, in order: boot-complete.target, the units, the commands (a poll that
    waits for a booting host then costs one systemctl call, not every check)."""
    checks: list[tuple[str, Callable[[], bool]]] = []
    if boot_complete:
        checks.append((BOOT_COMPLETE, partial(host.unit_active, BOOT_COMPLETE)))
    checks += [(u, partial(host.unit_active, u)) for u in units]
    checks += [(" ".join(c), partial(host.check_command, c)) for c in commands]
    bad = []
    for name, ok in checks:
        if not ok():
            bad.append(name)
            if first:
                break
    return bad


def wait_healthy(
    host: Host,
    units: Sequence[str],
    commands: Sequence[Sequence[str]],
    deadline: float,
    *,
    boot_complete: bool = True,
    poll: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    tick: Callable[[], None] | None = None,
    fatal: Sequence[str] = (),
) -> list[str]:
    """Poll until healthy or ``deadline`` seconds passed; the last failures (empty: healthy).

    ``tick`` runs between polls (the agent renews its lock there); a unit of ``fatal`` that
    has failed ends the wait at once (the boot cannot become complete any more). Each poll
    stops at the first failure (under emulation every check is a process start, CPU the
    booting host needs); the answer at the end names every failure.
    """
    end = clock() + deadline
    while True:
        bad = failures(host, units, commands, boot_complete=boot_complete, first=True)
        dead = [f"{u} failed" for u in fatal if bad and host.unit_failed(u)]
        if dead or (bad and clock() >= end):
            bad = failures(host, units, commands, boot_complete=boot_complete)
        if dead:
            log.warning("health: %s", ", ".join(dead))
            return dead + bad
        if not bad or clock() >= end:
            if bad:
                log.warning("health: still failing after %ds: %s", deadline, ", ".join(bad))
            return bad
        if tick:
            tick()
        sleep(min(poll, max(0.0, end - clock())))
