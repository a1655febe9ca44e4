"""The reboot lock in etcd v3: locksmith's semaphore plus a liveness key per holder.

Keys, for group ``G`` (URL-escaped)::

    tidehost/rebootlock/groups/G/semaphore      locksmith JSON, no lease
    tidehost/rebootlock/groups/G/holders/<id>   one per holder, bound to its own lease
    tidehost/rebootlock/groups/G/waiters/<id>   the queue of hosts waiting (``queue.py``)

Every change of the semaphore is a compare-and-swap on its ``mod_revision``.  Taking the
lock writes the semaphore and the holder's liveness key in one transaction.  The lease
outlasts a normal reboot (default 15 min) and the holder renews it when it is back; a
contender that finds a holder without a liveness key removes it in its own transaction,
guarded by "that liveness key is still absent", so a dead holder cannot block the fleet.

A holder id is bound to its host: the liveness key's value is ``{"holder": id, "host":
fingerprint}``, the fingerprint a hash of a random token the host keeps on ROOT
(``updater.lock.host_token``).  A second host presenting the same id finds another
fingerprint there and is refused (``HolderConflict``): it cannot take, renew or release the
first host's slot.  ``unlock(id, force=True)`` (the operator's ``lock unlock ID``) still
releases any holder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from urllib.parse import quote

from channels.fleet import LOCK_ROOT
from updater.errors import HolderConflict, LockBusy, LockError, LockExists, LockNotHeld
from updater.lock.gateway import EtcdGateway, KeyValue, key_after
from updater.lock.queue import WaitQueue
from updater.lock.semaphore import Semaphore, check_holder, shown

log = logging.getLogger(__name__)
ROOT = LOCK_ROOT
CAS_TRIES = 50


class EtcdLockClient(WaitQueue):
    def __init__(self, gateway: EtcdGateway, group: str = "default", lease: int = 900,
                 *, init_max: int = 1, token: str = "") -> None:
        self.gw = gateway
        self.host = hashlib.sha256(f"tidehost-lock:{token}".encode()).hexdigest()[:32] \
            if token else ""
        self.init_max = init_max
        self.group = group
        self.lease = lease
        base = f"{ROOT}/groups/{quote(group, safe='')}"
        self.key = f"{base}/semaphore"
        self.holder_prefix = f"{base}/holders/"

    def holder_key(self, holder: str) -> str:
        return self.holder_prefix + quote(holder, safe="")

    def _liveness(self, holder: str) -> str:
        return json.dumps({"holder": holder, "host": self.host}, sort_keys=True)

    @staticmethod
    def owner(kv: KeyValue | None) -> str:
        """The host fingerprint in a liveness key ("" if none, or an older agent's key)."""
        if kv is None:
            return ""
        try:
            d = json.loads(kv.value)
        except ValueError:
            return ""
        return str(d.get("host", "")) if isinstance(d, dict) else ""

    def _theirs(self, holder: str, kv: KeyValue | None) -> bool:
        """``kv`` is the liveness key of ``holder`` as another host took it."""
        mine = self.owner(kv)
        return bool(mine and self.host and mine != self.host)

    def _conflict(self, holder: str, kv: KeyValue | None) -> HolderConflict:
        return HolderConflict(
            f"reboot lock {self.group}: holder id {shown(holder)} is held by another host "
            f"(host {self.owner(kv)[:8]}…, this host is {self.host[:8]}…); give every host "
            "its own id (node: in update.yaml, or a unique /etc/machine-id)")

    # --- reading -------------------------------------------------------------------------

    def _read(self) -> tuple[Semaphore, int]:
        """The semaphore and its mod_revision, creating it (``init_max`` slots) if absent."""
        for _ in range(CAS_TRIES):
            kv = self.gw.get(self.key)
            if kv is not None:
                return Semaphore.from_json(kv.value), kv.mod_revision
            new = Semaphore().set_max(self.init_max)
            self.gw.txn([self.gw.cmp_absent(self.key)], [self.gw.op_put(self.key, new.to_json())])
        raise LockError(f"{self.key}: cannot create the semaphore")

    def status(self) -> Semaphore:
        return self._read()[0]

    def holds(self, holder: str) -> bool:
        return holder in self.status().holders

    # --- writing -------------------------------------------------------------------------

    def _cas(self, rev: int, new: Semaphore, ghosts: tuple[str, ...] = (),
             extra: list[dict[str, object]] | None = None) -> bool:
        compare = [self.gw.cmp_mod(self.key, rev)]
        compare += [self.gw.cmp_absent(self.holder_key(g)) for g in ghosts]
        return self.gw.txn(compare, [self.gw.op_put(self.key, new.to_json()), *(extra or [])])

    def _pruned(self) -> tuple[Semaphore, Semaphore, int, tuple[str, ...]]:
        """The semaphore, it without its dead holders, its mod_revision and the dead: the
        semaphore and the liveness keys read in one range, so they agree."""
        kvs, _ = self.gw.range(self.holder_prefix, key_after(self.key))
        sem_kv = next((kv for kv in kvs if kv.key == self.key), None)
        if sem_kv is None:
            sem, rev = self._read()
        else:
            sem, rev = Semaphore.from_json(sem_kv.value), sem_kv.mod_revision
        n = len(self.holder_prefix)
        alive = {kv.key[n:] for kv in kvs if kv.key.startswith(self.holder_prefix)}
        ghosts = tuple(h for h in sem.holders if quote(h, safe="") not in alive)
        if ghosts:
            log.warning("reboot lock %s: holders without liveness key: %s",
                        self.group, ", ".join(ghosts))
        return sem, sem.without(ghosts), rev, ghosts

    def lock(self, holder: str) -> None:
        """Take one slot for ``holder``; removes dead holders first.

        Raises:
            LockExists: ``holder`` already holds a slot (its liveness key is renewed).
            LockBusy: every slot is held by a live holder.
            LockError: etcd is unreachable or too busy.
        """
        check_holder(holder)
        lease = 0
        try:
            for _ in range(CAS_TRIES):
                sem, pruned, rev, ghosts = self._pruned()
                if holder in pruned.holders:
                    if ghosts:
                        self._cas(rev, pruned, ghosts)
                    live = self.gw.get(self.holder_key(holder))
                    if self._theirs(holder, live):
                        raise self._conflict(holder, live)
                    self.renew(holder)
                    raise LockExists(f"{holder} already holds the lock")
                try:
                    new = pruned.lock(holder)
                except LockBusy:
                    if ghosts:
                        self._cas(rev, pruned, ghosts)
                    raise
                if not lease:
                    lease = self.gw.lease_grant(self.lease)
                op = self.gw.op_put(self.holder_key(holder), self._liveness(holder), lease)
                dequeue = self.gw.op_delete(self.waiter_key(holder))  # wakes the next waiter
                if self._cas(rev, new, ghosts, [op, dequeue]):
                    log.info("reboot lock %s: taken by %s (%d of %d)", self.group, holder,
                             len(new.holders), new.max)
                    lease = 0
                    if ghosts:
                        log.warning("reboot lock %s: removed dead holders %s", self.group,
                                    ", ".join(ghosts))
                    return
            raise LockError(f"reboot lock {self.group}: too much contention")
        finally:
            if lease:
                self.gw.lease_revoke(lease)

    def unlock(self, holder: str, *, force: bool = False) -> None:
        """Release ``holder``'s slot and its liveness key; only this host's own hold unless
        ``force`` (the operator's ``lock unlock ID``).

        Raises:
            LockNotHeld: ``holder`` holds no slot.
            HolderConflict: the slot is another host's and ``force`` is not set.
        """
        for _ in range(CAS_TRIES):
            live = self.gw.get(self.holder_key(holder))
            if not force and self._theirs(holder, live):
                raise self._conflict(holder, live)
            sem, rev = self._read()
            if holder not in sem.holders:
                if live:
                    self.gw.delete(self.holder_key(holder))
                raise LockNotHeld(f"{holder} does not hold the lock of group {self.group}")
            drop = self.gw.op_delete(self.holder_key(holder))
            guard = [self.gw.cmp_mod(self.holder_key(holder), live.mod_revision)] if live \
                else [self.gw.cmp_absent(self.holder_key(holder))]
            if self.gw.txn([self.gw.cmp_mod(self.key, rev), *guard],
                           [self.gw.op_put(self.key, sem.unlock(holder).to_json()), drop]):
                log.info("reboot lock %s: released by %s", self.group, holder)
                if live and live.lease:
                    self.gw.lease_revoke(live.lease)
                return
        raise LockError(f"reboot lock {self.group}: too much contention")

    def renew(self, holder: str) -> bool:
        """Keep ``holder``'s liveness key alive (re-create it after a long reboot).

        Returns False when ``holder`` no longer holds the lock (it was removed as dead).
        """
        live = self.gw.get(self.holder_key(holder))
        if self._theirs(holder, live):
            log.warning("%s", self._conflict(holder, live))
            return False
        if live and live.lease and self.gw.lease_keepalive(live.lease) > 0:
            return True
        lease = self.gw.lease_grant(self.lease)
        for _ in range(CAS_TRIES):
            sem, rev = self._read()
            if holder not in sem.holders:
                self.gw.lease_revoke(lease)
                return False
            live = self.gw.get(self.holder_key(holder))
            if self._theirs(holder, live):  # another host re-created it meanwhile
                self.gw.lease_revoke(lease)
                log.warning("%s", self._conflict(holder, live))
                return False
            op = self.gw.op_put(self.holder_key(holder), self._liveness(holder), lease)
            key = self.holder_key(holder)
            guard = self.gw.cmp_mod(key, live.mod_revision) if live else self.gw.cmp_absent(key)
            if self.gw.txn([self.gw.cmp_mod(self.key, rev), guard], [op]):
                log.info("reboot lock %s: liveness key of %s re-created", self.group, holder)
                return True
        self.gw.lease_revoke(lease)
        raise LockError(f"reboot lock {self.group}: too much contention")

    def set_max(self, new_max: int) -> Semaphore:
        for _ in range(CAS_TRIES):
            sem, rev = self._read()
            new = sem.set_max(new_max)
            if self._cas(rev, new):
                return new
        raise LockError(f"reboot lock {self.group}: too much contention")

    # --- the agent's RebootLock protocol ------------------------------------------------------

    def acquire(self, holder: str) -> bool:
        try:
            self.lock(holder)
        except LockExists:
            pass
        except LockBusy as e:
            log.info("reboot lock %s: busy: %s", self.group, e)
            return False
        return True

    def release(self, holder: str) -> None:
        try:
            self.unlock(holder)
        except LockNotHeld:
            log.info("reboot lock %s: %s held nothing to release", self.group, holder)
        except HolderConflict as e:
            log.warning("%s; this host holds nothing to release", e)
