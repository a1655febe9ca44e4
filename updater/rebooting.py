"""The agent's reboot phase: take the reboot lock, reboot, and after the boot confirm
health, bless the boot and release the lock (or mark it bad and reboot back).

A hold from before this start is released only once the host is healthy; a host whose
holder id turns out to be another host's (``HolderConflict``) holds nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from channels import fleet
from channels.bundle import Slot
from updater import health, slots
from updater.config import OnTimeout
from updater.errors import UpdaterError
from updater.fields import human
from updater.schedule import backoff, next_check, window_open
from updater.state import Phase, State

if TYPE_CHECKING:
    from updater.config import AgentConfig
    from updater.drain import Drainer
    from updater.host import Host
    from updater.lock import RebootLock
    from updater.report import FleetReporter

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
    fleet: FleetReporter | None
    drainer: Drainer

    if TYPE_CHECKING:
        layout: object
        holder_id: str

        def save(self, s: State) -> State: ...
        def report_again(self, s: State) -> None: ...
        def _failed(self, s: State, error: str) -> tuple[State, float]: ...

    def reboot_when_locked(self, s: State) -> float:
        entries = slots.slot_entries(self.layout.esp, Slot(s.target_slot)) if s.target_slot \
            else []
        if not any((e := slots.parse_entry(p.name)) and not e.bad for p in entries):
            _, delay = self._failed(s, f"slot {s.target_slot.upper() or '?'} has no boot entry: "
                                       "not rebooting into an incompletely staged slot")
            return delay
        if not s.lock_held:
            began = time.monotonic()
            delay = self._take_lock(s)
            if delay is not None:
                return delay
            s = self.load()
            if self.config.drain.wanted and time.monotonic() - began > 30:
                return 0.0  # waited long in this step: drain in the next, under a new deadline
        if self.config.drain.wanted and not s.drained:
            delay = self._drain(s)
            if delay is not None:
                return delay
            s = self.load()
        now = self.clock()
        s = self.save(s.to(Phase.REBOOTING, now, reboot_boot_id=self.host.boot_id(),
                           reboots=s.reboots + 1))
        log.info("rebooting into %s on slot %s", s.target_version, s.target_slot.upper())
        try:
            self.host.reboot()
        except UpdaterError as e:
            log.error("reboot failed: %s", e)
        return 60.0

    # --- the lock: the halt rule, then a slot, waiting on a watch ------------------------------

    def _halted(self, s: State) -> str:
        """Why the group does not take ``s.target_version`` ("" if it may, or if the group's
        rollbacks cannot be read: then the lock, in the same etcd, decides)."""
        cfg = self.config
        if self.fleet is None or cfg.halt_after <= 0 or not s.target_version:
            return ""
        try:
            rollbacks = self.fleet.rollbacks(cfg.group)
        except UpdaterError as e:  # the lock decides whether etcd is there; do not block on this
            log.warning("cannot read the rollbacks of group %s (%s): no halt check", cfg.group, e)
            return ""
        stop = fleet.halted(rollbacks, cfg.halt_after)
        v = s.target_version
        return fleet.halt_reason(v, stop[v], cfg.group, cfg.halt_after) if v in stop else ""

    def _wait_budget(self) -> float:
        """How long one step waits for a slot before it re-reads (the safety net): most of
        the lock step's deadline, at most 30 minutes, jittered."""
        longest = min(max(self.config.deadlines.lock - 60.0, 30.0), 1800.0)
        return longest * (0.6 + 0.4 * self.rand())

    def leave_queue(self) -> None:
        leave = getattr(self.lock, "leave_queue", None)
        if leave is not None:
            try:
                leave(self.holder_id)
            except UpdaterError as e:
                log.debug("reboot lock: leaving the queue: %s", e)

    def _take_lock(self, s: State) -> float | None:
        """Take a slot (None) or the seconds until the next step; a waiter waits on a watch
        (``wait_turn``) within this step, a halted version goes back to staged."""
        wait_turn = getattr(self.lock, "wait_turn", None)
        start = time.monotonic()
        budget = self._wait_budget()
        first = True
        while True:
            now = self.clock()
            if not first and not window_open(self.config.window, datetime.fromtimestamp(now, UTC)):
                return 0.0  # the next step goes back to waiting for the window
            first = False
            try:
                why = self._halted(s)
                if why:
                    self.leave_queue()
                    if why != s.halted:
                        log.warning("not taking the reboot lock: %s", why)
                    nxt = next_check(now, self.config.interval, self.config.jitter, self.rand)
                    self.save(s.to(Phase.STAGED, now, halted=why, next_check=nxt))
                    return nxt - now
                if self.lock.acquire(self.holder_id):
                    self.save(replace(s, lock_held=self.config.strategy.needs_lock(),
                                      halted=""))
                    return None
                left = budget - (time.monotonic() - start)
                if wait_turn is None:
                    return LOCK_POLL * (0.5 + self.rand())
                if left < 1:
                    return 0.0
                # a waiter's fleet report is written again before its lease runs out: a
                # host in the queue is not a host that is gone
                turn = min(left, self.fleet.refresh_every) if self.fleet else left
                if not wait_turn(self.holder_id, turn):
                    self.report_again(s)
            except UpdaterError as e:
                log.error("reboot lock: %s", e)
                self.save(replace(s, last_error=f"reboot lock: {e}", last_error_time=now))
                return backoff(max(1, s.failures), base=LOCK_POLL, cap=600, rand=self.rand)

    # --- moving work off the node and back -------------------------------------------------

    def _drain(self, s: State) -> float | None:
        """Drain once the lock is held (None: reboot now); the seconds to wait otherwise."""
        cfg = self.config
        done = self.drainer.drain(max(cfg.deadlines.lock - 60.0, 30.0))
        if not done and cfg.drain.on_timeout is OnTimeout.WAIT:
            self.save(replace(s, last_error="drain did not finish; keeping the lock and "
                                            "trying again (drain.on_timeout: wait)",
                              last_error_time=self.clock()))
            return 30.0
        if not done:
            log.error("drain did not finish within %s: rebooting anyway "
                      "(drain.on_timeout: reboot)", human(cfg.drain.timeout))
        self.save(replace(s, drained=True))
        return None

    def _undrain(self, s: State) -> State:
        if not s.drained:
            return s
        self.drainer.undrain()
        return self.save(replace(s, drained=False))

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
            if s.lock_held or s.release_pending:
                try:
                    held = self.lock.renew(self.holder_id)
                except UpdaterError as e:
                    log.warning("reboot lock: renew failed: %s", e)
                    return 10.0
                if not held:
                    log.info("reboot lock: this host holds no slot; nothing to release")
                    s = self.save(replace(s, lock_held=False, release_pending=False))
                    if not s.drained:
                        return 0.0
            log.info("holding the reboot lock%s until healthy: waiting for %s",
                     " and the drain" if s.drained else "", ", ".join(bad))
            return 10.0
        s = self._undrain(s)
        if not (s.lock_held or s.release_pending):
            return 0.0
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
        s = self._undrain(s)
        s = self._release(s) if s.lock_held else s
        log.info("updated to %s on slot %s: healthy, blessed%s", s.target_version,
                 s.target_slot.upper(), ", lock released" if not s.lock_held else "")
        # a healthy update ends what went wrong on the way (a lock watch cut by a member's
        # reboot, a retried download): the journal keeps it, status shows the result
        self.save(s.to(Phase.IDLE, now, last_result=f"updated to {s.target_version}",
                       failures=0, last_error="", last_error_time=0.0))
        return 0.0
