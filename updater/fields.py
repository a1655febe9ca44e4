"""Value parsers of the agent's settings: ``(raw YAML value) -> typed value``.

Each raises ``ValueError`` with a short reason; ``config.parse`` adds the file and the field.
Strict types: a bool is not a number, a number is not a day; every duration and count is
bounded, so no setting can pass parsing and then overflow a clock later.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_GROUP = re.compile(r"^[a-zA-Z0-9.-]+$")
_DURATION = re.compile(r"^(?:\d+[smhd])+$")
_PART = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MINUTE, DAY = 60, 86400
MAX_DURATION = 366 * DAY  # no setting of the agent needs longer
HOLDER_MAX = 253  # a DNS name's length: machine ids and host names fit
MAX_SLOTS = 10_000  # reboot-lock slots of a group


def text(v: Any) -> str:
    """A string without control characters (numbers are written as they read)."""
    if v is None:
        return ""
    if not isinstance(v, str | int | float) or isinstance(v, bool):
        raise ValueError(f"{v!r} is not a string")
    s = str(v)
    if _CONTROL.search(s):
        raise ValueError(f"{s!r} contains a control character")
    return s


def holder_id(v: Any) -> str:
    """A reboot-lock holder id: printable, at most 253 characters (empty: the machine id)."""
    s = text(v)
    if len(s) > HOLDER_MAX:
        raise ValueError(f"holder id of {len(s)} characters (at most {HOLDER_MAX})")
    if not s.isprintable() or s != s.strip():
        raise ValueError(f"{s!r} is not a printable holder id")
    return s


def path_or_none(v: Any) -> Path | None:
    s = text(v)
    if s and not s.startswith("/"):
        raise ValueError(f"{s!r} is not an absolute path")
    return Path(s) if s else None


def path(v: Any) -> Path:
    p = path_or_none(v)
    if p is None:
        raise ValueError("must not be empty")
    return p


def duration(v: Any) -> int:
    """Seconds: an integer, or ``30s``, ``15m``, ``2h``, ``1d``, ``1h30m`` (locksmith's);
    at most 366 days."""
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"{v!r} is not a duration")
    if isinstance(v, int):
        n = v
    else:
        s = v.strip().replace(" ", "")
        if s.isdigit():
            n = int(s)
        elif _DURATION.match(s):
            n = sum(int(k) * _UNITS[u] for k, u in _PART.findall(s))
        else:
            raise ValueError(f"{v!r} is not a duration (seconds, or like 30s, 15m, 1h30m, 1d)")
    if n < 0:
        raise ValueError(f"{v} is negative")
    if n > MAX_DURATION:
        raise ValueError(f"{v!r} is longer than 366 days")
    return n


def bounded(parse: Callable[[Any], int], low: int, high: int,
            unit: Callable[[int], str] = str) -> Callable[[Any], int]:
    """``parse``, then ``low <= value <= high``."""
    def inner(v: Any) -> int:
        n = parse(v)
        if not low <= n <= high:
            raise ValueError(f"{v!r} is not from {unit(low)} to {unit(high)}")
        return n

    return inner


def positive(parse: Callable[[Any], int]) -> Callable[[Any], int]:
    def inner(v: Any) -> int:
        n = parse(v)
        if n <= 0:
            raise ValueError(f"{v!r} must be greater than zero")
        return n

    return inner


def count(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{v!r} is not a whole number")
    return v


def human(seconds: int) -> str:
    for unit, size in (("d", DAY), ("h", 3600), ("m", MINUTE)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def tries(v: Any) -> int | None:
    if v is None or v == "":
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 9:
        raise ValueError(f"{v!r} is not a whole number from 1 to 9")
    return v


def group(v: Any) -> str:
    s = text(v)
    if not _GROUP.match(s):
        raise ValueError(f"{s!r} does not match [a-zA-Z0-9.-]+")
    return s


def url(v: Any) -> str:
    s = text(v)
    if s and not re.match(r"^https?://[^/\s]+\S*$", s):
        raise ValueError(f"{s!r} is not an http(s) URL")
    return s


def items(v: Any) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, str):
        return [x for x in (p.strip() for p in v.split(",")) if x]
    if not isinstance(v, list):
        raise ValueError(f"{v!r} is not a list")
    return v


def urls(v: Any) -> tuple[str, ...]:
    out = tuple(url(x) for x in items(v))
    if not out:
        raise ValueError("needs at least one URL")
    return out


def units(v: Any) -> tuple[str, ...]:
    out = tuple(text(x) for x in items(v))
    for u in out:
        if not re.match(r"^[A-Za-z0-9:_.@\\][A-Za-z0-9:_.@\\-]*$", u):
            raise ValueError(f"{u!r} is not a systemd unit name")
    return out


def commands(v: Any) -> tuple[tuple[str, ...], ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise ValueError(f"{v!r} is not a list of commands")
    out = []
    for c in v:
        argv = shlex.split(text(c)) if isinstance(c, str) else [text(x) for x in items(c)]
        if not argv:
            raise ValueError("an empty command")
        out.append(tuple(argv))
    return tuple(out)


def _day(word: str, whole: str) -> int:
    w = word.strip().lower()
    if w in DAYS:
        return DAYS.index(w)
    if w in _FULL_DAYS:
        return _FULL_DAYS.index(w)
    raise ValueError(f"{whole!r}: {word.strip()!r} is not a day of the week (mon … sun)")


def days(v: Any) -> tuple[int, ...]:
    """Days as systemd's calendar writes them: ``mon``, ``monday``, ranges ``mon-fri`` or
    ``mon..fri``, lists ``[sat, sun]`` or ``sat,sun``; 0 is Monday.  A range runs forwards
    (``fri-mon`` is refused: write ``fri-sun,mon``)."""
    out: set[int] = set()
    for item in items(v) or list(DAYS):
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not a day of the week (mon … sun)")
        for part in item.split(","):
            ends = re.split(r"\.\.|-", part)
            if len(ends) > 2 or not part.strip():
                raise ValueError(f"{item!r} is not a day or a range like mon-fri")
            first, last = _day(ends[0], item), _day(ends[-1], item)
            if last < first:
                raise ValueError(f"{part.strip()!r} runs backwards (mon … sun); "
                                 "write two ranges, like fri-sun,mon")
            out.update(range(first, last + 1))
    return tuple(sorted(out))


def clock(v: Any) -> time:
    if isinstance(v, int) and not isinstance(v, bool):  # YAML 1.1 reads 02:00 as 120
        v = f"{v // 60:02d}:{v % 60:02d}"
    m = re.match(r"^(\d{1,2}):(\d{2})$", text(v).strip())
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ValueError(f"{v!r} is not a time of day HH:MM")
    return time(int(m[1]), int(m[2]))


def tz(v: Any) -> str:
    s = text(v) or "UTC"
    try:
        ZoneInfo(s)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{s!r} is not a known time zone") from None
    return s
