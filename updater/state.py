"""The agent's persisted state machine.

Phases (every transition is checked against ``TRANSITIONS`` and logged)::

    idle → checking → downloading → verifying → writing → staged → waiting-for-window
         → waiting-for-lock → rebooting → (new boot) confirming → idle
    confirming → rebooting (health failed, boot marked bad) → (old slot) rolled-back
    any working phase → error (retried with backoff)

The state is one JSON file, written atomically (temp file in the same directory, fsync,
``os.replace``, fsync of the directory), so a power cut leaves the old or the new state.
``bad_versions`` holds every version that rolled back: it is never offered again;
``bad_releases`` the fingerprints of signed bytes that failed verification: those bytes are
not downloaded again (the same version with other bytes is).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from updater.errors import StateError

log = logging.getLogger(__name__)
STATE_FILE = "state.json"


class Phase(StrEnum):
    IDLE = "idle"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    WRITING = "writing"
    STAGED = "staged"
    WAITING_FOR_WINDOW = "waiting-for-window"
    WAITING_FOR_LOCK = "waiting-for-lock"
    REBOOTING = "rebooting"
    CONFIRMING = "confirming"
    ROLLED_BACK = "rolled-back"
    ERROR = "error"

    def is_resting(self) -> bool:
        """Nothing in flight: a check may start from here."""
        return self in (Phase.IDLE, Phase.ROLLED_BACK, Phase.ERROR)

    def is_transient(self) -> bool:
        """Work that an interruption (crash, restart) abandons; the slot is left unbootable."""
        return self in (Phase.CHECKING, Phase.DOWNLOADING, Phase.VERIFYING, Phase.WRITING)


_P = Phase
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    _P.IDLE: frozenset({_P.CHECKING, _P.STAGED}),
    _P.CHECKING: frozenset({_P.IDLE, _P.DOWNLOADING, _P.STAGED, _P.ERROR}),
    _P.DOWNLOADING: frozenset({_P.VERIFYING, _P.ERROR}),
    _P.VERIFYING: frozenset({_P.WRITING, _P.ERROR}),
    _P.WRITING: frozenset({_P.STAGED, _P.ERROR}),
    # staged → confirming/rolled-back: someone else rebooted the host (strategy off)
    _P.STAGED: frozenset({_P.WAITING_FOR_WINDOW, _P.CHECKING, _P.IDLE, _P.CONFIRMING,
                          _P.ROLLED_BACK}),
    _P.WAITING_FOR_WINDOW: frozenset({_P.WAITING_FOR_LOCK, _P.IDLE, _P.ERROR, _P.CONFIRMING,
                                      _P.ROLLED_BACK}),
    # waiting-for-lock → staged: the version halted in the group (the agent checks again)
    _P.WAITING_FOR_LOCK: frozenset({_P.REBOOTING, _P.WAITING_FOR_WINDOW, _P.IDLE, _P.ERROR,
                                    _P.CONFIRMING, _P.ROLLED_BACK, _P.STAGED}),
    _P.REBOOTING: frozenset({_P.CONFIRMING, _P.ROLLED_BACK, _P.WAITING_FOR_LOCK, _P.ERROR}),
    _P.CONFIRMING: frozenset({_P.IDLE, _P.REBOOTING, _P.ROLLED_BACK}),
    _P.ROLLED_BACK: frozenset({_P.CHECKING, _P.IDLE, _P.STAGED}),
    _P.ERROR: frozenset({_P.CHECKING, _P.IDLE, _P.STAGED}),
}


@dataclass(frozen=True)
class State:
    phase: Phase = Phase.IDLE
    since: float = 0.0  # when the phase was entered (epoch seconds)
    target_version: str = ""  # the version being staged/applied
    target_slot: str = ""  # "a" or "b"
    target_roothash: str = ""
    reboot_boot_id: str = ""  # boot id when the slot was staged / the reboot was requested
    lock_held: bool = False
    release_pending: bool = False  # at start: give back a lock we may hold, once healthy
    last_check: float = 0.0
    next_check: float = 0.0
    last_error: str = ""
    last_error_time: float = 0.0
    failures: int = 0  # consecutive failures, for backoff
    last_result: str = ""  # e.g. "updated to 1.2.0", "rolled back from 1.3.0"
    attempted_versions: tuple[str, ...] = ()
    bad_versions: tuple[str, ...] = ()
    bad_releases: tuple[str, ...] = ()  # ``version@sha256`` of bytes that failed verification
    reboots: int = 0
    halted: str = ""  # why the staged version is not taken (the group's rollbacks), if so
    drained: bool = False  # work was moved off this node; move it back after the health gate
    fetched_bytes: int = 0  # the last download: bytes fetched over the network
    reused_bytes: int = 0  # ... and bytes taken from what the host had (delta updates)
    last_download: tuple[str, ...] = ()  # ... one line per file: delta, rebuilt or full

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["phase"] = self.phase.value
        d["attempted_versions"] = list(self.attempted_versions)
        d["bad_versions"] = list(self.bad_versions)
        d["bad_releases"] = list(self.bad_releases)
        d["last_download"] = list(self.last_download)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> State:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        try:
            kw["phase"] = Phase(kw.get("phase", "idle"))
            for k in ("attempted_versions", "bad_versions", "bad_releases", "last_download"):
                kw[k] = tuple(str(x) for x in kw.get(k, ()))
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise StateError(f"state file: {e}") from None

    def to(self, phase: Phase, now: float, **changes: Any) -> State:
        """The state after a guarded transition to ``phase``.

        Raises:
            StateError: the state machine has no edge from the current phase to ``phase``.
        """
        if phase is not self.phase and phase not in TRANSITIONS[self.phase]:
            raise StateError(f"transition {self.phase} → {phase} is not allowed")
        if phase is not self.phase:
            log.info("state: %s → %s", self.phase, phase)
        return replace(self, phase=phase, since=now, **changes)

    def fail(self, error: str, now: float) -> State:
        """Enter (or stay in) the error phase after ``error``; the slot and lock are kept."""
        phase = Phase.ERROR if Phase.ERROR in TRANSITIONS[self.phase] else self.phase
        return self.to(
            phase, now, last_error=error, last_error_time=now, failures=self.failures + 1
        )

    def mark_bad(self, version: str) -> State:
        if not version or version in self.bad_versions:
            return self
        return replace(self, bad_versions=(*self.bad_versions, version))

    def mark_bad_release(self, fingerprint: str) -> State:
        """Remember bytes that failed verification (the last 20)."""
        if fingerprint in self.bad_releases:
            return self
        return replace(self, bad_releases=(*self.bad_releases, fingerprint)[-20:])

    def mark_attempted(self, version: str) -> State:
        if not version or version in self.attempted_versions:
            return self
        return replace(self, attempted_versions=(*self.attempted_versions, version)[-20:])


class StateStore:
    """Loads and atomically saves ``State`` in ``directory/state.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE

    def load(self) -> State:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return State()
        except OSError as e:
            raise StateError(f"{self.path}: cannot read: {e.strerror}") from None
        try:
            d = json.loads(raw)
        except json.JSONDecodeError:
            raise StateError(f"{self.path}: not valid JSON") from None
        if not isinstance(d, dict):
            raise StateError(f"{self.path}: not a JSON object")
        return State.from_dict(d)

    def quarantine(self) -> Path | None:
        """Move an unreadable state file aside (kept for a human) so the agent can start."""
        if not self.path.exists():
            return None
        dest = self.path.with_name(f"{STATE_FILE}.corrupt")
        os.replace(self.path, dest)
        return dest

    def save(self, state: State) -> None:
        atomic_write(self.path, json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n")


def atomic_write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    """Write ``path`` so that readers and power cuts see the old or the new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some filesystems (vfat on older kernels) refuse fsync on directories
    finally:
        os.close(dfd)
