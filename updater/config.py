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
      user: node1                  # with etcd's auth on: a token from this user's password
      password_file: /etc/tidehost/etcd/password
      lease: 15m
    window: {days: [sat, sun], start: "02:00", length: 3h, tz: Europe/Berlin}
    health:
      units: [docker.service]
      commands: ["/usr/bin/docker info"]
      deadline: 5m
    deadline: {download: 2h, write: 1h}   # per step kind; see ``Deadlines``
    halt_after: 2                  # a version 2 hosts of the group rolled back halts (0: off)
    drain: {swarm: true, timeout: 5m, on_timeout: reboot,
            pre_reboot: [], post_health: []}

``strategy: off`` may be written unquoted (YAML reads it as false).  ``window.days`` takes
systemd's calendar weekdays: ``mon``/``monday``, ranges ``mon-fri`` or ``mon..fri``, lists
``[sat, sun]`` or ``"sat,sun"``; ``window.length`` is 1 minute to 7 days; every duration is
at most 366 days; ``etcd.lease`` 5 s to 7 days; ``max`` 1 to 10000; ``node`` a printable id
of at most 253 characters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import time
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from channels.bundle import CHANNELS
from updater import fields as fv
from updater.errors import ConfigError

DEFAULTS_FILE = Path("/usr/share/tidehost/update.yaml")
CONFIG_FILE = Path("/etc/tidehost/update.yaml")
LEASE = fv.bounded(fv.duration, 5, 7 * fv.DAY, fv.human)  # etcd.lease and lock --lease
DEADLINE = fv.bounded(fv.duration, fv.MINUTE, 2 * fv.DAY, fv.human)
WINDOW_LENGTH = fv.bounded(fv.duration, fv.MINUTE, 7 * fv.DAY, fv.human)


class OnTimeout(StrEnum):
    """What a drain that passed ``drain.timeout`` leads to."""

    REBOOT = "reboot"  # log it and reboot anyway
    WAIT = "wait"  # keep the lock and try the drain again


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
class Deadlines:
    """The longest a daemon step of each kind may run before the daemon ends it (seconds).

    check: TUF metadata; download: the whole bundle (each fetch has its own deadline too);
    verify: hashing it; write: writing and checking the slot; lock: a reboot-lock call
    (take, renew, release); reboot: asking systemd; confirm: the health gate (never less
    than health.deadline plus a minute).
    """

    check: int = 600
    download: int = 7200
    verify: int = 1800
    write: int = 3600
    lock: int = 600
    reboot: int = 600
    confirm: int = 1800


@dataclass(frozen=True)
class Drain:
    """Moving work off the node once it holds the lock, and back after the health gate.

    swarm: ``docker node update --availability drain`` this node and wait until its tasks
    run elsewhere (a manager's own command; a worker logs that it cannot); pre_reboot:
    commands run then (``kubectl drain``, a load balancer); post_health: commands run after
    the health gate, before the lock is released (``kubectl uncordon``).
    """

    swarm: bool = False
    timeout: int = 300
    on_timeout: OnTimeout = OnTimeout.REBOOT
    pre_reboot: tuple[tuple[str, ...], ...] = ()
    post_health: tuple[tuple[str, ...], ...] = ()

    @property
    def wanted(self) -> bool:
        return self.swarm or bool(self.pre_reboot or self.post_health)


DEADLINES = MappingProxyType({k.name: k.default for k in fields(Deadlines)})


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
    etcd_user: str = ""  # etcd's authentication: this host's user (cloud-config: the node)
    etcd_password_file: Path | None = None
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
    deadlines: Deadlines = Deadlines()
    halt_after: int = 2  # hosts of the group that rolled a version back before it halts
    drain: Drain = Drain()
    sources: tuple[str, ...] = field(default=(), compare=False)

    @property
    def channel_configured(self) -> bool:
        return bool(self.channel_url)


def _strategy(v: Any) -> Strategy:
    if v is False:  # ``strategy: off`` unquoted is YAML 1.1's false: it means off
        return Strategy.OFF
    try:
        return Strategy(v if isinstance(v, str) else repr(v))
    except ValueError:
        raise ValueError(f"{v!r} is not one of {', '.join(s.value for s in Strategy)}") from None


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{v!r} is not true or false")
    return v


def _on_timeout(v: Any) -> OnTimeout:
    try:
        return OnTimeout(fv.text(v))
    except ValueError:
        raise ValueError(f"{v!r} is not one of reboot, wait") from None


def _channel(v: Any) -> str:
    s = fv.text(v)
    if s not in CHANNELS:
        raise ValueError(f"{s!r} is not one of {', '.join(CHANNELS)}")
    return s


@dataclass(frozen=True)
class Setting:
    key: str  # dotted YAML path
    dest: str  # AgentConfig field, or "window.*"/"deadlines.*"/"drain.*" for their parts
    parse: Callable[[Any], Any]
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("strategy", "strategy", _strategy, "etcd-lock, fleetlock, reboot or off"),
    Setting("node", "node", fv.holder_id, "this host's lock holder id (default: machine id)"),
    Setting("group", "group", fv.group, "reboot-lock group"),
    Setting("max", "lock_max", fv.bounded(fv.count, 1, fv.MAX_SLOTS),
            "slots of the group when it is created"),
    Setting("channel.url", "channel_url", fv.url, "base URL of the channel repository"),
    Setting("channel.name", "channel_name", _channel, "alpha, beta or stable"),
    Setting("channel.root", "channel_root", fv.path, "trusted root.json of the repository"),
    Setting("check.interval", "interval", fv.positive(fv.duration), "time between checks"),
    Setting("check.jitter", "jitter", fv.duration, "random extra delay of each check"),
    Setting("etcd.endpoints", "etcd_endpoints", fv.urls, "etcd client URLs"),
    Setting("etcd.ca", "etcd_ca", fv.path_or_none, "CA bundle for etcd TLS"),
    Setting("etcd.cacert", "etcd_ca", fv.path_or_none, "the same as etcd.ca"),
    Setting("etcd.cert", "etcd_cert", fv.path_or_none, "client certificate for etcd"),
    Setting("etcd.key", "etcd_key", fv.path_or_none, "client key for etcd"),
    Setting("etcd.user", "etcd_user", fv.text, "etcd user (with auth on; its certificate: no CN)"),
    Setting("etcd.password_file", "etcd_password_file", fv.path_or_none,
            "file holding the etcd user's password (0600)"),
    Setting("etcd.discovery_srv", "etcd_discovery_srv", fv.text,
            "DNS SRV domain of the cluster (informational: the endpoints are used)"),
    Setting("etcd.lease", "lease", LEASE, "lifetime of a holder's liveness key"),
    Setting("fleetlock.url", "fleetlock_url", fv.url, "FleetLock server base URL"),
    Setting("window.days", "window.days", fv.days, "days of the maintenance window"),
    Setting("window.start", "window.start", fv.clock, "start time HH:MM"),
    Setting("window.length", "window.length", WINDOW_LENGTH,
            "length of the window (1 minute to 7 days)"),
    Setting("window.tz", "window.tz", fv.tz, "time zone of the window"),
    Setting("health.units", "health_units", fv.units, "units that must be active"),
    Setting("health.commands", "health_commands", fv.commands, "commands that must succeed"),
    Setting("health.deadline", "health_deadline", fv.positive(fv.duration), "time allowed"),
    Setting("boot_tries", "boot_tries", fv.tries, "tries a new slot gets (default: manifest's)"),
    Setting("state_dir", "state_dir", fv.path, "where the agent keeps its state"),
    Setting("metrics_file", "metrics_file", fv.path_or_none, "Prometheus textfile ('' = off)"),
    Setting("esp", "esp", fv.path, "mount point of the ESP"),
    Setting("halt_after", "halt_after", fv.bounded(fv.count, 0, fv.MAX_SLOTS),
            "hosts of the group that rolled a version back before the rest stop taking it "
            "(0: never)"),
    Setting("drain.swarm", "drain.swarm", _bool, "drain this swarm node before rebooting"),
    Setting("drain.timeout", "drain.timeout", fv.bounded(fv.duration, 1, 2 * fv.DAY, fv.human),
            "how long the drain may take"),
    Setting("drain.on_timeout", "drain.on_timeout", _on_timeout,
            "reboot (log it and go on) or wait (keep the lock, drain again)"),
    Setting("drain.pre_reboot", "drain.pre_reboot", fv.commands,
            "commands run once the lock is held, before the reboot"),
    Setting("drain.post_health", "drain.post_health", fv.commands,
            "commands run after the health gate, before the lock is released"),
    *(Setting(f"deadline.{k}", f"deadlines.{k}", DEADLINE,
              f"longest {k} step before the daemon stops it (default {fv.human(v)})")
      for k, v in DEADLINES.items()),
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
    deadlines: dict[str, int] = {}
    drain: dict[str, Any] = {}
    for key, (raw, source) in values.items():
        s = _BY_KEY[key]
        try:
            val = s.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{source}: field '{key}': {e}") from None
        if s.dest.startswith("window."):
            win[s.dest.split(".", 1)[1]] = val
        elif s.dest.startswith("deadlines."):
            deadlines[s.dest.split(".", 1)[1]] = val
        elif s.dest.startswith("drain."):
            drain[s.dest.split(".", 1)[1]] = val
        else:
            kwargs[s.dest] = val
    if deadlines:
        kwargs["deadlines"] = Deadlines(**deadlines)
    if drain:
        kwargs["drain"] = Drain(**drain)
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
    if cfg.etcd_user and cfg.etcd_password_file is None:
        raise ConfigError(f"{sources[-1] if sources else 'config'}: field "
                          "'etcd.password_file': required with etcd.user")
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
