"""Which release a host may take now. Pure, no I/O.

The rule: among the releases newer than the host's version, newest first, skip those that
are pulled or paused, those whose barrier (``min_version``) the host has not passed, and those
whose rollout has not reached the host's position yet; offer the first one left. So a host
behind a barrier gets the barrier release first (Flatcar's update barriers), and a host not yet
in the newest release's wave still gets an older release that is open to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from channels.index import ChannelIndex, Release
from channels.rollout import host_position
from channels.version import Version


@dataclass(frozen=True)
class Skip:
    version: str
    why: str  # "pulled", "paused", "barrier", "wave"
    detail: str


@dataclass(frozen=True)
class Decision:
    release: Release | None
    reason: str  # one line: why this release, or why nothing
    position: float | None = None  # the host's position for the offered release
    open_percent: float | None = None  # how far that release's rollout has opened
    barrier: bool = False  # the offer is older than the newest because of a min_version
    skipped: tuple[Skip, ...] = ()


def decide(index: ChannelIndex, machine_id: str, current: str, now: datetime) -> Decision:
    cur = Version.parse(current)
    newer = [r for r in reversed(index.releases) if r.parsed_version > cur]
    if not newer:
        top = index.current
        return Decision(None, f"up to date: {current} (channel {index.channel} is at "
                        f"{top.version if top else 'nothing'})")
    skipped: list[Skip] = []
    barrier_blocked = False
    for r in newer:
        if r.pulled:
            skipped.append(Skip(r.version, "pulled", f"{r.version} was pulled"))
            continue
        if r.rollout.paused:
            skipped.append(Skip(r.version, "paused", f"{r.version}'s rollout is paused"))
            continue
        if r.min_version is not None and cur < Version.parse(r.min_version):
            barrier_blocked = True
            skipped.append(Skip(r.version, "barrier",
                                f"{r.version} needs {r.min_version} or later first"))
            continue
        pos = host_position(machine_id, r.version)
        opened = r.rollout.open_percent(now)
        if pos >= opened:
            nxt = r.rollout.next_wave(now)
            when = f"; next wave {nxt}" if nxt else ""
            skipped.append(Skip(r.version, "wave", f"{r.version} is open to {opened:g}% of "
                                f"hosts, this host is at {pos:.2f}%{when}"))
            continue
        reason = f"{r.version}: open to {opened:g}%, this host is at {pos:.2f}%"
        if skipped:
            reason += " (" + "; ".join(s.detail for s in skipped) + ")"
        return Decision(r, reason, pos, opened, barrier_blocked, tuple(skipped))
    return Decision(None, "nothing offered now: " + "; ".join(s.detail for s in skipped),
                    skipped=tuple(skipped))
