"""Time arithmetic without I/O: maintenance windows, check times, backoff."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from updater.config import Window


def _starts(window: Window, now: datetime, days_back: int, days_ahead: int) -> list[datetime]:
    """Window starts (UTC) around ``now`` whose local weekday is in the window's days."""
    zone = window.zone
    local_today = now.astimezone(zone).date()
    out = []
    for d in range(-days_back, days_ahead + 1):
        day = local_today + timedelta(days=d)
        if day.weekday() in window.days:
            out.append(datetime.combine(day, window.start, tzinfo=zone).astimezone(UTC))
    return out


def window_open(window: Window | None, now: datetime) -> bool:
    """True when ``now`` (timezone-aware) falls inside a window; no window means always."""
    if window is None:
        return True
    length = timedelta(seconds=window.length)
    back = window.length // 86400 + 1
    return any(s <= now < s + length for s in _starts(window, now, back, 0))


def next_window(window: Window | None, now: datetime) -> datetime:
    """``now`` when a window is open, else the start of the next one."""
    if window_open(window, now):
        return now
    assert window is not None
    return min(s for s in _starts(window, now, 0, 8) if s > now)


def backoff(failures: int, *, base: float = 30.0, cap: float = 3600.0,
            rand: Callable[[], float] | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures: exponential, capped.

    ``rand`` (0..1) spreads retries over the upper half of the delay, so a fleet that failed
    together does not retry together.
    """
    if failures <= 0:
        return 0.0
    delay = min(cap, base * 2 ** min(failures - 1, 30))
    return delay if rand is None else delay * (0.5 + 0.5 * rand())


def next_check(last: float, interval: int, jitter: int, rand: Callable[[], float]) -> float:
    """Epoch time of the next channel check."""
    return last + interval + jitter * rand()
