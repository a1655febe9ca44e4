"""Pure rollout and offer logic: waves, the paused clock, host positions, barriers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from channels.bundle import FILES, FileInfo, Manifest
from channels.errors import ChannelIndexError
from channels.index import BUNDLE_FILES, ChannelIndex, Release, target_path
from channels.policy import decide
from channels.rollout import RolloutPlan, Wave, host_position, parse_waves

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


def test_parse_waves() -> None:
    waves = parse_waves("1%@0h, 10%@24h,100%@3d")
    assert [(w.percent, w.offset) for w in waves] == [(1, 0 * H), (10, 24 * H), (100, 72 * H)]
    assert ",".join(map(str, waves)) == "1%@0h,10%@24h,100%@72h"
    assert parse_waves("100%@0") == (Wave(100, timedelta(0)),)


@pytest.mark.parametrize("text, why", [
    ("", "PCT%@OFFSET"),
    ("10%", "PCT%@OFFSET"),
    ("10%@1h", "must open 100%"),
    ("50%@2h,20%@3h,100%@4h", "must grow"),
    ("50%@5h,100%@4h", "must grow"),
    ("0%@0h,100%@1h", "not in (0, 100]"),
    ("150%@0h", "not in (0, 100]"),
])
def test_parse_waves_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_waves(text)


def test_open_percent_follows_waves() -> None:
    plan = RolloutPlan(T0, parse_waves("1%@0h,10%@24h,100%@72h"))
    assert plan.open_percent(T0 - H) == 0
    assert plan.open_percent(T0) == 1
    assert plan.open_percent(T0 + 23 * H) == 1
    assert plan.open_percent(T0 + 24 * H) == 10
    assert plan.open_percent(T0 + 72 * H) == 100
    assert plan.next_wave(T0 + H) == Wave(10, 24 * H)


def test_pause_freezes_and_resume_continues_the_clock() -> None:
    plan = RolloutPlan(T0, parse_waves("1%@0h,10%@24h,100%@72h"))
    paused = plan.pause(T0 + 20 * H)
    assert paused.paused
    # frozen at 20h of rollout time however long it stays paused
    assert paused.elapsed(T0 + 100 * H) == 20 * H
    assert paused.open_percent(T0 + 100 * H) == 1
    resumed = paused.resume(T0 + 30 * H)  # 10h paused
    assert not resumed.paused
    assert resumed.elapsed(T0 + 33 * H) == 23 * H
    assert resumed.open_percent(T0 + 33 * H) == 1
    assert resumed.open_percent(T0 + 34 * H) == 10
    again = RolloutPlan.from_dict(resumed.to_dict())
    assert again == resumed


def test_host_position_is_stable_uniform_and_per_release() -> None:
    ids = [f"{i:032x}" for i in range(4000)]
    pos = [host_position(m, "1.2.0") for m in ids]
    assert pos == [host_position(m, "1.2.0") for m in ids]
    assert all(0 <= p < 100 for p in pos)
    # roughly uniform: each decile holds 10% +- 2.5%
    for d in range(10):
        share = sum(d * 10 <= p < d * 10 + 10 for p in pos) / len(pos)
        assert 0.075 < share < 0.125, (d, share)
    other = [host_position(m, "1.3.0") for m in ids]
    early = {m for m, p in zip(ids, pos, strict=True) if p < 10}
    early_next = {m for m, p in zip(ids, other, strict=True) if p < 10}
    assert len(early & early_next) < len(early) / 3  # not the same canaries every time


def manifest(version: str) -> Manifest:
    files = {f: FileInfo(10, "0" * 64) for f in FILES}
    return Manifest("tidehost", version, "alpha", "b", "x86-64", "trixie", "erofs", "a" * 64,
                    "", 3, files)


def release(version: str, waves: str = "100%@0h", *, min_version: str | None = None,
            pulled: bool = False, paused: bool = False, chan: str = "stable") -> Release:
    m = manifest(version)
    plan = RolloutPlan(T0, parse_waves(waves))
    if paused:
        plan = plan.pause(T0 + H)
    return Release(version, m, {f: target_path(chan, m, f) for f in BUNDLE_FILES}, plan, T0,
                   min_version=min_version, pulled=pulled)


def index(*rels: Release) -> ChannelIndex:
    return ChannelIndex("stable", tuple(rels))


def test_offers_newest_open_release() -> None:
    d = decide(index(release("1.0.0"), release("1.1.0")), "m", "1.0.0", T0 + H)
    assert d.release is not None and d.release.version == "1.1.0"
    assert d.open_percent == 100
    assert decide(index(release("1.0.0"), release("1.1.0")), "m", "1.1.0", T0).release is None
    assert "up to date" in decide(index(release("1.1.0")), "m", "1.1.0", T0).reason


def test_waves_split_hosts_by_position() -> None:
    idx = index(release("1.0.0"), release("1.1.0", "10%@0h,100%@48h"))
    ids = [f"host-{i}" for i in range(500)]
    now = T0 + H
    offered = {m for m in ids if (r := decide(idx, m, "1.0.0", now).release) and
               r.version == "1.1.0"}
    expected = {m for m in ids if host_position(m, "1.1.0") < 10}
    assert offered == expected and 20 < len(offered) < 80
    late = next(m for m in ids if m not in offered)
    assert decide(idx, late, "1.0.0", now).release is None  # 1.0.0 is not newer
    d = decide(idx, late, "0.9.0", now)
    assert d.release is not None and d.release.version == "1.0.0"  # falls back to open 1.0.0
    assert [s.why for s in d.skipped] == ["wave"]
    assert decide(idx, late, "1.0.0", T0 + 48 * H).release.version == "1.1.0"  # type: ignore[union-attr]


def test_paused_and_pulled_are_not_offered() -> None:
    d = decide(index(release("1.0.0"), release("1.1.0", paused=True)), "m", "1.0.0", T0 + 2 * H)
    assert d.release is None and "paused" in d.reason
    d = decide(index(release("1.0.0"), release("1.1.0", pulled=True)), "m", "0.5.0", T0)
    assert d.release is not None and d.release.version == "1.0.0"
    assert [s.why for s in d.skipped] == ["pulled"]


def test_barrier_offers_the_min_version_first() -> None:
    idx = index(release("1.0.0"), release("2.0.0"), release("3.0.0", min_version="2.0.0"))
    d = decide(idx, "m", "1.0.0", T0)
    assert d.release is not None and d.release.version == "2.0.0" and d.barrier
    d = decide(idx, "m", "2.0.0", T0)
    assert d.release is not None and d.release.version == "3.0.0" and not d.barrier


def test_index_refuses_targets_of_another_channel() -> None:
    r = release("1.0.0", chan="alpha")
    with pytest.raises(ChannelIndexError, match="outside channel stable"):
        ChannelIndex("stable", (r,))
    ok = ChannelIndex("stable", (release("1.0.0"),))
    data = ok.to_bytes()
    assert ChannelIndex.from_bytes(data, "stable") == ok
    with pytest.raises(ChannelIndexError, match="index of channel 'stable', not 'beta'"):
        ChannelIndex.from_bytes(data, "beta")
