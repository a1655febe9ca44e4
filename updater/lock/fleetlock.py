"""A FleetLock client (Zincati's protocol, airlock's server).

``POST <base>/v1/pre-reboot`` takes a slot before rebooting, ``POST <base>/v1/steady-state``
gives it back once the node is healthy.  Header ``fleet-lock-protocol: true``; body
``{"client_params": {"id": ..., "group": ...}}``; errors are 4xx/5xx with ``{"kind","value"}``.
Locks are recursive: locking again or unlocking when not holding both succeed.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urljoin

import requests

from updater.errors import LockError
from updater.lock.semaphore import check_holder

log = logging.getLogger(__name__)
BUSY_KINDS = ("failed_lock",)


class FleetLockClient:
    def __init__(self, base_url: str, group: str = "default", *, timeout: float = 30.0) -> None:
        self.base = base_url if base_url.endswith("/") else base_url + "/"
        self.group = group
        self.timeout = timeout
        self.session = requests.Session()

    def _post(self, endpoint: str, holder: str) -> tuple[int, dict[str, Any]]:
        check_holder(holder)
        url = urljoin(self.base, endpoint)
        body = {"client_params": {"id": holder, "group": self.group}}
        try:
            r = self.session.post(url, json=body, timeout=self.timeout,
                                  headers={"fleet-lock-protocol": "true"})
        except requests.RequestException as e:
            raise LockError(f"FleetLock {url}: unreachable ({type(e).__name__})") from None
        try:
            data = r.json() if r.content else {}
        except ValueError:
            data = {}
        return r.status_code, data if isinstance(data, dict) else {}

    @staticmethod
    def _why(status: int, data: dict[str, Any]) -> str:
        return f"HTTP {status} {data.get('kind', '?')}: {data.get('value', '')}".rstrip(": ")

    def acquire(self, holder: str) -> bool:
        """Take a slot (pre-reboot); False when the group is full."""
        status, data = self._post("v1/pre-reboot", holder)
        if 200 <= status < 300:
            log.info("FleetLock %s: slot taken by %s", self.group, holder)
            return True
        if data.get("kind") in BUSY_KINDS:
            log.info("FleetLock %s: busy (%s)", self.group, self._why(status, data))
            return False
        raise LockError(f"FleetLock pre-reboot refused: {self._why(status, data)}")

    def release(self, holder: str) -> None:
        """Give the slot back (steady-state)."""
        status, data = self._post("v1/steady-state", holder)
        if not 200 <= status < 300:
            raise LockError(f"FleetLock steady-state refused: {self._why(status, data)}")
        log.info("FleetLock %s: slot released by %s", self.group, holder)

    def renew(self, holder: str) -> bool:
        return True  # FleetLock holders have no TTL
