"""The agent: one ``step()`` of the persisted state machine at a time.

check → download → verify → write → staged → window → lock → reboot → (new boot) confirm:
health gate, bless, release the lock.  A failed gate marks the boot bad and reboots; booting
back into the old slot after a try of the new one is a rollback, and that version is never
taken again.  Every side effect goes through ``Host``, ``RebootLock`` and ``Channel``; every
failure is one log line, leaves the slot and the state as they were, and is retried with
backoff.  Nothing reboots unless the other slot was written and verified completely.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from channels.bundle import Slot
from channels.fleet import HostReport
from updater import metrics, partitions, slots
from updater.channel import Channel
from updater.config import AgentConfig
from updater.drain import Drainer
from updater.errors import UpdaterError
from updater.host import Host
from updater.lock import RebootLock
from updater.rebooting import Rebooting
from updater.report import FleetReporter
from updater.schedule import backoff, next_window, window_open
from updater.staging import Staging
from updater.state import Phase, State, StateStore

log = logging.getLogger(__name__)
IDLE_SLEEP = 3600.0


@dataclass(frozen=True)
class Layout:
    """Where the slots are: the ESP directory and each slot's devices."""

    esp: Path
    devices: dict[Slot, slots.SlotDevices] = field(default_factory=lambda: {
        s: slots.SlotDevices.by_label(s) for s in Slot})


class Agent(Staging, Rebooting):
    """One host's agent; its steps live in ``staging`` (check, download, verify, write) and
    ``rebooting`` (lock, reboot, confirm)."""

    def __init__(
        self,
        config: AgentConfig,
        host: Host,
        lock: RebootLock,
        channel: Channel | None,
        *,
        layout: Layout | None = None,
        store: StateStore | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        write_slot: Callable[..., object] = slots.write_slot,
        fleet: FleetReporter | None = None,
        drainer: Drainer | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.lock = lock
        self.channel = channel
        self.layout = layout or Layout(esp=config.esp)
        self.store = store or StateStore(config.state_dir)
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self.write_slot = write_slot
        self.fleet = fleet  # None: no report (the strategy has no etcd)
        self.drainer = drainer or Drainer(config.drain)

    # --- facts about the running host -----------------------------------------------------

    @property
    def holder_id(self) -> str:
        return self.config.node or self.host.machine_id() or "unknown-machine"

    @property
    def version(self) -> str:
        return self.host.os_release().get("VERSION_ID", "0.0.0")

    @property
    def booted(self) -> Slot:
        """The running slot: named on the command line (formats 1 and 2), or the one under
        /usr (a format-3 UKI names none)."""
        cmdline = self.host.cmdline()
        if "tidehost.slot=" in cmdline:
            return slots.active_slot(cmdline)
        return partitions.mounted_slot(self.layout.devices)

    # --- state ------------------------------------------------------------------------------

    def load(self) -> State:
        return self.store.load()

    def _slot(self) -> str:
        try:
            return self.booted.value
        except UpdaterError:
            return ""

    def save(self, s: State) -> State:
        self.store.save(s)
        slot = self._slot()
        try:
            metrics.write(self.config.metrics_file, metrics.render(
                s, version=self.version, slot=slot, channel=self.config.channel_name))
        except OSError as e:
            log.warning("metrics: cannot write %s: %s", self.config.metrics_file, e.strerror)
        if self.fleet is not None:
            self.fleet.publish(self.report(s, slot))
        return s

    def report_again(self, s: State) -> None:
        """Write this host's fleet report again though nothing changed (a long wait)."""
        if self.fleet is not None:
            self.fleet.publish(self.report(s, self._slot()), again=True)

    def report(self, s: State, slot: str) -> HostReport:
        """What this host tells the fleet (``channels.fleet``)."""
        return HostReport(
            id=self.holder_id, version=self.version, slot=slot,
            channel=self.config.channel_name, group=self.config.group, state=s.phase.value,
            target_version=s.target_version, bad_versions=s.bad_versions,
            last_error=s.last_error, last_result=s.last_result, lock_held=s.lock_held,
            halted=s.halted, boot_id=self.host.boot_id(), time=self.clock())

    def _failed(self, s: State, error: str) -> tuple[State, float]:
        log.error("%s", error)
        now = self.clock()
        s = s.fail(error, now)
        delay = backoff(s.failures, base=60, cap=self.config.interval, rand=self.rand)
        return self.save(replace(s, next_check=now + delay)), delay

    # --- start-up ---------------------------------------------------------------------------

    def startup(self) -> State:
        """Reconcile the saved state with what booted."""
        s = self.load()
        now = self.clock()
        if s.phase.is_transient():
            log.warning("state: %s was interrupted; the other slot stays unbootable", s.phase)
            s = s.fail(f"interrupted while {s.phase}", now)
            s = replace(s, next_check=now)
        elif s.phase is Phase.REBOOTING and self.host.boot_id() == s.reboot_boot_id:
            log.info("reboot requested but this is still the same boot: asking again")
            s = s.to(Phase.WAITING_FOR_LOCK, now)
        elif s.phase in (Phase.REBOOTING, Phase.CONFIRMING):
            s = self._after_reboot(s, now)
        elif (s.phase in (Phase.STAGED, Phase.WAITING_FOR_WINDOW, Phase.WAITING_FOR_LOCK)
              and s.reboot_boot_id and self.host.boot_id() != s.reboot_boot_id):
            s = self._rebooted_while_staged(s, now)
        if s.phase.is_resting() and self.config.strategy.needs_lock():
            s = replace(s, release_pending=True)  # like locksmith: never keep a stale hold
        return self.save(s)

    def abandon(self, why: str) -> State:
        """The last step was ended from outside (the daemon's deadline): work in flight is
        failed and retried with backoff, as after a restart; a waiting phase stays."""
        s = self.load()
        now = self.clock()
        log.error("state: %s was stopped: %s", s.phase, why)
        if s.phase.is_transient():
            s = s.fail(f"{s.phase} stopped: {why}", now)
            delay = backoff(s.failures, base=60, cap=self.config.interval, rand=self.rand)
            return self.save(replace(s, next_check=now + delay))
        return self.save(replace(s, last_error=f"{s.phase} stopped: {why}", last_error_time=now))

    def _rebooted_while_staged(self, s: State, now: float) -> State:
        """The host rebooted without the agent (strategy off, an operator, a crash)."""
        if self.booted.value == s.target_slot:
            log.info("rebooted into the staged %s outside the agent", s.target_version)
            return self._after_reboot(s, now)
        tried = [e for p in slots.slot_entries(self.layout.esp, Slot(s.target_slot))
                 if (e := slots.parse_entry(p.name)) and (e.bad or e.done)]
        if tried:
            return self._after_reboot(s, now)
        log.info("rebooted, but the staged slot %s was not tried: still staged",
                 s.target_slot.upper())
        return replace(s, reboot_boot_id=self.host.boot_id())

    def _after_reboot(self, s: State, now: float) -> State:
        booted = self.booted
        usrhash = slots.cmdline_usrhash(self.host.cmdline())
        if booted.value == s.target_slot and usrhash in ("", s.target_roothash):
            log.info("booted %s on slot %s: confirming", s.target_version, booted.name)
            return s.to(Phase.CONFIRMING, now)
        log.error("rolled back: %s on slot %s did not stay up; running %s on slot %s again",
                  s.target_version, s.target_slot.upper(), self.version, booted.name)
        return s.mark_bad(s.target_version).to(
            Phase.ROLLED_BACK, now,
            last_result=f"rolled back from {s.target_version} to {self.version}",
            last_error=f"{s.target_version} failed its boot or health checks",
            last_error_time=now)

    # --- one step ---------------------------------------------------------------------------

    def step(self) -> float:
        """Advance the state machine once; seconds until the next step is useful."""
        s = self.load()
        now = self.clock()
        p = s.phase
        if p is Phase.CONFIRMING:
            return self._confirm(s)
        if p in (Phase.REBOOTING,):
            if now - s.since > 600:
                log.warning("reboot requested %ds ago and still running: asking again",
                            now - s.since)
                self.save(s.to(Phase.WAITING_FOR_LOCK, now))
                return 0
            return 30
        if p.is_resting():
            if s.lock_held or s.release_pending or s.drained:
                delay = self._release_when_healthy(s)
                s = self.load()
                if s.lock_held or s.release_pending or s.drained:
                    return delay
            if self.channel is None:
                return IDLE_SLEEP
            if now < s.next_check:
                return s.next_check - now
            return self.check_and_stage(s)[1]
        if p is Phase.STAGED:
            if s.halted:  # the group rolled this version back: look again each interval
                if now < s.next_check:
                    return min(s.next_check - now, IDLE_SLEEP)
                if self.channel is not None:  # a newer release? then the lock step re-reads
                    s, delay = self.check_and_stage(s)
                    if s.phase is not Phase.STAGED:
                        return delay
            if not self.config.strategy.reboots():  # stage only; a newer release restages
                if self.channel is not None and now >= s.next_check:
                    return self.check_and_stage(s)[1]
                return min(max(s.next_check - now, 1.0), IDLE_SLEEP)
            self.save(s.to(Phase.WAITING_FOR_WINDOW, now))
            return 0
        if p is Phase.WAITING_FOR_WINDOW:
            at = datetime.fromtimestamp(now, UTC)
            if window_open(self.config.window, at):
                self.save(s.to(Phase.WAITING_FOR_LOCK, now))
                return 0
            opens = next_window(self.config.window, at)
            return min((opens - at).total_seconds(), IDLE_SLEEP)
        if p is Phase.WAITING_FOR_LOCK:
            if not window_open(self.config.window, datetime.fromtimestamp(now, UTC)):
                self.leave_queue()
                self.save(s.to(Phase.WAITING_FOR_WINDOW, now))
                return 0
            return self.reboot_when_locked(s)
        return IDLE_SLEEP

    # --- operator verbs --------------------------------------------------------------------

    def apply_now(self, *, reboot: bool = True) -> State:
        """Check and stage now; then take the lock and reboot, ignoring the window."""
        s = self.load()
        if s.phase.is_resting():
            s, _ = self.check_and_stage(s)
            if s.phase is Phase.ERROR:
                raise UpdaterError(s.last_error)
        if s.phase is not Phase.STAGED and s.phase not in (Phase.WAITING_FOR_WINDOW,
                                                           Phase.WAITING_FOR_LOCK):
            return s
        if not reboot:
            return s
        now = self.clock()
        if s.phase is Phase.STAGED:
            s = self.save(s.to(Phase.WAITING_FOR_WINDOW, now))
        if s.phase is Phase.WAITING_FOR_WINDOW:
            s = self.save(s.to(Phase.WAITING_FOR_LOCK, now))
        while s.phase is Phase.WAITING_FOR_LOCK:
            delay = self.reboot_when_locked(s)
            s = self.load()
            if s.phase is Phase.WAITING_FOR_LOCK:
                self.sleep(delay)
        return s

    def rollback(self) -> State:
        """Prefer the other slot from the next boot on; this version is not taken again."""
        s = self.load()
        if not (s.phase.is_resting() or s.phase is Phase.STAGED):
            raise UpdaterError(f"cannot roll back while {s.phase}")
        booted = self.booted
        other = slots.rollback(self.layout.esp, booted)
        text = other.read_text()
        version = next((ln.split()[1] for ln in text.splitlines()
                        if ln.startswith("version ") and len(ln.split()) > 1), "")
        roothash = slots.cmdline_usrhash(text)
        now = self.clock()
        s = s.mark_bad(self.version).to(
            Phase.STAGED, now, target_slot=booted.other.value, target_version=version,
            target_roothash=roothash, reboot_boot_id=self.host.boot_id(),
            last_result=f"rollback from {self.version} requested")
        return self.save(s)

    def status(self) -> dict[str, Any]:
        s = self.load()
        try:
            slot = self.booted.value
        except UpdaterError:
            slot = ""
        cfg = self.config
        return {
            "version": self.version, "slot": slot, "channel": cfg.channel_name,
            "build_id": self.host.os_release().get("TIDEHOST_BUILD_ID", ""),
            "channel_url": cfg.channel_url, "strategy": cfg.strategy.value, "group": cfg.group,
            "state": s.phase.value, "since": s.since, "target_version": s.target_version,
            "target_slot": s.target_slot, "last_check": s.last_check,
            "next_check": s.next_check, "last_error": s.last_error,
            "last_result": s.last_result, "lock_held": s.lock_held,
            "bad_versions": list(s.bad_versions), "reboots": s.reboots,
            "bad_releases": list(s.bad_releases), "halted": s.halted, "drained": s.drained,
            "fetched_bytes": s.fetched_bytes, "reused_bytes": s.reused_bytes,
            "last_download": list(s.last_download),
        }
