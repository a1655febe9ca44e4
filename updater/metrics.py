"""Prometheus textfile (node_exporter textfile collector format), written atomically."""

from __future__ import annotations

from pathlib import Path

from updater.state import Phase, State, atomic_write


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(state: State, *, version: str, slot: str, channel: str) -> str:
    lines = [
        "# HELP tidehost_update_info The running release.",
        "# TYPE tidehost_update_info gauge",
        f'tidehost_update_info{{version="{_esc(version)}",slot="{_esc(slot)}",'
        f'channel="{_esc(channel)}"}} 1',
        "# HELP tidehost_update_state The agent's state (1 for the current one).",
        "# TYPE tidehost_update_state gauge",
    ]
    lines += [f'tidehost_update_state{{state="{p.value}"}} {int(p is state.phase)}'
              for p in Phase]
    lines += [
        "# HELP tidehost_update_last_check_timestamp_seconds Last completed channel check.",
        "# TYPE tidehost_update_last_check_timestamp_seconds gauge",
        f"tidehost_update_last_check_timestamp_seconds {state.last_check:.0f}",
        "# HELP tidehost_update_last_error_timestamp_seconds Time of the last error (0: none).",
        "# TYPE tidehost_update_last_error_timestamp_seconds gauge",
        f"tidehost_update_last_error_timestamp_seconds {state.last_error_time:.0f}",
        "# HELP tidehost_update_last_error_info The last error's text.",
        "# TYPE tidehost_update_last_error_info gauge",
        f'tidehost_update_last_error_info{{error="{_esc(state.last_error[:200])}"}} '
        f"{int(bool(state.last_error))}",
        "# HELP tidehost_update_lock_held 1 while this host holds the reboot lock.",
        "# TYPE tidehost_update_lock_held gauge",
        f"tidehost_update_lock_held {int(state.lock_held)}",
        "# HELP tidehost_update_reboots_total Reboots the agent requested.",
        "# TYPE tidehost_update_reboots_total counter",
        f"tidehost_update_reboots_total {state.reboots}",
        "# HELP tidehost_update_bad_versions Versions that rolled back here.",
        "# TYPE tidehost_update_bad_versions gauge",
        f"tidehost_update_bad_versions {len(state.bad_versions)}",
    ]
    return "\n".join(lines) + "\n"


def write(path: Path | None, text: str) -> None:
    if path is not None:
        atomic_write(path, text)
