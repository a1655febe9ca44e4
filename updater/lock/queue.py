"""Waiting for the reboot lock on watches, in a queue: waiting costs etcd nothing, a release
wakes one waiter, a hand-off costs one transaction.

A host that finds every slot taken puts its queue key, bound to a lease of its own::

    tidehost/rebootlock/groups/G/waiters/<id>    {"holder": id, "host": fingerprint}

Its create revision is its place.  A waiter with someone ahead (the queue key with the next
lower create revision) watches only that key and sleeps until it goes (that waiter took a
slot, gave up or died: its lease ran out).  The first waiter watches the semaphore and the
holders' liveness keys, and tries when a slot is free (``semaphore.next_move``).  Taking the
lock deletes the taker's queue key in the same transaction, which wakes the next one.  Each
wait ends after its time (``wait_turn(timeout)``): the caller re-reads then, a long jittered
safety net.  A host that ahead of others gives up waiting removes its key (``leave_queue``);
one that dies blocks the queue until its queue lease ends (twice the wait, plus a minute).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from channels.etcd import Watch, key_after, prefix_end
from updater.errors import LockError
from updater.lock.semaphore import Move, Semaphore, free_slots, next_move

if TYPE_CHECKING:
    from updater.lock.gateway import EtcdGateway, KeyValue

log = logging.getLogger(__name__)


class WaitQueue:
    """``EtcdLockClient``'s queue (a mixin: the attributes are the client's)."""

    gw: EtcdGateway
    key: str
    holder_prefix: str
    group: str
    host: str

    if TYPE_CHECKING:
        def _liveness(self, holder: str) -> str: ...
        def _theirs(self, holder: str, kv: KeyValue | None) -> bool: ...
        def _conflict(self, holder: str, kv: KeyValue | None) -> Exception: ...

    @property
    def waiter_prefix(self) -> str:
        return self.key.rsplit("/", 1)[0] + "/waiters/"

    def waiter_key(self, holder: str) -> str:
        return self.waiter_prefix + quote(holder, safe="")

    def _enqueue(self, holder: str, ttl: int) -> int:
        """Put (or keep) ``holder``'s queue key; its create revision (its place).

        Raises: HolderConflict (another host waits under this id), LockError.
        """
        key = self.waiter_key(holder)
        for _ in range(5):
            kv = self.gw.get(key)
            if self._theirs(holder, kv):
                raise self._conflict(holder, kv)
            if kv is not None and kv.lease and self.gw.lease_keepalive(kv.lease) > 0:
                return kv.create_revision
            lease = self.gw.lease_grant(ttl)
            guard = self.gw.cmp_mod(key, kv.mod_revision) if kv else self.gw.cmp_absent(key)
            if self.gw.txn([guard], [self.gw.op_put(key, self._liveness(holder), lease)]):
                mine = self.gw.get(key)
                if mine is not None:
                    log.info("reboot lock %s: %s waits in the queue", self.group, holder)
                    return mine.create_revision
            self.gw.lease_revoke(lease)
        raise LockError(f"reboot lock {self.group}: cannot join the queue")

    def leave_queue(self, holder: str) -> None:
        """Stop waiting (the window closed, the version halted): the next one moves up."""
        self.gw.delete(self.waiter_key(holder))

    def _ahead(self, place: int) -> tuple[KeyValue | None, int]:
        """The waiter just ahead of ``place`` (None: this one is first) and the revision read."""
        kvs, rev = self.gw.range(self.waiter_prefix, prefix_end(self.waiter_prefix), limit="1",
                                 sort_order="DESCEND", sort_target="CREATE",
                                 max_create_revision=str(place - 1))
        return (kvs[0] if kvs else None), rev

    def _free(self) -> tuple[int, int]:
        """Free slots (dead holders counted as free) and the revision read: the semaphore and
        the liveness keys in one range (``holders/`` sorts before ``semaphore``)."""
        kvs, rev = self.gw.range(self.holder_prefix, key_after(self.key))
        sem = next((kv for kv in kvs if kv.key == self.key), None)
        if sem is None:
            return 1, rev  # no semaphore yet: taking the lock creates it
        n = len(self.holder_prefix)
        alive = {unquote(kv.key[n:]) for kv in kvs if kv.key.startswith(self.holder_prefix)}
        return free_slots(Semaphore.from_json(sem.value), alive), rev

    def wait_turn(self, holder: str, timeout: float) -> bool:
        """Wait until ``holder`` is first in the queue and a slot is free (True: try now), or
        ``timeout`` seconds passed (False: re-read, maybe wait again).

        Raises: HolderConflict, LockError (etcd unreachable).
        """
        end = time.monotonic() + timeout
        place = self._enqueue(holder, ttl=int(2 * timeout) + 60)
        while (left := end - time.monotonic()) > 0:
            ahead, rev = self._ahead(place)
            free, frev = (0, rev) if ahead is not None else self._free()
            move = next_move(ahead is not None, free)
            if move is Move.TRY:
                return True
            if move is Move.WATCH_AHEAD:
                assert ahead is not None
                watches = [Watch(ahead.key, deletes_only=True)]
            else:
                rev = frev
                watches = [Watch(self.holder_prefix, key_after(self.key))]
            if self.gw.wait_change(watches, rev + 1, left) is None and \
                    time.monotonic() >= end:
                return False
        return False

