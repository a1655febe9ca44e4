"""The agent's status as the lab sees it: ``tidehost-update status --json``, parsed once.

The lab never imports the agent (``updater``); it reads what the agent prints on a host.
``AgentStatus`` is a frozen value with the fields the lab decides on, and it still reads
as the agent's whole document (``st["reboots"]``), for reports and tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from imagebuild.core.errors import VMError
from imagebuild.lab.vm import VM


class Phase(StrEnum):
    """The agent's states (``updater.state.Phase``, as its status document spells them)."""

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


@dataclass(frozen=True)
class AgentStatus(Mapping[str, Any]):
    version: str
    slot: str
    phase: Phase
    target_version: str = ""
    last_error: str = ""
    lock_held: bool = False
    reboots: int = 0
    bad_versions: tuple[str, ...] = ()
    document: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, doc: str | Mapping[str, Any]) -> AgentStatus:
        """From the agent's JSON text or document.

        Raises:
            ValueError: not JSON, not an object, or a state the agent does not have.
        """
        if isinstance(doc, AgentStatus):
            return doc
        raw = json.loads(doc) if isinstance(doc, str) else doc
        if not isinstance(raw, Mapping):
            raise ValueError("the agent's status is not a JSON object")
        return cls(
            version=str(raw.get("version") or ""),
            slot=str(raw.get("slot") or ""),
            phase=Phase(raw.get("state") or "idle"),
            target_version=str(raw.get("target_version") or ""),
            last_error=str(raw.get("last_error") or ""),
            lock_held=bool(raw.get("lock_held")),
            reboots=int(raw.get("reboots") or 0),
            bad_versions=tuple(map(str, raw.get("bad_versions") or ())),
            document=MappingProxyType(dict(raw)),
        )

    @property
    def step(self) -> tuple[str, str, Phase, str]:
        """What a watcher reports when it changes: version, slot, state, target."""
        return self.version, self.slot, self.phase, self.target_version

    def line(self, host: str = "") -> str:
        target = f" -> {self.target_version}" if self.target_version else ""
        error = f", error: {self.last_error}" if self.last_error else ""
        who = f"{host}: " if host else ""
        return (f"  [{time.strftime('%H:%M:%S')}] {who}version {self.version} on slot "
                f"{self.slot}, state {self.phase}{target}{error}")  # fmt: skip

    def __getitem__(self, key: str) -> Any:
        return self.document[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.document)

    def __len__(self) -> int:
        return len(self.document)


def status(vm: VM) -> AgentStatus | None:
    """The host's agent status, or None while it cannot be reached (booting, rebooting)."""
    try:
        return AgentStatus.parse(vm.ssh("tidehost-update status --json", timeout=60))
    except (VMError, ValueError):
        return None


def print_status(st: AgentStatus, host: str = "") -> None:
    print(st.line(host), flush=True)
