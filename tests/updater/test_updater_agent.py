"""The agent's flow: real slot writes on loop devices, a simulated bootloader with boot
counting, and fakes of the channel, the lock and the host's side effects."""

from __future__ import annotations

import errno
import json
import re
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time
from pathlib import Path

import pytest

from channels.bundle import Manifest, Slot, load_bundle
from channels.entries import boot_entry
from channels.errors import ChannelError
from channels.version import Version
from updater.agent import IDLE_SLEEP, Agent, Layout
from updater.config import AgentConfig, Strategy, Window
from updater.slots import SlotDevices, parse_entry
from updater.state import Phase, State, StateStore

pytestmark = pytest.mark.slow


@dataclass
class Rig:
    """One host: disk, ESP, bootloader, and a fresh agent per (simulated) process start."""

    tmp: Path
    disk: object
    host: object
    channel: object
    lock: object
    clock: object
    manifests: dict[str, Manifest]
    config: AgentConfig

    @property
    def esp(self) -> Path:
        return self.config.esp

    def agent(self, **changes: object) -> Agent:
        cfg = AgentConfig(**{**self.config.__dict__, **changes})
        devices = {s: SlotDevices(self.disk.parts[s.usr_label], self.disk.parts[s.verity_label])
                   for s in Slot}
        return Agent(cfg, self.host, self.lock, self.channel, layout=Layout(self.esp, devices),
                     clock=self.clock, sleep=self.clock.sleep, rand=lambda: 0.5)

    def entries(self) -> list[str]:
        return sorted(p.name for p in (self.esp / "loader/entries").iterdir())

    def state(self) -> State:
        return StateStore(self.config.state_dir).load()

    # --- what systemd-boot and systemd-bless-boot do ---------------------------------------

    def boot(self) -> str:
        """Pick the entry systemd-boot would (not bad first, newest version), count a try."""
        d = self.esp / "loader/entries"
        cands = []
        for p in d.iterdir():
            e = parse_entry(p.name)
            ver = re.search(r"^version (\S+)$", p.read_text(), re.M)[1]  # type: ignore[index]
            cands.append((not e.bad, Version.parse(ver), p, e))
        _, ver, path, e = max(cands, key=lambda c: (c[0], c[1]))
        if e.left is not None and e.left > 0:
            new = path.with_name(f"tidehost-{e.slot.value}+{e.left - 1}-{e.done + 1}.conf")
            path.rename(new)
            path = new
        self.booted_entry = path
        self.host.boot_into(e.slot.value, self.manifests[str(ver)])
        return path.name

    def bless(self, good: bool) -> None:
        self.host.blessed.append(good)
        e = parse_entry(self.booted_entry.name)
        if e.left is None:
            return
        name = f"tidehost-{e.slot.value}.conf" if good else \
            f"tidehost-{e.slot.value}+0-{e.done}.conf"
        self.booted_entry = self.booted_entry.rename(self.booted_entry.with_name(name))

    def steps(self, agent: Agent, until: object, limit: int = 12) -> None:
        for _ in range(limit):
            if until():
                return
            delay = agent.step()
            self.clock.sleep(delay)
        assert until(), f"stuck in {self.state().phase}"


@pytest.fixture
def rig(tmp_path: Path, disk, bundles, host, channel, fake_lock, clock) -> Rig:  # noqa: ANN001
    manifests = {v: load_bundle(b) for v, b in bundles.items()}
    esp = tmp_path / "efi"
    (esp / "loader/entries").mkdir(parents=True)
    factory = boot_entry(manifests["1.0.0"], Slot.A, None)
    (esp / "loader/entries" / factory.filename).write_text(factory.text)
    host.roothash = manifests["1.0.0"].roothash
    config = AgentConfig(strategy=Strategy.ETCD_LOCK, channel_url="http://channel.invalid/",
                         state_dir=tmp_path / "state", metrics_file=tmp_path / "tidehost.prom",
                         esp=esp, health_units=("app.service",), health_deadline=120)
    host.units["app.service"] = True
    r = Rig(tmp_path, disk, host, channel, fake_lock, clock, manifests, config)
    r.booted_entry = esp / "loader/entries" / factory.filename
    host.bless = r.bless
    return r


def test_update_then_bad_release_rolls_back_and_is_never_retried(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent()
    a.startup()
    rig.steps(a, lambda: rig.host.reboots == 1)
    s = rig.state()
    assert (s.phase, s.target_version, s.target_slot, s.lock_held) == (
        Phase.REBOOTING, "2.0.0", "b", True)
    assert rig.lock.holders == {"m-test"}
    assert rig.entries() == ["tidehost-a.conf", "tidehost-b+3.conf"]

    # an error on the way (the lock's watch cut while it waited): shown until the update ends
    store = StateStore(rig.config.state_dir)
    store.save(replace(s, last_error="reboot lock: etcd watch: server closed the stream",
                       last_error_time=1.0))  # fmt: skip

    assert rig.boot() == "tidehost-b+2-1.conf"  # the new slot is preferred
    a = rig.agent()  # a new process after the reboot
    assert a.startup().phase is Phase.CONFIRMING
    assert a.status()["last_error"].startswith("reboot lock: etcd watch")
    a.step()
    s = rig.state()
    assert s.phase is Phase.IDLE and s.last_result == "updated to 2.0.0"
    assert s.last_error == "" and a.status()["last_error"] == ""  # healthy: nothing is wrong
    assert rig.host.blessed == [True] and rig.lock.holders == set() and not s.lock_held
    assert rig.entries() == ["tidehost-a.conf", "tidehost-b.conf"]
    st = a.status()
    assert (st["version"], st["slot"], st["state"]) == ("2.0.0", "b", "idle")
    prom = (rig.tmp / "tidehost.prom").read_text()
    assert 'tidehost_update_info{version="2.0.0",slot="b",channel="stable"} 1' in prom
    assert 'tidehost_update_state{state="idle"} 1' in prom and "lock_held 0" in prom

    # 3.0.0 fails its health check on every boot
    rig.channel.publish(bundles["3.0.0"])
    rig.clock.sleep(7200)
    rig.steps(a, lambda: rig.host.reboots == 2)
    assert rig.state().target_slot == "a" and rig.lock.holders == {"m-test"}
    assert rig.boot() == "tidehost-a+2-1.conf"
    rig.host.units["app.service"] = False
    a = rig.agent()
    assert a.startup().phase is Phase.CONFIRMING
    a.step()  # waits out the deadline, marks the boot bad, reboots
    assert rig.host.blessed == [True, False] and rig.host.reboots == 3
    assert rig.state().phase is Phase.REBOOTING and rig.lock.holders == {"m-test"}

    assert rig.boot() == "tidehost-b.conf"  # the bad entry lost: back on 2.0.0
    rig.host.units["app.service"] = True
    a = rig.agent()
    s = a.startup()
    assert s.phase is Phase.ROLLED_BACK and s.bad_versions == ("3.0.0",)
    assert s.lock_held and rig.lock.holders == {"m-test"}  # held until healthy
    a.step()
    assert rig.lock.holders == set() and not rig.state().lock_held
    assert rig.state().last_result == "rolled back from 3.0.0 to 2.0.0"

    rig.clock.sleep(7200)
    downloads = list(rig.channel.downloads)
    a.step()
    s = rig.state()
    assert s.phase is Phase.IDLE and rig.channel.downloads == downloads == ["2.0.0", "3.0.0"]
    assert rig.host.reboots == 3


def test_new_slot_that_never_comes_up_is_a_rollback(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent()
    rig.steps(a, lambda: rig.host.reboots == 1)
    # the kernel of slot B panics three times; the bootloader falls back to A by itself
    rig.host.boot_into("a", rig.manifests["1.0.0"])
    s = rig.agent().startup()
    assert s.phase is Phase.ROLLED_BACK and "2.0.0" in s.bad_versions


def test_window_gates_the_lock(rig: Rig, bundles) -> None:  # noqa: ANN001
    # clock starts 2027-01-15 08:00 UTC (a Friday); window Sat 02:00 for 2 h
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent(window=Window(days=(5,), start=time(2, 0), length=7200, tz="UTC"))
    a.startup()
    a.step()
    assert rig.state().phase is Phase.STAGED
    a.step()
    assert rig.state().phase is Phase.WAITING_FOR_WINDOW
    delay = a.step()
    assert rig.state().phase is Phase.WAITING_FOR_WINDOW and rig.lock.holders == set()
    assert 0 < delay <= IDLE_SLEEP
    rig.steps(a, lambda: rig.host.reboots == 1, limit=40)
    asked = datetime.fromtimestamp(rig.state().since, UTC)  # when it entered "rebooting"
    assert asked.weekday() == 5 and time(2, 0) <= asked.time() < time(4, 0)
    assert rig.lock.holders == {"m-test"}


def test_busy_or_unreachable_lock_never_reboots(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    rig.lock.holders = {"someone-else"}
    a = rig.agent()
    for _ in range(6):
        rig.clock.sleep(a.step())
    assert rig.state().phase is Phase.WAITING_FOR_LOCK and rig.host.reboots == 0
    rig.lock.holders = set()
    rig.lock.unreachable = True
    for _ in range(3):
        rig.clock.sleep(a.step())
    s = rig.state()
    assert s.phase is Phase.WAITING_FOR_LOCK and "etcd unreachable" in s.last_error
    assert rig.host.reboots == 0
    rig.lock.unreachable = False
    a.step()
    assert rig.host.reboots == 1


@pytest.mark.parametrize("failure,message", [
    ("offer", "check failed: channel unreachable"),
    ("enospc", "No space left on device"),
    ("corrupt", "sha256 does not match"),
])
def test_bad_input_keeps_slot_and_retries(rig: Rig, bundles, failure: str,  # noqa: ANN001
                                          message: str, tmp_path: Path) -> None:
    good = bundles["2.0.0"]
    if failure == "offer":
        rig.channel.publish(good)
        rig.channel.error = ChannelError("channel unreachable")
    elif failure == "enospc":
        rig.channel.publish(good)
        rig.channel.download_error = OSError(errno.ENOSPC, "No space left on device")
    else:
        bad = tmp_path / "corrupt" / good.name
        shutil.copytree(good, bad)
        with open(bad / "usr.img", "r+b") as f:
            f.seek(100)
            f.write(b"EVIL")
        rig.channel.publish(bad)
    a = rig.agent()
    a.startup()
    delay = a.step()
    s = rig.state()
    assert s.phase is Phase.ERROR and message in s.last_error and s.failures == 1
    assert rig.entries() == ["tidehost-a.conf"] and rig.host.reboots == 0
    assert delay >= 30 and s.next_check > rig.clock.now
    assert a.step() > 0 and rig.state().failures == 1  # waits for the backoff
    rig.clock.sleep(delay)
    rig.channel.error = rig.channel.download_error = None
    rig.channel.published = {"2.0.0": good}
    rig.steps(a, lambda: rig.host.reboots == 1)
    assert rig.state().failures == 0


def test_interrupted_write_is_retried_and_never_rebooted(rig: Rig, bundles) -> None:  # noqa: ANN001
    StateStore(rig.config.state_dir).save(State(phase=Phase.WRITING, target_version="2.0.0"))
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent()
    s = a.startup()
    assert s.phase is Phase.ERROR and "interrupted while writing" in s.last_error
    a.step()
    assert rig.state().phase is Phase.STAGED


def test_no_reboot_into_a_slot_without_entry(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent()
    rig.steps(a, lambda: rig.state().phase is Phase.WAITING_FOR_LOCK)
    (rig.esp / "loader/entries/tidehost-b+3.conf").unlink()
    a.step()
    assert rig.state().phase is Phase.ERROR and rig.host.reboots == 0
    assert rig.lock.holders == set()


def test_lock_held_at_start_is_released_only_when_healthy(rig: Rig) -> None:
    StateStore(rig.config.state_dir).save(State(lock_held=True))
    rig.lock.holders = {"m-test"}
    rig.host.units["app.service"] = False
    a = rig.agent()
    a.startup()
    a.step()
    assert rig.lock.holders == {"m-test"} and rig.lock.renewals >= 1
    rig.host.units["app.service"] = True
    a.step()
    assert rig.lock.holders == set() and not rig.state().lock_held


def test_strategies_off_and_reboot(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent(strategy=Strategy.OFF)
    for _ in range(4):
        a.step()
    assert rig.state().phase is Phase.STAGED and rig.host.reboots == 0
    a = rig.agent(strategy=Strategy.REBOOT)
    rig.steps(a, lambda: rig.host.reboots == 1)
    assert not rig.state().lock_held


def test_no_channel_idles(rig: Rig) -> None:
    a = rig.agent()
    a.channel = None
    assert a.step() == IDLE_SLEEP and rig.state().phase is Phase.IDLE


def test_rollback_verb(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent()
    rig.steps(a, lambda: rig.host.reboots == 1)
    rig.boot()
    a = rig.agent()
    a.startup()
    a.step()
    assert rig.host.version == "2.0.0"
    s = a.rollback()
    assert (s.phase, s.target_slot, s.target_version) == (Phase.STAGED, "a", "1.0.0")
    assert "2.0.0" in s.bad_versions
    assert rig.entries() == ["tidehost-a.conf", "tidehost-b+0.conf"]
    s = a.apply_now()
    assert s.phase is Phase.REBOOTING and rig.host.reboots == 2
    assert rig.boot() == "tidehost-a.conf"
    a = rig.agent()
    assert a.startup().phase is Phase.CONFIRMING
    a.step()
    s = rig.state()
    assert s.phase is Phase.IDLE and rig.lock.holders == set()
    assert json.loads(json.dumps(a.status()))["version"] == "1.0.0"


def test_failed_health_unit_ends_the_gate_early(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent()
    rig.steps(a, lambda: rig.host.reboots == 1)
    rig.boot()
    rig.host.units["boot-complete.target"] = False  # its required health unit failed
    rig.host.failed = {"tidehost-update-health.service"}
    a = rig.agent()
    a.startup()
    t0 = rig.clock.now
    a.step()
    assert rig.clock.now - t0 < 10 and rig.host.blessed == [False] and rig.host.reboots == 2
    assert "tidehost-update-health.service failed" in rig.state().last_error


def test_health_gate_waits_for_late_units(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent()
    rig.steps(a, lambda: rig.host.reboots == 1)
    rig.boot()
    rig.host.units["app.service"] = False
    a = rig.agent()
    a.startup()
    t0 = rig.clock.now
    real_sleep = rig.clock.sleep

    def sleep(seconds: float) -> None:  # the unit comes up 30 s into the gate
        real_sleep(seconds)
        if rig.clock.now - t0 >= 30:
            rig.host.units["app.service"] = True

    a.sleep = sleep
    a.step()
    assert rig.host.blessed == [True] and rig.state().phase is Phase.IDLE
    assert 30 <= rig.clock.now - t0 <= 35 and rig.lock.holders == set()


def test_daemon_runs_steps_in_forked_children(rig: Rig, bundles) -> None:  # noqa: ANN001
    import threading

    from updater.daemon import run_daemon

    rig.channel.publish(bundles["2.0.0"])
    stop = threading.Event()
    made: list[int] = []

    def make_agent() -> Agent:
        import os

        made.append(os.getpid())
        a = rig.agent(strategy=Strategy.OFF)
        a.clock = __import__("time").time  # real time: the parent really sleeps
        return a

    timer = threading.Timer(4.0, stop.set)
    timer.start()
    try:
        run_daemon(make_agent, rig.config.state_dir, stop=stop)
    finally:
        timer.cancel()
    s = rig.state()
    assert s.phase is Phase.STAGED and s.target_version == "2.0.0"
    assert rig.entries() == ["tidehost-a.conf", "tidehost-b+3.conf"]
    assert made == []  # every agent was built in a child, never in the daemon itself


def test_reboot_outside_the_agent_is_confirmed(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent(strategy=Strategy.OFF)
    a.step()
    assert rig.state().phase is Phase.STAGED and rig.host.reboots == 0
    rig.host.boot += 1  # an operator rebooted, but the bootloader did not try B (say)
    a = rig.agent(strategy=Strategy.OFF)
    assert a.startup().phase is Phase.STAGED
    assert rig.boot() == "tidehost-b+2-1.conf"  # the next reboot tries B
    a = rig.agent(strategy=Strategy.OFF)
    assert a.startup().phase is Phase.CONFIRMING
    a.step()
    assert rig.state().phase is Phase.IDLE and rig.host.blessed == [True]
    assert rig.entries() == ["tidehost-a.conf", "tidehost-b.conf"]


def test_staged_slot_tried_and_failed_outside_the_agent(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent(strategy=Strategy.OFF)
    a.step()
    rig.boot()  # B tried (and, say, panicked) ...
    rig.host.boot_into("a", rig.manifests["1.0.0"])  # ... back on A
    s = rig.agent(strategy=Strategy.OFF).startup()
    assert s.phase is Phase.ROLLED_BACK and s.bad_versions == ("2.0.0",)


def test_stale_hold_is_released_at_start_when_healthy(rig: Rig) -> None:
    rig.lock.holders = {"m-test"}  # the state file was lost, etcd still lists this host
    rig.host.units["app.service"] = False
    a = rig.agent()
    assert a.startup().release_pending
    a.step()
    assert rig.lock.holders == {"m-test"}
    rig.host.units["app.service"] = True
    a.step()
    s = rig.state()
    assert rig.lock.holders == set() and not s.release_pending and not s.lock_held
    rig.lock.unreachable = True  # a lock service that is down at start: retried later
    a = rig.agent()
    a.startup()
    assert a.step() > 0 and rig.state().release_pending


def test_a_slow_first_boot_never_freezes_the_agent(rig: Rig, bundles) -> None:  # noqa: ANN001
    """Seen on a 3-node TCG cluster: the health gate timed out on the first boot (etcd and
    Docker still forming), so boot-complete.target never came; the agent then waited for
    it to "release" a lock it did not hold, and never looked for updates again."""
    rig.host.units["boot-complete.target"] = False  # the gate failed on this boot
    rig.host.units["app.service"] = False  # and the host is still not healthy
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent()
    assert a.startup().release_pending
    a.step()
    s = rig.state()
    assert not s.release_pending and rig.lock.holders == set()  # held nothing: nothing to wait
    rig.host.units["app.service"] = True  # healthy now; the failed gate of this boot is history
    rig.steps(a, lambda: rig.host.reboots == 1)
    assert rig.state().target_version == "2.0.0"


def test_a_held_lock_waits_for_the_units_not_for_a_past_gate(rig: Rig) -> None:
    StateStore(rig.config.state_dir).save(State(lock_held=True))
    rig.lock.holders = {"m-test"}
    rig.host.units["boot-complete.target"] = False
    rig.host.units["app.service"] = False
    a = rig.agent()
    a.startup()
    a.step()
    assert rig.lock.holders == {"m-test"}  # unhealthy: keeps the hold (renewed)
    rig.host.units["app.service"] = True
    a.step()
    assert rig.lock.holders == set() and not rig.state().lock_held


def test_strategy_off_restages_a_newer_release(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent(strategy=Strategy.OFF)
    a.step()
    rig.clock.sleep(a.step())  # staged: sleeps until the next check
    assert rig.state().target_version == "2.0.0" and rig.channel.downloads == ["2.0.0"]
    rig.channel.publish(bundles["3.0.0"])
    rig.clock.sleep(a.step())
    a.step()
    s = rig.state()
    assert (s.phase, s.target_version, s.target_slot) == (Phase.STAGED, "3.0.0", "b")
    assert "version 3.0.0" in (rig.esp / "loader/entries/tidehost-b+3.conf").read_text()
    assert rig.host.reboots == 0


def test_flow_with_fleetlock_server(rig: Rig, bundles, fleetlock_server) -> None:  # noqa: ANN001
    from updater.lock.fleetlock import FleetLockClient

    rig.lock = FleetLockClient(fleetlock_server.url, "default")
    fleetlock_server.holders["default"] = ["other-node"]  # the only slot is taken
    rig.channel.publish(bundles["2.0.0"])
    a = rig.agent(strategy=Strategy.FLEETLOCK, fleetlock_url=fleetlock_server.url)
    a.startup()
    for _ in range(8):
        rig.clock.sleep(a.step())
    assert rig.state().phase is Phase.WAITING_FOR_LOCK and rig.host.reboots == 0
    fleetlock_server.holders["default"] = []
    rig.steps(a, lambda: rig.host.reboots == 1)
    assert fleetlock_server.holders["default"] == ["m-test"]
    rig.boot()
    a = rig.agent(strategy=Strategy.FLEETLOCK, fleetlock_url=fleetlock_server.url)
    a.startup()
    a.step()
    assert rig.state().phase is Phase.IDLE and fleetlock_server.holders["default"] == []
    paths = [p for p, _ in fleetlock_server.requests]
    assert paths[-1] == "/v1/steady-state" and "/v1/pre-reboot" in paths


def test_boot_tries_from_config_over_manifest(rig: Rig, bundles) -> None:  # noqa: ANN001
    rig.channel.publish(bundles["2.0.0"])
    rig.agent(strategy=Strategy.OFF, boot_tries=1).step()
    assert rig.entries() == ["tidehost-a.conf", "tidehost-b+1.conf"]


def test_bytes_that_fail_their_tree_are_removed_and_not_fetched_again(rig: Rig, bundles,  # noqa: ANN001
                                                                      tmp_path: Path) -> None:
    import hashlib
    import json

    bad = tmp_path / "careless" / bundles["2.0.0"].name
    shutil.copytree(bundles["2.0.0"], bad)
    with open(bad / "usr.img", "r+b") as f:  # one flipped byte, its sha256 re-signed
        f.seek(4096 * 3)
        f.write(bytes([f.read(1)[0] ^ 0x40]))
    m = json.loads((bad / "manifest.json").read_text())
    m["files"]["usr.img"]["sha256"] = hashlib.sha256((bad / "usr.img").read_bytes()).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(m))
    rig.channel.publish(bad)
    a = rig.agent()
    a.startup()
    a.step()
    s = rig.state()
    assert s.phase is Phase.ERROR and "block 3 (byte 12288) does not match its hash tree" in \
        s.last_error and "not downloaded again" in s.last_error
    assert not any((rig.config.state_dir / "downloads").iterdir())  # nothing failed is kept
    assert len(s.bad_releases) == 1 and s.bad_releases[0].startswith("2.0.0@")
    assert rig.entries() == ["tidehost-a.conf"]
    for _ in range(3):  # every later check: the same bytes are not downloaded again
        rig.clock.sleep(a.step())
    assert rig.channel.downloads == ["2.0.0"] and rig.state().phase is Phase.IDLE
    assert StateStore(rig.config.state_dir).load().bad_releases == s.bad_releases  # persisted
    rig.channel.published = {"2.0.0": bundles["2.0.0"]}  # the channel offers other bytes
    rig.clock.sleep(rig.config.interval + rig.config.jitter)
    rig.steps(a, lambda: rig.state().phase is Phase.STAGED)
    assert rig.channel.downloads == ["2.0.0", "2.0.0"]
