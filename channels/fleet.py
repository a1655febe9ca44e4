"""The fleet's reports in etcd and the rules read from them. Pure, no I/O.

Each host writes one report, on a lease, into the etcd its reboot lock uses::

    tidehost/fleet/hosts/<id>                       the report (JSON below)
    tidehost/fleet/rollbacks/<group>/<version>/<id> one empty key per version that host
                                                    rolled back (same lease): the halt rule
                                                    reads these, not every report

``<id>``, ``<group>`` and ``<version>`` are URL-escaped (``quote(x, safe="")``).  A report::

    {"format": 1, "id": "node1", "version": "1.2.0", "slot": "a", "channel": "stable",
     "group": "default", "state": "idle", "target_version": "", "bad_versions": ["1.3.0"],
     "last_error": "", "last_result": "updated to 1.2.0", "lock_held": false,
     "halted": "", "boot_id": "...", "time": 1800000000.0}

A reader keeps what it knows of a newer agent's report (a higher ``format``, extra fields)
and says so; a key it cannot read is skipped and named.  The halt rule: a version that at
least ``halt_after`` hosts of a group rolled back is halted for the whole group (0: never).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any
from urllib.parse import quote, unquote

FORMAT = 1
ROOT = "tidehost/fleet"
HOSTS = f"{ROOT}/hosts/"
ROLLBACKS = f"{ROOT}/rollbacks/"
LOCK_ROOT = "tidehost/rebootlock"  # the reboot lock's keys (updater.lock.etcd)
LOCK_GROUPS = f"{LOCK_ROOT}/groups/"
HALT_AFTER = 2


def esc(part: str) -> str:
    return quote(part, safe="")


def host_key(host_id: str) -> str:
    return HOSTS + esc(host_id)


def rollbacks_prefix(group: str) -> str:
    return f"{ROLLBACKS}{esc(group)}/"


def rollback_key(group: str, version: str, host_id: str) -> str:
    return f"{rollbacks_prefix(group)}{esc(version)}/{esc(host_id)}"


def shown(text: str) -> str:
    """An id as printed: escaped (one line) when it holds anything not printable."""
    return text if text.isprintable() else repr(text)[1:-1]


@dataclass(frozen=True)
class HostReport:
    id: str
    version: str
    slot: str = ""
    channel: str = ""
    group: str = "default"
    state: str = ""
    target_version: str = ""
    bad_versions: tuple[str, ...] = ()
    last_error: str = ""
    last_result: str = ""
    lock_held: bool = False
    halted: str = ""
    boot_id: str = ""
    time: float = 0.0
    format: int = FORMAT
    unknown: tuple[str, ...] = field(default=(), compare=False)  # a newer agent's fields

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("unknown")
        d["bad_versions"] = list(self.bad_versions)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> HostReport:
        """Raises: ValueError naming what is wrong (not JSON, a field of the wrong type)."""
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ValueError("not JSON") from None
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HostReport:
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "unknown" or f.name not in d:
                continue
            kw[f.name] = _field(f.name, d[f.name])
        for need in ("id", "version"):
            if not kw.get(need):
                raise ValueError(f"field {need!r} missing")
        known = {f.name for f in fields(cls)}
        return cls(**kw, unknown=tuple(sorted(str(k) for k in d if k not in known)))


_TEXT = {"id", "version", "slot", "channel", "group", "state", "target_version", "last_error",
         "last_result", "halted", "boot_id"}


def _field(name: str, v: Any) -> Any:
    if name in _TEXT:
        if not isinstance(v, str):
            raise ValueError(f"field {name!r} is not a string")
        return v[:2000]
    if name == "bad_versions":
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ValueError("field 'bad_versions' is not a list of strings")
        return tuple(v[:100])
    if name == "lock_held":
        if not isinstance(v, bool):
            raise ValueError("field 'lock_held' is not true or false")
        return v
    if name == "time":
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError("field 'time' is not a number")
        return float(v)
    if name == "format":
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError("field 'format' is not a positive integer")
        return v
    return v


@dataclass(frozen=True)
class Problem:
    """A key that was skipped, or a report read with a caveat."""

    key: str
    message: str
    skipped: bool = True

    def __str__(self) -> str:
        return f"{shown(self.key)}: {self.message}" + ("; skipped" if self.skipped else "")


def parse_reports(kvs: Iterable[tuple[str, bytes]]) -> tuple[list[HostReport], list[Problem]]:
    """The reports under ``HOSTS`` (``(key, value)`` pairs), sorted by id, and what was
    wrong with the rest.  A report's id is its key's; a body naming another is flagged."""
    reports: list[HostReport] = []
    problems: list[Problem] = []
    for key, value in kvs:
        rest = key[len(HOSTS):] if key.startswith(HOSTS) else ""
        if not rest or "/" in rest:
            problems.append(Problem(key, "not a host report key (tidehost/fleet/hosts/<id>)"))
            continue
        host_id = unquote(rest, errors="strict") if _decodes(rest) else ""
        if not host_id:
            problems.append(Problem(key, "the host id in the key is not URL-escaped UTF-8"))
            continue
        try:
            r = HostReport.from_json(value)
        except ValueError as e:
            problems.append(Problem(key, f"not a host report: {e}"))
            continue
        if r.id != host_id:
            problems.append(Problem(key, f"report names host {shown(r.id)!r}: shown as "
                                         f"{shown(host_id)!r}", skipped=False))
            r = HostReport(**{**r.__dict__, "id": host_id})
        if r.format > FORMAT or r.unknown:
            extra = f" (extra fields: {', '.join(r.unknown[:5])})" if r.unknown else ""
            problems.append(Problem(key, f"from a newer agent, report format {r.format}"
                                         f"{extra}: showing what this version knows",
                                    skipped=False))
        reports.append(r)
    reports.sort(key=lambda r: r.id)
    return reports, problems


def _decodes(text: str) -> bool:
    try:
        text.encode("utf-8")
        unquote(text, errors="strict")
    except UnicodeError:
        return False
    return True


# --- the halt rule ---------------------------------------------------------------------------


def rollbacks_of(reports: Iterable[HostReport]) -> dict[str, dict[str, set[str]]]:
    """group → version → the hosts of that group that rolled it back."""
    out: dict[str, dict[str, set[str]]] = {}
    for r in reports:
        for v in r.bad_versions:
            out.setdefault(r.group, {}).setdefault(v, set()).add(r.id)
    return out


def parse_rollback_keys(keys: Iterable[str], group: str) -> dict[str, set[str]]:
    """version → hosts, from the keys under ``rollbacks_prefix(group)``; others ignored."""
    prefix = rollbacks_prefix(group)
    out: dict[str, set[str]] = {}
    for k in keys:
        parts = k[len(prefix):].split("/") if k.startswith(prefix) else []
        if len(parts) == 2 and all(parts) and all(map(_decodes, parts)):
            out.setdefault(unquote(parts[0]), set()).add(unquote(parts[1]))
    return out


def halted(rollbacks: Mapping[str, Collection[str]], halt_after: int) -> dict[str, list[str]]:
    """The versions ``halt_after`` or more hosts rolled back (0: none), with those hosts."""
    if halt_after <= 0:
        return {}
    return {v: sorted(hosts) for v, hosts in sorted(rollbacks.items())
            if len(hosts) >= halt_after}


def halt_reason(version: str, hosts: Collection[str], group: str, halt_after: int) -> str:
    names = ", ".join(shown(h) for h in sorted(hosts)[:5]) + (", …" if len(hosts) > 5 else "")
    return (f"{version} halted: rolled back on {len(hosts)} hosts of group {group} ({names}); "
            f"halt_after is {halt_after}")


# --- the fleet at a glance ---------------------------------------------------------------------


def parse_locks(kvs: Iterable[tuple[str, bytes]]) -> tuple[dict[str, dict[str, Any]],
                                                            list[Problem]]:
    """group → {"max", "holders"} from the semaphores under ``LOCK_GROUPS``."""
    out: dict[str, dict[str, Any]] = {}
    problems = []
    for key, value in kvs:
        parts = key[len(LOCK_GROUPS):].split("/") if key.startswith(LOCK_GROUPS) else []
        if len(parts) != 2 or parts[1] != "semaphore":
            continue  # holders' liveness keys, waiters
        try:
            d = json.loads(value)
            holders = [str(h) for h in d.get("holders") or []]
            out[unquote(parts[0])] = {"max": int(d["max"]), "holders": sorted(holders)}
        except (ValueError, KeyError, TypeError, AttributeError):
            problems.append(Problem(key, "not a locksmith semaphore"))
    return out, problems


def summarize(reports: list[HostReport], locks: Mapping[str, Mapping[str, Any]],
              problems: Iterable[Problem] = (), *, halt_after: int = HALT_AFTER,
              group: str | None = None) -> dict[str, Any]:
    """What ``fleet status --json`` prints: hosts, counts per version and state, each
    group's lock holders and halted versions, hosts that rolled back and why, problems."""
    if group is not None:
        reports = [r for r in reports if r.group == group]
    groups: dict[str, dict[str, Any]] = {}
    rb = rollbacks_of(reports)
    for g in sorted({r.group for r in reports} | ({group} if group else set(locks))):
        lock = locks.get(g, {})
        groups[g] = {"hosts": sum(1 for r in reports if r.group == g),
                     "lock_max": lock.get("max"), "lock_holders": list(lock.get("holders", [])),
                     "halted": halted(rb.get(g, {}), halt_after)}
    rolled = [{"id": r.id, "group": r.group, "versions": list(r.bad_versions),
               "why": r.last_error or r.last_result} for r in reports if r.bad_versions]
    return {
        "hosts": [r.to_dict() for r in reports],
        "versions": dict(sorted(Counter(r.version for r in reports).items())),
        "states": dict(sorted(Counter(r.state or "?" for r in reports).items())),
        "groups": groups,
        "rolled_back": rolled,
        "halt_after": halt_after,
        "problems": [str(p) for p in problems],
    }
