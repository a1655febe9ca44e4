"""Staged rollout: waves, the rollout clock, and a host's stable position. Pure, no I/O.

A plan is a start time and waves ``(percentage, offset from start)``: ``1%@0h,10%@24h,100%@72h``
opens the release to 1% of hosts at once, 10% after a day, everyone after three days. Pausing
freezes the clock (time spent paused does not count), resuming continues it.

A host's position is a number in [0, 100) derived from ``sha256(machine id, version)``: the same
host is early or late consistently for one release, differently across releases, and anyone can
recompute who was in which wave. A host may take the release once ``position < open_percent``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

_WAVE = re.compile(r"^\s*(\d+(?:\.\d+)?)%@(\d+(?:\.\d+)?)([smhd]?)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 3600}


@dataclass(frozen=True)
class Wave:
    percent: float  # (0, 100]
    offset: timedelta  # from the rollout's start, not counting paused time

    def __post_init__(self) -> None:
        if not 0 < self.percent <= 100:
            raise ValueError(f"wave percentage {self.percent:g} is not in (0, 100]")
        if self.offset < timedelta(0):
            raise ValueError("wave offset is negative")

    def __str__(self) -> str:
        secs = int(self.offset.total_seconds())
        unit = "h" if secs % 3600 == 0 else ("m" if secs % 60 == 0 else "s")
        return f"{self.percent:g}%@{secs // _UNIT[unit]}{unit}"


def parse_waves(text: str) -> tuple[Wave, ...]:
    """Parse ``"1%@0h,10%@24h,100%@72h"``.

    Percentages and offsets must both increase and the last wave must open 100%.

    Raises:
        ValueError: naming the piece that does not parse.
    """
    waves: list[Wave] = []
    for piece in str(text).split(","):
        m = _WAVE.match(piece)
        if not m:
            raise ValueError(f"wave {piece.strip()!r} is not of the form PCT%@OFFSET[s|m|h|d]")
        waves.append(Wave(float(m[1]), timedelta(seconds=float(m[2]) * _UNIT[m[3]])))
    check_waves(waves)
    return tuple(waves)


def check_waves(waves: Sequence[Wave]) -> None:
    if not waves:
        raise ValueError("a rollout needs at least one wave")
    for a, b in zip(waves, waves[1:], strict=False):
        if b.percent <= a.percent or b.offset < a.offset:
            raise ValueError(f"waves must grow: {a} is followed by {b}")
    if waves[-1].percent != 100:
        raise ValueError(f"the last wave ({waves[-1]}) must open 100%")


IMMEDIATE = (Wave(100.0, timedelta(0)),)


def iso_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return t.astimezone(UTC)


@dataclass(frozen=True)
class RolloutPlan:
    start: datetime
    waves: tuple[Wave, ...] = IMMEDIATE
    paused_at: datetime | None = None
    paused_seconds: float = 0.0  # total time spent paused before ``paused_at``

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("rollout start has no time zone")
        check_waves(self.waves)

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def elapsed(self, now: datetime) -> timedelta:
        """Rollout time at ``now``: wall time since start minus time spent paused."""
        clock = self.paused_at if self.paused_at is not None and self.paused_at < now else now
        return clock - self.start - timedelta(seconds=self.paused_seconds)

    def open_percent(self, now: datetime) -> float:
        """The share of hosts (0-100) the plan has opened the release to at ``now``."""
        elapsed = self.elapsed(now)
        opened = [w.percent for w in self.waves if w.offset <= elapsed]
        return max(opened, default=0.0)

    def next_wave(self, now: datetime) -> Wave | None:
        elapsed = self.elapsed(now)
        return next((w for w in self.waves if w.offset > elapsed), None)

    def pause(self, now: datetime) -> RolloutPlan:
        if self.paused_at is not None:
            return self
        return replace(self, paused_at=now)

    def resume(self, now: datetime) -> RolloutPlan:
        if self.paused_at is None:
            return self
        frozen = max((now - self.paused_at).total_seconds(), 0.0)
        return replace(self, paused_at=None, paused_seconds=self.paused_seconds + frozen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": iso_time(self.start),
            "waves": [[w.percent, int(w.offset.total_seconds())] for w in self.waves],
            "paused_at": iso_time(self.paused_at) if self.paused_at else None,
            "paused_seconds": self.paused_seconds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutPlan:
        try:
            waves = tuple(Wave(float(p), timedelta(seconds=float(s))) for p, s in d["waves"])
            paused = d.get("paused_at")
            return cls(
                start=parse_time(d["start"]),
                waves=waves,
                paused_at=parse_time(paused) if paused else None,
                paused_seconds=float(d.get("paused_seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"rollout: {e}") from None


def host_position(machine_id: str, version: str) -> float:
    """A host's place in [0, 100) for one release: stable, uniform, reproducible."""
    digest = hashlib.sha256(f"tidehost-rollout\0{machine_id.strip()}\0{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100
