"""The fleet's pure rules without etcd: report format and parsing, the halt rule, the
status summary and table, which waiter tries for the lock, what fleet watch pauses, when a
swarm drain is done."""

from __future__ import annotations

import json

import pytest

from channels import fleet
from channels.fleet import HostReport, halted, parse_reports, summarize
from imagebuild.fleet.table import render
from imagebuild.fleet.watch import to_pause
from updater.drain import _settled
from updater.lock.semaphore import Move, Semaphore, free_slots, next_move


def rep(i: str, version: str = "1.0.0", group: str = "default", bad: tuple[str, ...] = (),
        **kw: object) -> HostReport:
    return HostReport(id=i, version=version, slot="a", channel="stable", group=group,
                      state="rolled-back" if bad else "idle", bad_versions=bad, **kw)


def kv(r: HostReport) -> tuple[str, bytes]:
    return fleet.host_key(r.id), r.to_json().encode()


def test_report_round_trip_and_key() -> None:
    r = rep("node1", bad=("1.1.0",), last_error="1.1.0 failed its boot", time=12.5)
    assert HostReport.from_json(r.to_json()) == r
    d = json.loads(r.to_json())
    assert d["format"] == fleet.FORMAT and d["bad_versions"] == ["1.1.0"]
    assert {"version", "slot", "channel", "group", "state", "target_version", "bad_versions",
            "last_error", "boot_id", "time"} <= set(d)
    assert fleet.host_key("a/b c") == "tidehost/fleet/hosts/a%2Fb%20c"
    assert fleet.rollback_key("web", "1.1.0", "n1") == "tidehost/fleet/rollbacks/web/1.1.0/n1"


@pytest.mark.parametrize(("value", "why"), [
    (b"{oops", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"id": "x"}', "field 'version' missing"),
    (b'{"id": "x", "version": 3}', "'version' is not a string"),
    (b'{"id": "x", "version": "1.0.0", "bad_versions": "1.1.0"}', "not a list of strings"),
    (b'{"id": "x", "version": "1.0.0", "time": "noon"}', "'time' is not a number"),
    (b'{"id": "x", "version": "1.0.0", "lock_held": "yes"}', "not true or false"),
    (b"\xff\xfe", "not JSON"),
])
def test_malformed_reports_are_skipped_and_named(value: bytes, why: str) -> None:
    good = rep("good")
    reports, problems = parse_reports([kv(good), ("tidehost/fleet/hosts/x", value)])
    assert reports == [good]
    assert len(problems) == 1 and problems[0].skipped
    assert why in str(problems[0]) and "tidehost/fleet/hosts/x" in str(problems[0])


def test_foreign_keys_newer_agents_and_odd_ids() -> None:
    newer = json.dumps({"id": "n", "version": "2.0.0", "format": 7, "colour": "red"}).encode()
    odd = rep("weird\nid\x1b[2J")
    kvs = [("tidehost/fleet/hosts/", b"{}"), ("tidehost/fleet/hosts/a/b", b"{}"),
           ("tidehost/fleet/hosts/%ff", b"{}"), ("tidehost/fleet/hosts/n", newer),
           kv(odd), ("tidehost/fleet/hosts/liar", rep("someone-else").to_json().encode())]
    reports, problems = parse_reports(kvs)
    assert [r.id for r in reports] == ["liar", "n", odd.id]
    n = next(r for r in reports if r.id == "n")
    assert n.version == "2.0.0" and n.unknown == ("colour",)
    text = [str(p) for p in problems]
    assert sum("skipped" in t for t in text) == 3
    assert any("newer agent, report format 7" in t and "colour" in t for t in text)
    assert any("names host 'someone-else'" in t for t in text)
    table = render(summarize(reports, {}, problems))
    assert "weird\\nid\\x1b[2J" in table and "\x1b" not in table  # one line, no escapes


def test_halt_rule() -> None:
    rb = {"1.1.0": {"a", "b"}, "1.2.0": {"c"}}
    assert halted(rb, 2) == {"1.1.0": ["a", "b"]}
    assert halted(rb, 1) == {"1.1.0": ["a", "b"], "1.2.0": ["c"]}
    assert halted(rb, 3) == {} and halted(rb, 0) == {}
    reports = [rep("a", bad=("1.1.0",)), rep("b", bad=("1.1.0",)), rep("c", group="other",
               bad=("1.1.0",)), rep("d")]
    by_group = fleet.rollbacks_of(reports)
    assert halted(by_group["default"], 2) == {"1.1.0": ["a", "b"]}
    assert halted(by_group["other"], 2) == {}  # one group's rollbacks do not halt another
    why = fleet.halt_reason("1.1.0", {"a", "b"}, "default", 2)
    assert why == ("1.1.0 halted: rolled back on 2 hosts of group default (a, b); "
                   "halt_after is 2")
    keys = [fleet.rollback_key("default", "1.1.0", h) for h in ("a", "b/c")] + [
        "tidehost/fleet/rollbacks/default/junk", fleet.rollback_key("other", "1.1.0", "z")]
    assert fleet.parse_rollback_keys(keys, "default") == {"1.1.0": {"a", "b/c"}}


def test_summary_counts_locks_halts_and_rollbacks() -> None:
    reports = [rep("a", bad=("1.1.0",), last_error="1.1.0 failed its boot or health checks"),
               rep("b", bad=("1.1.0",)), rep("c", version="1.1.0"),
               rep("d", group="db", lock_held=True)]
    sem = Semaphore(0, 1, ("d",))
    locks, problems = fleet.parse_locks([
        ("tidehost/rebootlock/groups/db/semaphore", sem.to_json().encode()),
        ("tidehost/rebootlock/groups/db/holders/d", b"{}"),
        ("tidehost/rebootlock/groups/web/semaphore", b"junk")])
    assert locks == {"db": {"max": 1, "holders": ["d"]}} and len(problems) == 1
    s = summarize(reports, locks, problems)
    assert s["versions"] == {"1.0.0": 3, "1.1.0": 1}
    assert s["states"] == {"idle": 2, "rolled-back": 2}
    assert s["groups"]["default"]["halted"] == {"1.1.0": ["a", "b"]}
    assert s["groups"]["db"]["lock_holders"] == ["d"] and s["groups"]["db"]["lock_max"] == 1
    assert [r["id"] for r in s["rolled_back"]] == ["a", "b"]
    assert s["rolled_back"][0]["why"] == "1.1.0 failed its boot or health checks"
    assert [h["id"] for h in s["hosts"]] == ["a", "b", "c", "d"]
    assert [h["id"] for h in summarize(reports, locks, group="db")["hosts"]] == ["d"]
    table = render(s, now=0)
    assert "HALTED 1.1.0: rolled back on 2 hosts (a, b)" in table
    assert "lock 1/1 held by d" in table and "warning:" in table
    assert to_pause(s) == {("stable", "1.1.0"): ["a", "b"]}


def test_only_the_first_waiter_tries_and_only_for_a_free_slot() -> None:
    assert next_move(ahead=True, free=5) is Move.WATCH_AHEAD
    assert next_move(ahead=False, free=0) is Move.WATCH_SLOTS
    assert next_move(ahead=False, free=1) is Move.TRY
    sem = Semaphore(0, 2, ("a", "b"))
    assert free_slots(sem, {"a", "b"}) == 0
    assert free_slots(sem, {"a"}) == 1  # b's liveness key is gone: its slot counts as free
    assert free_slots(Semaphore(1, 2, ("a",)), set()) == 2


def test_swarm_drain_is_done_when_nothing_runs_here_and_replicas_are_back() -> None:
    assert _settled("", "replicated 2/2\nglobal 3/3\n")
    assert not _settled("abc123\n", "replicated 2/2")
    assert not _settled("", "replicated 1/2")
    assert _settled("", "")
