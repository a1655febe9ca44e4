"""Reboot locks behind one small protocol: etcd (locksmith-style), FleetLock, or none."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any, Protocol

from updater.config import AgentConfig, Strategy
from updater.errors import LockError
from updater.state import atomic_write

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


TOKEN_FILE = "lock-token"


def host_token(state_dir: Path) -> str:
    """This host's secret that binds its holder id to it (``state_dir/lock-token``, 0600,
    on ROOT: it survives updates of /usr); created on first use.

    Raises: LockError (cannot be read or written).
    """
    path = Path(state_dir) / TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as e:
        raise LockError(f"{path}: cannot read the lock token: {e.strerror}") from None
    if len(token) >= 32:
        return token
    token = secrets.token_hex(32)
    try:
        atomic_write(path, token + "\n", mode=0o600)
    except OSError as e:
        raise LockError(f"{path}: cannot write the lock token: {e.strerror}") from None
    return token


def password_reader(path: Path | None) -> Any:
    """A callable that reads the etcd password from ``path`` each time a token is needed."""
    if path is None:
        return None
    return lambda: Path(path).read_text().strip()


def etcd_lock(config: AgentConfig, *, endpoints: tuple[str, ...] | None = None,
              group: str | None = None, lease: int | None = None, token: str = "") -> Any:
    """The etcd lock client of ``config`` (the agent's and ``tidehost-update lock``'s)."""
    from updater.lock.etcd import EtcdLockClient
    from updater.lock.gateway import EtcdGateway

    gw = EtcdGateway(endpoints or config.etcd_endpoints, ca=config.etcd_ca,
                     cert=config.etcd_cert, key=config.etcd_key, user=config.etcd_user,
                     password=password_reader(config.etcd_password_file))
    return EtcdLockClient(gw, group or config.group, lease or config.lease,
                          init_max=config.lock_max, token=token)


def make_lock(config: AgentConfig) -> RebootLock:
    if config.strategy is Strategy.ETCD_LOCK:
        return etcd_lock(config, token=host_token(config.state_dir))
    if config.strategy is Strategy.FLEETLOCK:
        from updater.lock.fleetlock import FleetLockClient

        return FleetLockClient(config.fleetlock_url, config.group)
    return NoLock()
