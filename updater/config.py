"""The agent's configuration: /etc/tidehost/update.yaml over /usr/share/tidehost/update.yaml.

Every setting is described once in ``SETTINGS`` (dotted YAML key, parser, default, help); the
two files are merged key by key (the /etc file wins) and parsed once into the frozen
``AgentConfig``.  Errors are one line naming the file and the dotted field, unknown keys too.

Example /etc/tidehost/update.yaml (cloud-config writes one like it)::

    node: node1                    # lock holder id (default: /etc/machine-id)
    strategy: etcd-lock            # etcd-lock | fleetlock | reboot | off
    group: web
    max: 1                         # slots of the group, when this host creates it
    channel:
      url: https://updates.example.com/
      name: stable
    check: {interval: 1h, jitter: 10m}
    etcd:
      endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379]
      ca: /etc/tidehost/etcd-ca.pem
      lease: 15m
    window: {days: [sat, sun], start: "02:00", length: 3h, tz: Europe/Berlin}
    health:
      units: [docker.service]
      commands: ["/usr/bin/docker info"]
      deadline: 5m
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import time
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from updater.errors import ConfigError

DEFAULTS_FILE = Path("/usr/share/tidehost/update.yaml")
CONFIG_FILE = Path("/etc/tidehost/update.yaml")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_GROUP = re.compile(r"^[a-zA-Z0-9.-]+$")
_DURATION = re.compile(r"^(?:\d+[smhd])+$")
_PART = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Strategy(StrEnum):
    ETCD_LOCK = "etcd-lock"
    FLEETLOCK = "fleetlock"
    REBOOT = "reboot"
    OFF = "off"

    def reboots(self) -> bool:
        return self is not Strategy.OFF

    def needs_lock(self) -> bool:
        return self in (Strategy.ETCD_LOCK, Strategy.FLEETLOCK)


@dataclass(frozen=True)
class Window:
    """A weekly maintenance window: ``length`` seconds from ``start`` on each of ``days``."""

    days: tuple[int, ...]  # 0 = Monday
    start: time
    length: int
    tz: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)


@dataclass(frozen=True)
class AgentConfig:
    strategy: Strategy = Strategy.ETCD_LOCK
    node: str = ""  # the lock holder id; empty: /etc/machine-id
    group: str = "default"
    lock_max: int = 1  # slots of a group's semaphore when this host creates it
    channel_url: str = ""
    channel_name: str = "stable"
    channel_root: Path = Path("/usr/share/tidehost/channel-root.json")
    interval: int = 3600
    jitter: int = 600
    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    etcd_discovery_srv: str = ""
    lease: int = 900
    fleetlock_url: str = ""
    window: Window | None = None
    health_units: tuple[str, ...] = ()
    health_commands: tuple[tuple[str, ...], ...] = ()
    health_deadline: int = 300
    boot_tries: int | None = None  # None: the release's manifest decides
    state_dir: Path = Path("/var/lib/tidehost")
    metrics_file: Path | None = Path("/var/lib/prometheus/node-exporter/tidehost.prom")
    esp: Path = Path("/efi")
    sources: tuple[str, ...] = field(default=(), compare=False)

    @property
    def channel_configured(self) -> bool:
        return bool(self.channel_url)


# --- parsers: (value) -> typed value; raise ValueError with a short reason -------------------


def _str(v: Any) -> str:
    if v is None:
        return ""
    if not isinstance(v, str | int | float) or isinstance(v, bool):
        raise ValueError(f"{v!r} is not a string")
    return str(v)


def _path_or_none(v: Any) -> Path | None:
    s = _str(v)
    if s and not s.startswith("/"):
        raise ValueError(f"{s!r} is not an absolute path")
    return Path(s) if s else None


def _path(v: Any) -> Path:
    p = _path_or_none(v)
    if p is None:
        raise ValueError("must not be empty")
    return p


def _duration(v: Any) -> int:
    """Seconds: an integer, or ``30s``, ``15m``, ``2h``, ``1d``, ``1h30m`` (locksmith's)."""
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a duration")
    if isinstance(v, int):
        if v < 0:
            raise ValueError(f"{v} is negative")
        return v
    text = str(v).strip().replace(" ", "")
    if text.isdigit():
        return int(text)
    if not _DURATION.match(text):
        raise ValueError(f"{v!r} is not a duration (seconds, or like 30s, 15m, 1h30m, 1d)")
    return sum(int(n) * _UNITS[u] for n, u in _PART.findall(text))


def _positive(parse: Callable[[Any], int]) -> Callable[[Any], int]:
    def inner(v: Any) -> int:
        n = parse(v)
        if n <= 0:
            raise ValueError(f"{v!r} must be greater than zero")
        return n

    return inner


def _count(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{v!r} is not a whole number")
    return v


def _tries(v: Any) -> int | None:
    if v is None or v == "":
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 9:
        raise ValueError(f"{v!r} is not a whole number from 1 to 9")
    return v


def _strategy(v: Any) -> Strategy:
    try:
        return Strategy(str(v))
    except ValueError:
        raise ValueError(f"{v!r} is not one of {', '.join(s.value for s in Strategy)}") from None


def _group(v: Any) -> str:
    s = _str(v)
    if not _GROUP.match(s):
        raise ValueError(f"{s!r} does not match [a-zA-Z0-9.-]+")
    return s


def _url(v: Any) -> str:
    s = _str(v)
    if s and not re.match(r"^https?://[^/\s]+", s):
        raise ValueError(f"{s!r} is not an http(s) URL")
    return s


def _list(v: Any) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, str):
        return [x for x in (p.strip() for p in v.split(",")) if x]
    if not isinstance(v, list):
        raise ValueError(f"{v!r} is not a list")
    return v


def _urls(v: Any) -> tuple[str, ...]:
    out = tuple(_url(x) for x in _list(v))
    if not out:
        raise ValueError("needs at least one URL")
    return out


def _units(v: Any) -> tuple[str, ...]:
    return tuple(_str(x) for x in _list(v))


def _commands(v: Any) -> tuple[tuple[str, ...], ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise ValueError(f"{v!r} is not a list of commands")
    out = []
    for c in v:
        argv = shlex.split(c) if isinstance(c, str) else [_str(x) for x in _list(c)]
        if not argv:
            raise ValueError("an empty command")
        out.append(tuple(argv))
    return tuple(out)


def _days(v: Any) -> tuple[int, ...]:
    items = _list(v) or list(DAYS)
    out = set()
    for d in items:
        key = _str(d).strip().lower()[:3]
        if key not in DAYS:
            raise ValueError(f"{d!r} is not a day of the week (mon … sun)")
        out.add(DAYS.index(key))
    return tuple(sorted(out))


def _clock(v: Any) -> time:
    if isinstance(v, int) and not isinstance(v, bool):  # YAML 1.1 reads 02:00 as 120 (sexagesimal)
        v = f"{v // 60:02d}:{v % 60:02d}"
    m = re.match(r"^(\d{1,2}):(\d{2})$", _str(v).strip())
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ValueError(f"{v!r} is not a time of day HH:MM")
    return time(int(m[1]), int(m[2]))


def _tz(v: Any) -> str:
    s = _str(v) or "UTC"
    try:
        ZoneInfo(s)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{s!r} is not a known time zone") from None
    return s


@dataclass(frozen=True)
class Setting:
    key: str  # dotted YAML path
    dest: str  # AgentConfig field, or "window.*" for the window's parts
    parse: Callable[[Any], Any]
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("strategy", "strategy", _strategy, "etcd-lock, fleetlock, reboot or off"),
    Setting("node", "node", _str, "this host's lock holder id (default: machine id)"),
    Setting("group", "group", _group, "reboot-lock group"),
    Setting("max", "lock_max", _positive(_count), "slots of the group when it is created"),
    Setting("channel.url", "channel_url", _url, "base URL of the channel repository"),
    Setting("channel.name", "channel_name", _str, "alpha, beta or stable"),
    Setting("channel.root", "channel_root", _path, "trusted root.json of the repository"),
    Setting("check.interval", "interval", _positive(_duration), "time between checks"),
    Setting("check.jitter", "jitter", _duration, "random extra delay of each check"),
    Setting("etcd.endpoints", "etcd_endpoints", _urls, "etcd client URLs"),
    Setting("etcd.ca", "etcd_ca", _path_or_none, "CA bundle for etcd TLS"),
    Setting("etcd.cacert", "etcd_ca", _path_or_none, "the same as etcd.ca"),
    Setting("etcd.cert", "etcd_cert", _path_or_none, "client certificate for etcd"),
    Setting("etcd.key", "etcd_key", _path_or_none, "client key for etcd"),
    Setting("etcd.discovery_srv", "etcd_discovery_srv", _str,
            "DNS SRV domain of the cluster (informational: the endpoints are used)"),
    Setting("etcd.lease", "lease", _positive(_duration), "lifetime of a holder's liveness key"),
    Setting("fleetlock.url", "fleetlock_url", _url, "FleetLock server base URL"),
    Setting("window.days", "window.days", _days, "days of the maintenance window"),
    Setting("window.start", "window.start", _clock, "start time HH:MM"),
    Setting("window.length", "window.length", _positive(_duration), "length of the window"),
    Setting("window.tz", "window.tz", _tz, "time zone of the window"),
    Setting("health.units", "health_units", _units, "units that must be active"),
    Setting("health.commands", "health_commands", _commands, "commands that must succeed"),
    Setting("health.deadline", "health_deadline", _positive(_duration), "time allowed"),
    Setting("boot_tries", "boot_tries", _tries, "tries a new slot gets (default: manifest's)"),
    Setting("state_dir", "state_dir", _path, "where the agent keeps its state"),
    Setting("metrics_file", "metrics_file", _path_or_none, "Prometheus textfile ('' = off)"),
    Setting("esp", "esp", _path, "mount point of the ESP"),
)
_BY_KEY = {s.key: s for s in SETTINGS}
_SECTIONS = {s.key.split(".")[0] for s in SETTINGS if "." in s.key}


def _flatten(doc: Any, source: str) -> dict[str, tuple[Any, str]]:
    """Dotted key → (value, source file); unknown keys are errors."""
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of settings")
    out: dict[str, tuple[Any, str]] = {}
    for k, v in doc.items():
        k = str(k)
        if k in _SECTIONS:
            if v is None:
                continue
            if not isinstance(v, Mapping):
                raise ConfigError(f"{source}: field '{k}': must be a mapping")
            for sub, sv in v.items():
                dotted = f"{k}.{sub}"
                if dotted not in _BY_KEY:
                    raise ConfigError(f"{source}: field '{dotted}': unknown setting")
                out[dotted] = (sv, source)
        elif k in _BY_KEY:
            out[k] = (v, source)
        else:
            raise ConfigError(f"{source}: field '{k}': unknown setting")
    return out


def _read(path: Path) -> dict[str, tuple[Any, str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return _flatten(doc, str(path))


def parse(values: Mapping[str, tuple[Any, str]], sources: tuple[str, ...] = ()) -> AgentConfig:
    """Build the typed config from dotted keys (value, source)."""
    kwargs: dict[str, Any] = {}
    win: dict[str, Any] = {}
    for key, (raw, source) in values.items():
        s = _BY_KEY[key]
        try:
            val = s.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{source}: field '{key}': {e}") from None
        if s.dest.startswith("window."):
            win[s.dest.split(".", 1)[1]] = val
        else:
            kwargs[s.dest] = val
    if win:
        if "start" not in win or "length" not in win:
            src = next(src for k, (_, src) in values.items() if k.startswith("window."))
            raise ConfigError(f"{src}: field 'window': needs both 'start' and 'length'")
        kwargs["window"] = Window(
            days=win.get("days", tuple(range(7))),
            start=win["start"],
            length=win["length"],
            tz=win.get("tz", "UTC"),
        )
    cfg = AgentConfig(**kwargs, sources=sources)
    if cfg.strategy is Strategy.FLEETLOCK and not cfg.fleetlock_url:
        raise ConfigError(
            f"{sources[-1] if sources else 'config'}: field 'fleetlock.url': "
            "required with strategy fleetlock"
        )
    return cfg


def load(config: Path = CONFIG_FILE, defaults: Path = DEFAULTS_FILE) -> AgentConfig:
    """Read the defaults, then the operator's file over them.

    Raises:
        ConfigError: one line naming the file and field.
    """
    merged = _read(defaults)
    merged.update(_read(config))
    return parse(merged, sources=(str(defaults), str(config)))
