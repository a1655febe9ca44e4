"""Small field parsers: ``(where, raw) -> value``; ``where`` names the file and the field."""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

import yaml

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
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?$")
_SECONDS = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


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
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {raw!r}")
    return raw.strip()


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


def boolean(where: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    return raw


def int_range(lo: int, hi: int) -> Callable[[str, Any], int]:
    def parse(where: str, raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
            raise ConfigError(f"{where}: {raw!r} is not a whole number from {lo} to {hi}")
        return raw

    return parse


def enum(kind: type[E]) -> Callable[[str, Any], E]:
    def parse(where: str, raw: Any) -> E:
        try:
            return kind(str(raw))
        except ValueError:
            choices = ", ".join(m.value for m in kind)
            raise ConfigError(f"{where}: {raw!r} is not one of {choices}") from None

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
    s = str(raw).strip() if isinstance(raw, str) else ""
    if not _HHMM.match(s):
        raise ConfigError(f"{where}: {raw!r} is not a time of day HH:MM (quote it in YAML)")
    return s


def duration(where: str, raw: Any) -> str:
    """A duration like ``2h``, ``90m`` or ``1h30m``, normalised (``90m`` -> ``1h30m``)."""
    s = str(raw).strip() if isinstance(raw, str) else ""
    m = _DURATION.match(s)
    minutes = int(m.group(1) or 0) * 60 + int(m.group(2) or 0) if m and s else 0
    if not 0 < minutes <= 7 * 24 * 60:
        raise ConfigError(f"{where}: {raw!r} is not a duration from 1m to 168h like 1h30m")
    h, mins = divmod(minutes, 60)
    return (f"{h}h" if h else "") + (f"{mins}m" if mins else "")


def seconds(where: str, raw: Any) -> int:
    """A span in seconds: a whole number, or like ``30s``, ``15m``, ``1h30m``, ``1d``."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    s = raw.strip() if isinstance(raw, str) else ""
    m = _SECONDS.match(s)
    if not s or not m:
        raise ConfigError(f"{where}: {raw!r} is not a duration like 30s, 15m, 1h30m or 1d")
    d, h, mins, secs = (int(g or 0) for g in m.groups())
    return ((d * 24 + h) * 60 + mins) * 60 + secs


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
        out.append((k, str(v).lower() if isinstance(v, bool) else str(v)))
    return tuple(out)


def mac(where: str, raw: Any) -> str:
    s = string(where, raw).lower()
    if not _MAC.match(s) or int(s[:2], 16) & 1:
        raise ConfigError(f"{where}: {raw!r} is not a unicast MAC address like 52:54:00:4d:00:0b")
    return s
