"""Reboot locks behind one small protocol: etcd (locksmith-style), FleetLock, or none."""

from __future__ import annotations

import logging
from typing import Protocol

from updater.config import AgentConfig, Strategy

log = logging.getLogger(__name__)


class RebootLock(Protocol):
    """What the agent needs from a reboot lock; implementations raise ``LockError``."""

    def acquire(self, holder: str) -> bool:
        """Take a slot (idempotent for a holder); False when every slot is taken."""
        ...

    def release(self, holder: str) -> None:
        """Give the slot back; releasing what is not held is no error."""
        ...

    def renew(self, holder: str) -> bool:
        """Keep the hold alive across a reboot; False when the hold was lost."""
        ...


class NoLock:
    """Strategies ``reboot`` and ``off``: always granted."""

    def acquire(self, holder: str) -> bool:
        return True

    def release(self, holder: str) -> None:
        return None

    def renew(self, holder: str) -> bool:
        return True


def make_lock(config: AgentConfig) -> RebootLock:
    if config.strategy is Strategy.ETCD_LOCK:
        from updater.lock.etcd import EtcdLockClient
        from updater.lock.gateway import EtcdGateway

        gw = EtcdGateway(config.etcd_endpoints, ca=config.etcd_ca, cert=config.etcd_cert,
                         key=config.etcd_key)
        return EtcdLockClient(gw, config.group, config.lease, init_max=config.lock_max)
    if config.strategy is Strategy.FLEETLOCK:
        from updater.lock.fleetlock import FleetLockClient

        return FleetLockClient(config.fleetlock_url, config.group)
    return NoLock()
