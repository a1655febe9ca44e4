"""The agent and the fleet, against a real etcd: simulated hosts (real agent, real etcd lock,
real reports; fake boots and slot writes) report every state change and check, a version two
hosts of a group rolled back halts for the rest (and says why), nothing is written without
etcd, and an agent that cannot write its report keeps updating."""

from __future__ import annotations

import io
import json
import logging
import uuid
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from channels import fleet
from channels.bundle import Manifest, Slot, load_bundle
from channels.entries import boot_entry
from channels.etcd import EtcdGateway as Gateway
from imagebuild.cli import main as tidehost
from tests.updater.conftest import FakeHost, FakeLock
from updater.agent import Agent, Layout
from updater.config import AgentConfig, Strategy
from updater.lock.etcd import EtcdLockClient
from updater.lock.gateway import EtcdGateway
from updater.report import FleetReporter, make_reporter
from updater.state import Phase, StateStore

pytestmark = pytest.mark.slow


def fake_write_slot(bundle, manifest, target, *, esp, tries, **_: object) -> None:  # noqa: ANN001
    """The slot write, as far as the reboot step looks: the new slot's boot entry."""
    entry = boot_entry(manifest, target, tries)
    (Path(esp) / "loader/entries" / entry.filename).write_text(entry.text)


@dataclass
class SimHost:
    name: str
    agent_args: dict[str, object]
    host: object
    config: AgentConfig

    def agent(self) -> Agent:
        return Agent(self.config, self.host, **self.agent_args)  # type: ignore[arg-type]

    def state(self):  # noqa: ANN201
        return StateStore(self.config.state_dir).load()


def sim(tmp_path: Path, etcd, name: str, group: str, channel, clock,  # noqa: ANN001
        manifest: Manifest, **cfg: object) -> SimHost:
    host = FakeHost(roothash=manifest.roothash)
    host.machine_id = lambda: name  # type: ignore[method-assign]
    root = tmp_path / name
    esp = root / "efi"
    (esp / "loader/entries").mkdir(parents=True)
    factory = boot_entry(manifest, Slot.A, None)
    (esp / "loader/entries" / factory.filename).write_text(factory.text)
    config = AgentConfig(strategy=Strategy.ETCD_LOCK, node=name, group=group,
                         channel_url="http://channel.invalid/", state_dir=root / "state",
                         metrics_file=None, esp=esp, etcd_endpoints=(etcd.url,),
                         health_units=("app.service",), health_deadline=30, **cfg)
    host.units["app.service"] = True
    lock = EtcdLockClient(EtcdGateway([etcd.url], timeout=5), group, 60,
                          token=f"{name}-token".ljust(32, "x"))
    reporter = FleetReporter(EtcdGateway([etcd.url], timeout=5), config.state_dir, 300,
                             clock=clock)
    args = {"lock": lock, "channel": channel, "layout": Layout(esp, {s: None for s in Slot}), "clock": clock,
            "sleep": clock.sleep, "rand": lambda: 0.5, "write_slot": fake_write_slot,
            "fleet": reporter}
    return SimHost(name, args, host, config)


def steps(h: SimHost, until, limit: int = 15) -> Agent:  # noqa: ANN001
    a = h.agent()
    for _ in range(limit):
        if until(h.state()):
            return a
        h.agent_args["clock"].sleep(a.step())  # type: ignore[union-attr]
    assert until(h.state()), f"{h.name} stuck in {h.state().phase}"
    return a


def roll_back(h: SimHost, old: Manifest, new: Manifest) -> None:
    """The host reboots into the new slot, fails its health gate, falls back to the old."""
    steps(h, lambda s: s.phase is Phase.REBOOTING)
    h.host.boot_into(h.state().target_slot, new)
    h.host.units["app.service"] = False  # the new version breaks the app
    a = h.agent()
    a.startup()
    steps(h, lambda s: s.phase is Phase.REBOOTING and s.last_error.startswith("health"))
    h.host.boot_into("a", old)  # out of tries: the bootloader boots the old slot
    h.host.units["app.service"] = True
    h.agent().startup()
    steps(h, lambda s: s.phase is Phase.ROLLED_BACK and not s.lock_held)


def status(etcd, *args: str) -> dict:  # noqa: ANN001
    out = io.StringIO()
    with redirect_stdout(out):
        assert tidehost(["fleet", "status", "--etcd", etcd.url, *args]) == 0
    return json.loads(out.getvalue()) if "--json" in args else {"text": out.getvalue()}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_rollout_halts_after_two_rollbacks(tmp_path: Path, etcd, bundles, channel,  # noqa: ANN001
                                             clock) -> None:  # noqa: ANN001
    said = Lines()
    logging.getLogger("updater.rebooting").addHandler(said)
    g = f"halt-{uuid.uuid4().hex[:6]}"
    v1, v2 = (load_bundle(bundles[v]) for v in ("1.0.0", "2.0.0"))
    hosts = [sim(tmp_path, etcd, f"{g}-h{i}", g, channel, clock, v1) for i in range(1, 5)]
    for h in hosts:
        h.agent().startup()
    channel.publish(bundles["2.0.0"])
    roll_back(hosts[0], v1, v2)
    snap = status(etcd, "--group", g, "--json")
    assert snap["groups"][g]["halted"] == {}  # one rollback: the rollout goes on
    roll_back(hosts[1], v1, v2)
    for h in hosts[2:]:
        steps(h, lambda s: bool(s.halted))
        s = h.state()
        assert s.phase is Phase.STAGED and not s.lock_held and h.host.reboots == 0
        assert s.halted == (f"2.0.0 halted: rolled back on 2 hosts of group {g} "
                            f"({g}-h1, {g}-h2); halt_after is 2")
        assert h.agent().status()["halted"] == s.halted
        # it stays halted: the next check finds the same version and the same rollbacks
        before = s.next_check
        clock.now = before + 1
        steps(h, lambda s, before=before: s.phase is Phase.STAGED and s.halted and s.next_check > before)
        assert h.host.reboots == 0
    logging.getLogger("updater.rebooting").removeHandler(said)
    halts = [x for x in said.lines if x.startswith("not taking the reboot lock: 2.0.0 halted")]
    assert len(halts) == 2  # once per host, not once per check
    snap = status(etcd, "--group", g, "--json")
    assert snap["groups"][g]["halted"] == {"2.0.0": [f"{g}-h1", f"{g}-h2"]}
    by_id = {x["id"]: x for x in snap["hosts"]}
    assert by_id[f"{g}-h1"]["state"] == "rolled-back" and by_id[f"{g}-h1"]["bad_versions"] == [
        "2.0.0"]
    assert by_id[f"{g}-h3"]["state"] == "staged" and "halted" in by_id[f"{g}-h3"]["halted"]
    assert "HALTED 2.0.0: rolled back on 2 hosts" in status(etcd, "--group", g)["text"]
    # halt_after 0: a host takes it anyway
    off = sim(tmp_path, etcd, f"{g}-h5", g, channel, clock, v1, halt_after=0)
    off.agent().startup()
    steps(off, lambda s: s.phase is Phase.REBOOTING)


def test_reports_on_every_change_and_check_on_a_lease(tmp_path: Path, etcd, bundles,  # noqa: ANN001
                                                      channel, clock) -> None:  # noqa: ANN001
    g = f"rep-{uuid.uuid4().hex[:6]}"
    v1 = load_bundle(bundles["1.0.0"])
    h = sim(tmp_path, etcd, f"{g}-a", g, channel, clock, v1)
    gw = Gateway([etcd.url])
    a = h.agent()
    a.startup()
    a.step()  # a check: nothing offered
    kv = gw.get(fleet.host_key(h.name))
    assert kv is not None and kv.lease
    r = fleet.HostReport.from_json(kv.value)
    assert (r.version, r.slot, r.state, r.group, r.channel, r.boot_id) == (
        "1.0.0", "a", "idle", g, "stable", "boot-1")
    assert r.time == clock.now and r.format == fleet.FORMAT
    first = kv.mod_revision
    clock.now = h.state().next_check + 1
    h.agent().step()  # the next check writes again (its time changed)
    assert gw.get(fleet.host_key(h.name)).mod_revision > first
    lease = json.loads((h.config.state_dir / "report-lease").read_text())["lease"]
    assert gw.get(fleet.host_key(h.name)).lease == lease  # one lease across steps


def test_nothing_is_written_without_etcd_and_a_dead_etcd_stops_nothing(  # noqa: ANN001
        tmp_path: Path, etcd, bundles, channel, clock, caplog) -> None:  # noqa: ANN001
    assert make_reporter(AgentConfig(strategy=Strategy.REBOOT)) is None
    assert make_reporter(AgentConfig(strategy=Strategy.OFF)) is None
    v1 = load_bundle(bundles["1.0.0"])
    h = sim(tmp_path, etcd, "deadetcd", "dead", channel, clock, v1)
    dead = EtcdGateway(["http://127.0.0.1:9"], timeout=1)
    caplog.set_level(logging.WARNING)
    for _ in range(2):  # two daemon steps: one warning
        h.agent_args["fleet"] = FleetReporter(dead, h.config.state_dir, 300, clock=clock)
        a = h.agent()
        a.startup()
        clock.now = h.state().next_check + 1
        a.step()
    channel.publish(bundles["2.0.0"])
    clock.now = h.state().next_check + 1
    h.agent_args["lock"] = FakeLock()
    steps(h, lambda s: s.phase is Phase.REBOOTING)  # updating goes on
    warnings = [r for r in caplog.records if "fleet report" in r.getMessage()]
    assert len(warnings) == 1 and "updating goes on without it" in warnings[0].getMessage()


def test_a_host_waiting_for_the_lock_keeps_its_report(tmp_path: Path, etcd, bundles,  # noqa: ANN001
                                                      channel, clock) -> None:  # noqa: ANN001
    from updater.config import Deadlines

    g = f"wait-{uuid.uuid4().hex[:6]}"
    v1 = load_bundle(bundles["1.0.0"])
    # a short lock step: one wait of at most 24 s (its budget), 20 s at a time (the report's
    # lease is 60 s: written again every third of it)
    short = {"deadlines": Deadlines(lock=90)}
    holder, waiter = (sim(tmp_path, etcd, f"{g}-{n}", g, channel, clock, v1, **short)
                      for n in ("holder", "waiter"))  # fmt: skip
    for h in (holder, waiter):
        h.agent_args["fleet"] = FleetReporter(EtcdGateway([etcd.url], timeout=5),
                                              h.config.state_dir, 60, clock=clock)  # fmt: skip
        h.agent().startup()
    channel.publish(bundles["2.0.0"])
    steps(holder, lambda s: s.phase is Phase.REBOOTING)  # it holds the only slot
    steps(waiter, lambda s: s.phase is Phase.WAITING_FOR_LOCK)
    gw = Gateway([etcd.url])
    before = gw.get(fleet.host_key(waiter.name))
    assert before is not None
    waiter.agent().step()  # waits on the queue's watch for the whole step, in vain
    after = gw.get(fleet.host_key(waiter.name))
    assert after is not None and after.mod_revision > before.mod_revision, "not written again"
    assert after.lease == before.lease and gw.lease_keepalive(after.lease) >= 50
    assert waiter.state().phase is Phase.WAITING_FOR_LOCK and waiter.host.reboots == 0
