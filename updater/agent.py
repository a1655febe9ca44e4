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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from channels.bundle import Slot, load_bundle
from channels.errors import ChannelError
from updater import health, metrics, slots
from updater.channel import Channel
from updater.config import AgentConfig
from updater.decide import Decision, decide
from updater.errors import ChannelUnavailable, UpdaterError, VerificationError
from updater.host import Host
from updater.lock import RebootLock
from updater.schedule import backoff, next_check, next_window, window_open
from updater.state import Phase, State, StateStore

log = logging.getLogger(__name__)
LOCK_POLL = 30.0  # seconds between tries of a busy lock (jittered)
IDLE_SLEEP = 3600.0


@dataclass(frozen=True)
class Layout:
    """Where the slots are: the ESP directory and each slot's devices."""

    esp: Path
    devices: dict[Slot, slots.SlotDevices] = field(default_factory=lambda: {
        s: slots.SlotDevices.by_label(s) for s in Slot})


class Agent:
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

    # --- facts about the running host -----------------------------------------------------

    @property
    def holder_id(self) -> str:
        return self.config.node or self.host.machine_id() or "unknown-machine"

    @property
    def version(self) -> str:
        return self.host.os_release().get("VERSION_ID", "0.0.0")

    @property
    def booted(self) -> Slot:
        return slots.active_slot(self.host.cmdline())

    # --- state ------------------------------------------------------------------------------

    def load(self) -> State:
        return self.store.load()

    def save(self, s: State) -> State:
        self.store.save(s)
        try:
            slot = self.booted.value
        except UpdaterError:
            slot = ""
        try:
            metrics.write(self.config.metrics_file, metrics.render(
                s, version=self.version, slot=slot, channel=self.config.channel_name))
        except OSError as e:
            log.warning("metrics: cannot write %s: %s", self.config.metrics_file, e.strerror)
        return s

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
            if s.lock_held or s.release_pending:
                delay = self._release_when_healthy(s)
                s = self.load()
                if s.lock_held or s.release_pending:
                    return delay
            if self.channel is None:
                return IDLE_SLEEP
            if now < s.next_check:
                return s.next_check - now
            return self.check_and_stage(s)[1]
        if p is Phase.STAGED:
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
                self.save(s.to(Phase.WAITING_FOR_WINDOW, now))
                return 0
            return self.reboot_when_locked(s)
        return IDLE_SLEEP

    # --- check, download, verify, write ----------------------------------------------------

    def check_and_stage(self, s: State) -> tuple[State, float]:
        """Ask the channel; stage a newer version into the other slot."""
        if self.channel is None:
            raise ChannelUnavailable("no channel configured")
        now = self.clock()
        staged = s.target_version if s.phase is Phase.STAGED else None
        s = self.save(s.to(Phase.CHECKING, now))
        current = self.version
        try:
            offer = self.channel.offer(self.holder_id, current)
            offered = offer.version if offer else None
            decision = decide(current, offered, s.bad_versions, staged)
        except (ChannelError, UpdaterError, OSError, ValueError) as e:
            return self._failed(s, f"check failed: {e}")
        nxt = next_check(now, self.config.interval, self.config.jitter, self.rand)
        s = replace(s, last_check=now, next_check=nxt, failures=0, last_error="")
        if decision is Decision.STAGED:
            return self.save(s.to(Phase.STAGED, now)), 0.0
        if offer is None or not decision.wants_apply():
            log.info("check: running %s, channel offers %s: %s", current, offered or "nothing",
                     decision)
            return self.save(s.to(Phase.IDLE, now)), nxt - now
        log.info("check: %s offered (running %s)", offer.version, current)
        try:
            target = self.booted.other
            dest = self.config.state_dir / "downloads"
            s = self.save(s.to(Phase.DOWNLOADING, now, target_version=offer.version))
            bundle = self.channel.download(offer, dest)
            s = self.save(s.to(Phase.VERIFYING, self.clock()))
            manifest = load_bundle(bundle, verify=True)
            if (manifest.version, manifest.roothash) != (offer.version, offer.manifest.roothash):
                raise VerificationError(f"{bundle}: bundle is {manifest.version}, "
                                        f"not the offered {offer.version}")
            s = self.save(s.to(Phase.WRITING, self.clock(), target_slot=target.value,
                               target_roothash=manifest.roothash).mark_attempted(offer.version))
            self.write_slot(bundle, manifest, target, active=self.booted,
                            devices=self.layout.devices[target],
                            active_devices=self.layout.devices[target.other],
                            esp=self.layout.esp,
                            tries=self.config.boot_tries or manifest.boot_tries)
        except OSError as e:
            return self._failed(s, f"staging {offer.version} failed: {e.strerror or e}")
        except (ChannelError, UpdaterError) as e:
            return self._failed(s, f"staging {offer.version} failed: {e}")
        shutil.rmtree(bundle, ignore_errors=True)
        log.info("staged %s on slot %s%s", offer.version, target.name,
                 "" if self.config.strategy.reboots() else "; strategy off: reboot when you like")
        return self.save(s.to(Phase.STAGED, self.clock(), failures=0,
                               reboot_boot_id=self.host.boot_id())), 0.0

    # --- lock and reboot -------------------------------------------------------------------

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
        }
