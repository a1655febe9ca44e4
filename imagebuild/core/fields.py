"""Small field parsers: ``(where, raw) -> value``; ``where`` names the file and the field.

Strict types (an int is not a bool, a number is not a string), no control characters in any
string, every span bounded: a value that passes here cannot add a line to a script, a unit,
a boot entry or YAML, nor overflow a clock on the host later.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import zoneinfo
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from channels.bundle import control_character, is_int
from imagebuild.core.errors import ConfigError

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DOMAIN = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s]*)?$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$")
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_SSH_KEY = re.compile(
    r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+)"
    r" [A-Za-z0-9+/]+=*( .*)?$"
)
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_HHMM = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")
_SPAN = re.compile(r"^(?:\d+[smhd])+$")
_SPAN_PART = re.compile(r"(\d+)([smhd])")
_SPAN_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\][A-Za-z0-9:_.@\\-]*$")
MINUTE, DAY = 60, 86400
MAX_SPAN = 366 * DAY  # the agent's bound for every duration (updater/fields.py)
MAX_SLOTS = 10_000  # reboot-lock slots of a group (the agent's bound)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def read_text(path: Path, what: str) -> str:
    """The text of ``path``; unreadable or not UTF-8 is a ConfigError of one line."""
    try:
        return path.read_bytes().decode()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text (byte {e.start})") from None


def yaml_mapping(text: str, source: str, what: str, *, empty_ok: bool = False) -> Mapping[str, Any]:
    """Load a YAML document that must be a mapping; errors name ``source`` (and the line)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    if raw is None and empty_ok:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the {what} must be a YAML mapping")
    return raw


def mapping(where: str, raw: Any, known: tuple[str, ...]) -> Mapping[str, Any]:
    """A mapping whose keys are all in ``known`` (None is an empty mapping)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown field (known: {', '.join(known)})")
    return raw


def string(where: str, raw: Any) -> str:
    """A non-empty string without control characters (newline, tab, NUL, ESC, ...)."""
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {raw!r}")
    s = raw.strip()
    bad = control_character(s)
    if bad:
        raise ConfigError(f"{where}: {s!r} contains the control character {bad}")
    return s


def name(where: str, raw: Any) -> str:
    """A name that is also a host name: an image's, a cluster's, a node's."""
    s = string(where, raw)
    if not _NAME.match(s):
        raise ConfigError(f"{where}: {s!r} is not a lowercase name of [a-z0-9-] (a DNS label: "
                          "1 to 63 characters, no hyphen first or last)")
    return s


def domain(where: str, raw: Any) -> str:
    s = string(where, raw).rstrip(".")
    if not _DOMAIN.match(s) or len(s) > 253:
        raise ConfigError(f"{where}: {s!r} is not a lowercase DNS name")
    return s


def ipv4(where: str, raw: Any) -> str:
    s = str(raw).strip() if isinstance(raw, (str, int)) and not isinstance(raw, bool) else ""
    try:
        return str(ipaddress.IPv4Address(s))
    except ValueError:
        raise ConfigError(f"{where}: {raw!r} is not an IPv4 address") from None


def url(where: str, raw: Any) -> str:
    s = string(where, raw)
    if not _URL.match(s):
        raise ConfigError(f"{where}: {s!r} is not an http:// or https:// URL")
    return s


def registry(where: str, raw: Any) -> str:
    """A registry for insecure-registries: host[:port] or a CIDR."""
    s = string(where, raw)
    try:
        return str(ipaddress.ip_network(s, strict=False)) if "/" in s else _hostport(where, s)
    except ValueError:
        raise ConfigError(f"{where}: {s!r} is not host[:port] or a CIDR") from None


def _hostport(where: str, s: str) -> str:
    if not _HOSTPORT.match(s):
        raise ConfigError(f"{where}: {s!r} is not host[:port] or a CIDR")
    return s


def token(where: str, raw: Any) -> str:
    s = string(where, raw)
    if not _TOKEN.match(s):
        raise ConfigError(f"{where}: {s!r} is not a token of [A-Za-z0-9._-]")
    return s


def socket(where: str, raw: Any) -> str:
    """A Unix socket as kubelet and kubeadm name it: ``unix:///ABSOLUTE/PATH`` or a path."""
    s = string(where, raw)
    path = s.removeprefix("unix://")
    if not path.startswith("/") or path.endswith("/") or len(path.encode()) > 107:
        raise ConfigError(f"{where}: {s!r} is not a Unix socket like "
                          "unix:///run/containerd/containerd.sock")  # fmt: skip
    return s


def unit(where: str, raw: Any) -> str:
    """A systemd unit name, like ``docker.service``."""
    s = string(where, raw)
    if not _UNIT.match(s):
        raise ConfigError(f"{where}: {s!r} is not a systemd unit name")
    return s


def command(where: str, raw: Any) -> str:
    """A command line in shell words (the agent splits it with shlex, as here)."""
    s = string(where, raw)
    try:
        words = shlex.split(s)
    except ValueError as e:
        raise ConfigError(f"{where}: {s!r} is not a command line in shell words ({e})") from None
    if not words:
        raise ConfigError(f"{where}: an empty command")
    return s


def boolean(where: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    return raw


def int_range(lo: int, hi: int) -> Callable[[str, Any], int]:
    def parse(where: str, raw: Any) -> int:
        if not is_int(raw) or not lo <= raw <= hi:
            raise ConfigError(f"{where}: {raw!r} is not a whole number from {lo} to {hi}")
        return raw

    return parse


def enum(kind: type[E]) -> Callable[[str, Any], E]:
    def parse(where: str, raw: Any) -> E:
        try:
            if isinstance(raw, str):
                return kind(raw)
        except ValueError:
            pass
        choices = ", ".join(m.value for m in kind)
        raise ConfigError(f"{where}: {raw!r} is not one of {choices}")

    return parse


def one_of(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    """One of a closed set of strings owned elsewhere (``channels.bundle.CHANNELS``)."""

    def parse(where: str, raw: Any) -> str:
        if not isinstance(raw, str) or raw not in choices:
            raise ConfigError(f"{where}: {raw!r} is not one of {', '.join(choices)}")
        return raw

    return parse


def listof(
    item: Callable[[str, Any], T], *, unique: bool = True
) -> Callable[[str, Any], tuple[T, ...]]:
    def parse(where: str, raw: Any) -> tuple[T, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise ConfigError(f"{where}: expected a list, got {raw!r}")
        out: list[T] = []
        for i, v in enumerate(raw):
            value = item(f"{where}[{i}]", v)
            if unique and value in out:
                raise ConfigError(f"{where}[{i}]: {value!r} is listed twice")
            out.append(value)
        return tuple(out)

    return parse


def ssh_key(where: str, raw: Any) -> str:
    s = string(where, raw)
    if "\n" in s or not _SSH_KEY.match(s):
        raise ConfigError(
            f"{where}: not an OpenSSH public key line ('ssh-ed25519 AAAA... comment')"
        )
    return s


def hhmm(where: str, raw: Any) -> str:
    """A time of day ``HH:MM``; an unquoted 02:00 (YAML 1.1 reads 120) means what it says."""
    if is_int(raw) and 0 <= raw < 24 * 60:
        raw = f"{raw // 60:02d}:{raw % 60:02d}"
    m = _HHMM.match(raw.strip()) if isinstance(raw, str) else None
    if not m:
        raise ConfigError(f"{where}: {raw!r} is not a time of day HH:MM")
    return f"{int(m[1]):02d}:{m[2]}"


def span(lo: int = 0, hi: int = MAX_SPAN) -> Callable[[str, Any], int]:
    """Seconds from ``lo`` to ``hi``: a whole number, or like ``30s``, ``15m``, ``1h30m``,
    ``1d`` (the agent's syntax and bounds, updater/fields.py)."""

    def parse(where: str, raw: Any) -> int:
        n = -1
        if is_int(raw):
            n = raw
        elif isinstance(raw, str):
            s = raw.strip().replace(" ", "")
            if s.isdigit():
                n = int(s)
            elif _SPAN.match(s):
                n = sum(int(k) * _SPAN_UNITS[u] for k, u in _SPAN_PART.findall(s))
        if n < 0:
            raise ConfigError(f"{where}: {raw!r} is not a duration like 30s, 15m, 1h30m or 1d")
        if not lo <= n <= hi:
            raise ConfigError(f"{where}: {raw!r} is not from {human(lo)} to {human(hi)}")
        return n

    return parse


def seconds(where: str, raw: Any) -> int:
    """A span in seconds, at most 366 days (see ``span``)."""
    return span()(where, raw)


def human(n: int) -> str:
    """Seconds as the shortest duration of one unit (``90`` -> ``90s``, ``3600`` -> ``1h``)."""
    for u, size in (("d", DAY), ("h", 3600), ("m", MINUTE)):
        if n >= size and n % size == 0:
            return f"{n // size}{u}"
    return f"{n}s"


def duration(where: str, raw: Any) -> str:
    """A window length from 1m to 7d (``2h``, ``90m``, ``1d``), normalised to hours, minutes
    and seconds (``90m`` -> ``1h30m``, ``1d`` -> ``24h``)."""
    n = span(MINUTE, 7 * DAY)(where, raw)
    h, rest = divmod(n, 3600)
    mins, secs = divmod(rest, 60)
    return (f"{h}h" if h else "") + (f"{mins}m" if mins else "") + (f"{secs}s" if secs else "")


def _weekday(where: str, word: str) -> int:
    w = word.strip().lower()
    if w in WEEKDAYS:
        return WEEKDAYS.index(w)
    if w in _FULL_WEEKDAYS:
        return _FULL_WEEKDAYS.index(w)
    raise ConfigError(f"{where}: {word.strip()!r} is not one of {', '.join(WEEKDAYS)}")


def weekdays(where: str, raw: Any) -> tuple[str, ...]:
    """Days as systemd's calendar writes them: ``mon``/``monday``, ranges ``mon-fri`` or
    ``mon..fri``, ``sat,sun``, a list of those; the days in week order, each once."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: expected a list of days like [mon-fri] or [sat, sun]")
    out: set[int] = set()
    for i, item in enumerate(items):
        here = f"{where}[{i}]" if isinstance(raw, list) else where
        if not isinstance(item, str):
            raise ConfigError(f"{here}: {item!r} is not a day of the week (mon ... sun)")
        for part in item.split(","):
            ends = re.split(r"\.\.|-", part)
            if len(ends) > 2 or not part.strip():
                raise ConfigError(f"{here}: {item!r} is not a day or a range like mon-fri")
            first, last = _weekday(here, ends[0]), _weekday(here, ends[-1])
            if last < first:
                raise ConfigError(f"{here}: {part.strip()!r} runs backwards (mon ... sun); "
                                  "write two ranges, like fri-sun,mon")  # fmt: skip
            out.update(range(first, last + 1))
    return tuple(WEEKDAYS[d] for d in sorted(out))


def timezone(where: str, raw: Any) -> str:
    s = string(where, raw)
    try:
        zoneinfo.ZoneInfo(s)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: {s!r} is not an IANA time zone") from None
    return s


def str_map(where: str, raw: Any) -> tuple[tuple[str, str], ...]:
    """A flat mapping of strings (numbers and booleans become their YAML text)."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of strings, got {raw!r}")
    out = []
    for k, v in raw.items():
        if not isinstance(k, str) or isinstance(v, (list, dict)) or v is None:
            raise ConfigError(f"{where}.{k}: expected a string value, got {v!r}")
        key = string(f"{where}: key", k)
        text = str(v).lower() if isinstance(v, bool) else str(v)
        out.append((key, string(f"{where}.{key}", text)))
    return tuple(out)


def mac(where: str, raw: Any) -> str:
    s = string(where, raw).lower()
    if not _MAC.match(s) or int(s[:2], 16) & 1:
        raise ConfigError(f"{where}: {raw!r} is not a unicast MAC address like 52:54:00:4d:00:0b")
    return s
