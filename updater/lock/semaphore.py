"""locksmith's counting semaphore, pure: ``semaphore`` free slots, ``max``, sorted ``holders``.

The JSON is locksmith's: ``{"semaphore": 1, "max": 1, "holders": ["id", ...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from updater.errors import LockBusy, LockError, LockExists, LockNotHeld
from updater.fields import MAX_SLOTS, holder_id


def check_holder(holder: str) -> str:
    """``holder`` if it is a valid holder id: printable, 1 to 253 characters.

    Raises: LockError naming what is wrong (a newline id would spoof ``lock status``).
    """
    try:
        if not holder_id(holder):
            raise ValueError("empty holder id")
    except ValueError as e:
        raise LockError(f"holder id: {e}") from None
    return holder


def shown(holder: str) -> str:
    """A holder id as printed: ids written by other clients are escaped if not printable."""
    return holder if holder.isprintable() else repr(holder)


@dataclass(frozen=True)
class Semaphore:
    semaphore: int = 1
    max: int = 1
    holders: tuple[str, ...] = ()

    def lock(self, holder: str) -> Semaphore:
        """Raises: LockExists (already held by ``holder``), LockBusy (no slot left), LockError
        (not a valid holder id)."""
        check_holder(holder)
        if holder in self.holders:
            raise LockExists(f"{holder} already holds the lock")
        if self.semaphore <= 0:
            raise LockBusy(f"semaphore is at {self.semaphore} (max {self.max}, "
                           f"held by {', '.join(map(shown, self.holders)) or 'nobody'})")
        return replace(self, semaphore=self.semaphore - 1,
                       holders=tuple(sorted((*self.holders, holder))))

    def unlock(self, holder: str) -> Semaphore:
        """Raises: LockNotHeld (``holder`` does not hold the lock)."""
        if holder not in self.holders:
            raise LockNotHeld(f"{holder} does not hold the lock")
        return replace(self, semaphore=self.semaphore + 1,
                       holders=tuple(h for h in self.holders if h != holder))

    def set_max(self, new_max: int) -> Semaphore:
        if isinstance(new_max, bool) or not 0 <= new_max <= MAX_SLOTS:
            raise LockError(f"max {new_max} is not from 0 to {MAX_SLOTS}")
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


# --- who of the waiters tries (pure; the I/O is in ``updater.lock.queue``) -----------------


class Move(StrEnum):
    """What a waiter in a group's queue does next."""

    TRY = "try"  # first in the queue and a slot is free: take it
    WATCH_AHEAD = "watch-ahead"  # someone is ahead: wait until that one's queue key goes
    WATCH_SLOTS = "watch-slots"  # first, but every slot is held: wait until one is given back


def free_slots(sem: Semaphore, alive: Iterable[str]) -> int:
    """Free slots once the holders without a liveness key (``alive``: ids that have one) are
    counted as gone, as ``lock()`` will remove them."""
    live = set(alive)
    return sem.semaphore + sum(1 for h in sem.holders if h not in live)


def next_move(ahead: bool, free: int) -> Move:
    """Only the first waiter ever tries, and only when a slot is free: a release wakes one
    waiter, not all of them, and a hand-off costs one transaction."""
    if ahead:
        return Move.WATCH_AHEAD
    return Move.TRY if free > 0 else Move.WATCH_SLOTS
