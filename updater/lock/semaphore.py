"""locksmith's counting semaphore, pure: ``semaphore`` free slots, ``max``, sorted ``holders``.

The JSON is locksmith's: ``{"semaphore": 1, "max": 1, "holders": ["id", ...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace

from updater.errors import LockBusy, LockError, LockExists, LockNotHeld


@dataclass(frozen=True)
class Semaphore:
    semaphore: int = 1
    max: int = 1
    holders: tuple[str, ...] = ()

    def lock(self, holder: str) -> Semaphore:
        """Raises: LockExists (already held by ``holder``), LockBusy (no slot left)."""
        if holder in self.holders:
            raise LockExists(f"{holder} already holds the lock")
        if self.semaphore <= 0:
            raise LockBusy(f"semaphore is at {self.semaphore} (max {self.max}, "
                           f"held by {', '.join(self.holders) or 'nobody'})")
        return replace(self, semaphore=self.semaphore - 1,
                       holders=tuple(sorted((*self.holders, holder))))

    def unlock(self, holder: str) -> Semaphore:
        """Raises: LockNotHeld (``holder`` does not hold the lock)."""
        if holder not in self.holders:
            raise LockNotHeld(f"{holder} does not hold the lock")
        return replace(self, semaphore=self.semaphore + 1,
                       holders=tuple(h for h in self.holders if h != holder))

    def set_max(self, new_max: int) -> Semaphore:
        if new_max < 0:
            raise LockError(f"max {new_max} is negative")
        delta = new_max - self.max
        return replace(self, max=new_max, semaphore=self.semaphore + delta)

    def without(self, gone: Iterable[str]) -> Semaphore:
        """Drop holders that are gone (their liveness key expired), freeing their slots."""
        s = self
        for h in set(gone) & set(self.holders):
            s = s.unlock(h)
        return s

    def to_json(self) -> str:
        return json.dumps({"semaphore": self.semaphore, "max": self.max,
                           "holders": list(self.holders)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Semaphore:
        try:
            d = json.loads(text)
            return cls(semaphore=int(d["semaphore"]), max=int(d["max"]),
                       holders=tuple(sorted(d.get("holders") or ())))
        except (ValueError, KeyError, TypeError):
            raise LockError("the semaphore in etcd is not locksmith JSON") from None
