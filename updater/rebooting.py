"""The agent's reboot phase: take the reboot lock, reboot, and after the boot confirm
health, bless the boot and release the lock (or mark it bad and reboot back).

A hold from before this start is released only once the host is healthy; a host whose
holder id turns out to be another host's (``HolderConflict``) holds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from channels.bundle import Slot
from updater import health, slots
from updater.errors import UpdaterError
from updater.schedule import backoff
from updater.state import Phase, State

if TYPE_CHECKING:
    from updater.config import AgentConfig
    from updater.host import Host
    from updater.lock import RebootLock

log = logging.getLogger(__name__)
LOCK_POLL = 30.0  # seconds between tries of a busy lock (jittered)


class Rebooting:
    """``Agent``'s lock, reboot and confirm steps (a mixin: the attributes are the agent's)."""

    config: AgentConfig
    host: Host
    lock: RebootLock
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    rand: Callable[[], float]

    if TYPE_CHECKING:
        layout: object
        holder_id: str

        def save(self, s: State) -> State: ...
        def _failed(self, s: State, error: str) -> tuple[State, float]: ...

    def reboot_when_locked(self, s: State) -> float:
        entries = slots.slot_entries(self.layout.esp, Slot(s.target_slot)) if s.target_slot \
            else []
        if not any((e := slots.parse_entry(p.name)) and not e.bad for p in entries):
            _, delay = self._failed(s, f"slot {s.target_slot.upper() or '?'} has no boot entry: "
                                       "not rebooting into an incompletely staged slot")
            return delay
        now = self.clock()
        if not s.lock_held:
            try:
                got = self.lock.acquire(self.holder_id)
            except UpdaterError as e:
                log.error("reboot lock: %s", e)
                self.save(replace(s, last_error=f"reboot lock: {e}", last_error_time=now))
                return backoff(max(1, s.failures), base=LOCK_POLL, cap=600, rand=self.rand)
            if not got:
                return LOCK_POLL * (0.5 + self.rand())
            s = self.save(replace(s, lock_held=self.config.strategy.needs_lock()))
        s = self.save(s.to(Phase.REBOOTING, now, reboot_boot_id=self.host.boot_id(),
                           reboots=s.reboots + 1))
        log.info("rebooting into %s on slot %s", s.target_version, s.target_slot.upper())
        try:
            self.host.reboot()
        except UpdaterError as e:
            log.error("reboot failed: %s", e)
        return 60.0

    def _renew(self) -> None:
        try:
            if not self.lock.renew(self.holder_id):
                log.warning("reboot lock: this host was removed as a dead holder")
        except UpdaterError as e:
            log.warning("reboot lock: renew failed: %s", e)

    def _release(self, s: State) -> State:
        try:
            self.lock.release(self.holder_id)
        except UpdaterError as e:
            log.error("reboot lock: release failed, will retry: %s", e)
            return replace(s, last_error=f"release failed: {e}", last_error_time=self.clock())
        return replace(s, lock_held=False, release_pending=False)

    def _release_when_healthy(self, s: State) -> float:
        """Release a hold from before this start once the host is healthy *now* (its units
        and commands; boot-complete.target gates trial boots only, and a gate that timed out
        on a slow first boot must not keep a host from ever updating). A host that holds
        nothing (never did, or was cleared as a dead holder) has nothing to wait for."""
        cfg = self.config
        bad = health.failures(self.host, cfg.health_units, cfg.health_commands,
                              boot_complete=False)  # fmt: skip
        if bad:
            try:
                held = self.lock.renew(self.holder_id)
            except UpdaterError as e:
                log.warning("reboot lock: renew failed: %s", e)
                return 10.0
            if not held:
                log.info("reboot lock: this host holds no slot; nothing to release")
                self.save(replace(s, lock_held=False, release_pending=False))
                return 0.0
            log.info("holding the reboot lock until healthy: waiting for %s", ", ".join(bad))
            return 10.0
        s = self.save(self._release(s))
        return 0.0 if not s.release_pending else backoff(2, base=30, rand=self.rand)

    # --- after the reboot ------------------------------------------------------------------

    def _confirm(self, s: State) -> float:
        cfg = self.config
        if s.lock_held:
            self._renew()
        left = cfg.health_deadline - (self.clock() - s.since)
        bad = health.wait_healthy(self.host, cfg.health_units, cfg.health_commands,
                                  max(left, 0.0), clock=self.clock, sleep=self.sleep,
                                  tick=self._renew if s.lock_held else None,
                                  fatal=(health.HEALTH_UNIT,))
        now = self.clock()
        if bad:
            log.error("health gate failed for %s: %s; marking the boot bad and rebooting",
                      s.target_version, ", ".join(bad))
            self.host.bless(False)
            s = self.save(s.to(Phase.REBOOTING, now, reboot_boot_id=self.host.boot_id(),
                               reboots=s.reboots + 1,
                               last_error=f"health: {', '.join(bad)}", last_error_time=now))
            try:
                self.host.reboot()
            except UpdaterError as e:
                log.error("reboot failed: %s", e)
            return 60.0
        self.host.bless(True)
        s = self._release(s) if s.lock_held else s
        log.info("updated to %s on slot %s: healthy, blessed%s", s.target_version,
                 s.target_slot.upper(), ", lock released" if not s.lock_held else "")
        self.save(s.to(Phase.IDLE, now, last_result=f"updated to {s.target_version}",
                       failures=0))
        return 0.0
