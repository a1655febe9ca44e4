"""Pure logic, no I/O: state machine, semaphore, windows, backoff, version decisions."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from updater.config import Window
from updater.decide import Decision, decide
from updater.errors import LockBusy, LockExists, LockNotHeld, StateError
from updater.lock.semaphore import Semaphore
from updater.schedule import backoff, next_check, next_window, window_open
from updater.state import TRANSITIONS, Phase, State

# --- state machine ---------------------------------------------------------------------------

HAPPY = [Phase.CHECKING, Phase.DOWNLOADING, Phase.VERIFYING, Phase.WRITING, Phase.STAGED,
         Phase.WAITING_FOR_WINDOW, Phase.WAITING_FOR_LOCK, Phase.REBOOTING, Phase.CONFIRMING,
         Phase.IDLE]


def test_happy_path_is_allowed() -> None:
    s = State()
    for i, p in enumerate(HAPPY):
        s = s.to(p, float(i))
    assert s.phase is Phase.IDLE and s.since == float(len(HAPPY) - 1)


@pytest.mark.parametrize("src,dst", [
    (Phase.IDLE, Phase.REBOOTING),  # never reboot without staging
    (Phase.IDLE, Phase.WRITING),
    (Phase.CHECKING, Phase.WRITING),  # no writing without download and verification
    (Phase.DOWNLOADING, Phase.STAGED),
    (Phase.STAGED, Phase.REBOOTING),  # not without window and lock
    (Phase.WAITING_FOR_WINDOW, Phase.REBOOTING),
    (Phase.CONFIRMING, Phase.STAGED),
])
def test_forbidden_transitions(src: Phase, dst: Phase) -> None:
    with pytest.raises(StateError, match=f"{src} → {dst}"):
        State(phase=src).to(dst, 0.0)


def test_only_writing_reaches_staged_from_work() -> None:
    # staged is entered from writing (a fresh write), checking (already staged), or an operator
    # rollback from a resting phase, or waiting-for-lock when the group halted the version;
    # never from download/verify
    sources = {p for p, dst in TRANSITIONS.items() if Phase.STAGED in dst}
    assert sources == {Phase.WRITING, Phase.CHECKING, Phase.IDLE, Phase.ROLLED_BACK, Phase.ERROR,
                       Phase.WAITING_FOR_LOCK}
    rebooting = {p for p, dst in TRANSITIONS.items() if Phase.REBOOTING in dst}
    assert rebooting == {Phase.WAITING_FOR_LOCK, Phase.CONFIRMING}


def test_fail_keeps_target_and_counts() -> None:
    s = State(phase=Phase.WRITING, target_version="2.0.0", lock_held=True)
    s = s.fail("disk full", 5.0)
    assert (s.phase, s.failures, s.last_error, s.target_version, s.lock_held) == (
        Phase.ERROR, 1, "disk full", "2.0.0", True)
    assert s.fail("again", 6.0).failures == 2


def test_state_round_trip_and_bad_versions() -> None:
    s = State(phase=Phase.STAGED, target_version="2.0.0").mark_bad("3.0.0").mark_bad("3.0.0")
    s = s.mark_attempted("2.0.0")
    back = State.from_dict(s.to_dict())
    assert back == s and back.bad_versions == ("3.0.0",)
    assert State.from_dict({**s.to_dict(), "future_field": 1}) == s
    with pytest.raises(StateError):
        State.from_dict({"phase": "exploding"})


# --- semaphore ---------------------------------------------------------------------------------


def test_semaphore_locksmith_semantics() -> None:
    s = Semaphore().set_max(2)
    assert (s.semaphore, s.max) == (2, 2)
    s = s.lock("b").lock("a")
    assert s.holders == ("a", "b") and s.semaphore == 0
    with pytest.raises(LockExists):
        s.lock("a")
    with pytest.raises(LockBusy):
        s.lock("c")
    s = s.unlock("a")
    with pytest.raises(LockNotHeld):
        s.unlock("a")
    assert s.lock("c").holders == ("b", "c")


def test_semaphore_set_max_shifts_available_and_json() -> None:
    s = Semaphore().set_max(3).lock("x").set_max(1)
    assert (s.semaphore, s.max, s.holders) == (0, 1, ("x",))
    assert Semaphore.from_json(s.to_json()) == s
    assert Semaphore.from_json('{"semaphore":1,"max":1,"holders":null}') == Semaphore()


def test_semaphore_without_removes_only_ghosts() -> None:
    s = Semaphore().set_max(3).lock("a").lock("b")
    t = s.without(["a", "zzz"])
    assert t.holders == ("b",) and t.semaphore == 2


# --- maintenance windows -------------------------------------------------------------------------


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_window_simple_and_days() -> None:
    w = Window(days=(5, 6), start=time(2, 0), length=3 * 3600, tz="UTC")  # Sat, Sun 02-05
    assert window_open(w, utc(2026, 11, 21, 3, 0))  # Saturday
    assert not window_open(w, utc(2026, 11, 21, 5, 0))  # end is exclusive
    assert not window_open(w, utc(2026, 11, 23, 3, 0))  # Monday
    assert next_window(w, utc(2026, 11, 23, 3, 0)) == utc(2026, 11, 28, 2, 0)
    assert window_open(None, utc(2026, 1, 1))


def test_window_crossing_midnight() -> None:
    w = Window(days=(4,), start=time(23, 0), length=2 * 3600, tz="UTC")  # Fri 23:00-01:00
    assert window_open(w, utc(2026, 11, 20, 23, 30))  # Friday
    assert window_open(w, utc(2026, 11, 21, 0, 30))  # Saturday morning, still Friday's
    assert not window_open(w, utc(2026, 11, 21, 23, 30))  # Saturday night
    assert next_window(w, utc(2026, 11, 21, 1, 0)) == utc(2026, 11, 27, 23, 0)


def test_window_time_zone_and_dst() -> None:
    w = Window(days=tuple(range(7)), start=time(2, 0), length=3600, tz="Europe/Berlin")
    assert window_open(w, utc(2026, 1, 15, 1, 30))  # 02:30 CET = 01:30 UTC
    assert not window_open(w, utc(2026, 1, 15, 2, 30))
    assert window_open(w, utc(2026, 7, 15, 0, 30))  # 02:30 CEST = 00:30 UTC
    assert next_window(w, utc(2026, 7, 15, 12, 0)) == utc(2026, 7, 16, 0, 0)


# --- backoff and checks -------------------------------------------------------------------------


def test_backoff_grows_caps_and_jitters() -> None:
    assert [backoff(n, base=10, cap=100) for n in range(6)] == [0, 10, 20, 40, 80, 100]
    assert backoff(100, base=10, cap=100) == 100
    assert backoff(3, base=10, cap=100, rand=lambda: 0.0) == 20
    assert backoff(3, base=10, cap=100, rand=lambda: 1.0) == 40
    assert next_check(1000, 3600, 600, lambda: 0.5) == 1000 + 3600 + 300


# --- versions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("current,offered,bad,staged,want", [
    ("1.0.0", None, (), None, Decision.UP_TO_DATE),
    ("1.0.0", "1.0.0", (), None, Decision.UP_TO_DATE),
    ("1.0.0", "1.0.1", (), None, Decision.APPLY),
    ("1.9.0", "1.10.0", (), None, Decision.APPLY),  # numeric, not lexical
    ("2.0.0", "1.10.0", (), None, Decision.OLDER),
    ("1.0.0", "3.0.0", ("3.0.0",), None, Decision.BAD),
    ("1.0.0", "2.0.0", (), "2.0.0", Decision.STAGED),
    ("1.0.0", "2.0.1", (), "2.0.0", Decision.APPLY),
])
def test_decide(current: str, offered: str | None, bad: tuple[str, ...], staged: str | None,
                want: Decision) -> None:
    assert decide(current, offered, bad, staged) is want


def test_decide_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        decide("1.0.0", "latest")


class _Booting:
    """A host whose units come up one poll at a time; counts the checks it is asked."""

    def __init__(self, up_after: dict[str, int]) -> None:
        self.up_after, self.polls, self.asked = up_after, 0, []

    def unit_active(self, unit: str) -> bool:
        self.asked.append(unit)
        return self.polls >= self.up_after.get(unit, 0)

    def unit_failed(self, unit: str) -> bool:
        return False

    def check_command(self, argv: tuple[str, ...]) -> bool:
        self.asked.append(" ".join(argv))
        return self.polls >= self.up_after.get(" ".join(argv), 0)


def test_health_polls_stop_at_the_first_failure_and_the_end_names_them_all() -> None:
    from updater import health

    host = _Booting({"boot-complete.target": 3, "etcd.service": 2, "etcdctl endpoint health": 4})
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s
        host.polls += 1

    bad = health.wait_healthy(host, ["etcd.service"], [("etcdctl", "endpoint", "health")],  # type: ignore[arg-type]
                              60, clock=lambda: clock[0], sleep=sleep)  # fmt: skip
    assert bad == [] and host.polls == 4
    # while boot-complete.target was not reached, no unit and no command was asked about
    assert host.asked[:3] == ["boot-complete.target"] * 3
    assert host.asked.count("etcdctl endpoint health") == 2  # polls 3 and 4 only
    # a gate that runs out names every failure, not only the first
    stuck = _Booting({"boot-complete.target": 99, "etcd.service": 99, "etcdctl endpoint health": 99})
    bad = health.wait_healthy(stuck, ["etcd.service"], [("etcdctl", "endpoint", "health")],  # type: ignore[arg-type]
                              12, clock=lambda: clock[0], sleep=sleep)  # fmt: skip
    assert bad == ["boot-complete.target", "etcd.service", "etcdctl endpoint health"]
