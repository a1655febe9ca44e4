"""``tidehost fleet status`` as text: one line per host, then counts, locks, halts, problems."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from channels.fleet import shown

COLUMNS = ("HOST", "VERSION", "SLOT", "STATE", "TARGET", "GROUP", "LOCK", "REPORTED",
           "LAST ERROR")


def _ago(t: float, now: float) -> str:
    if not t:
        return "?"
    s = max(0, int(now - t))
    return f"{s}s ago" if s < 120 else (f"{s // 60}m ago" if s < 7200 else
                                         datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M"))


def _cut(text: str, n: int) -> str:
    text = shown(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def render(snap: dict[str, Any], now: float | None = None) -> str:
    now = snap.get("read_at", 0.0) if now is None else now
    rows = [COLUMNS]
    for h in snap["hosts"]:
        target = h["target_version"] if h["state"] not in ("idle", "rolled-back") else ""
        rows.append((_cut(h["id"], 32), _cut(h["version"], 16), h["slot"].upper() or "?",
                     _cut(h["state"] or "?", 18), _cut(target, 16), _cut(h["group"], 16),
                     "held" if h["lock_held"] else "", _ago(h["time"], now),
                     _cut(h["halted"] or h["last_error"], 60)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    if not snap["hosts"]:
        lines.append("(no host reports: hosts report once their agent runs with etcd-lock)")
    lines.append("")
    count = lambda d: ", ".join(f"{k} ×{v}" for k, v in d.items()) or "none"  # noqa: E731
    lines.append(f"versions: {count(snap['versions'])}")
    lines.append(f"states:   {count(snap['states'])}")
    for g, info in snap["groups"].items():
        holders = ", ".join(map(shown, info["lock_holders"])) or "nobody"
        size = f"{len(info['lock_holders'])}/{info['lock_max']}" if info["lock_max"] is not None \
            else None
        lock = f"lock {size} held by {holders}" if size else "no reboot lock yet"
        lines.append(f"group {shown(g)}: {info['hosts']} hosts, {lock}")
        for v, who in info["halted"].items():
            lines.append(f"  HALTED {v}: rolled back on {len(who)} hosts "
                         f"({', '.join(map(shown, who))}); halt_after {snap['halt_after']}")
    for r in snap["rolled_back"]:
        lines.append(f"rolled back: {shown(r['id'])} ({', '.join(r['versions'])}): "
                     f"{_cut(r['why'], 100) or 'no reason given'}")
    for p in snap["problems"]:
        lines.append(f"warning: {p}")
    return "\n".join(lines) + "\n"
