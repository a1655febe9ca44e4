"""The etcd gateway client of ``channels.etcd`` as the reboot lock uses it: every etcd
failure becomes a ``LockError`` (one line), so the agent's error handling stays the lock's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from channels import etcd
from channels.errors import EtcdError
from channels.etcd import Event, KeyValue, Watch, api_prefix, b64, key_after, prefix_end
from updater.errors import LockError

__all__ = ["EtcdGateway", "Event", "KeyValue", "Watch", "api_prefix", "b64", "key_after",
           "prefix_end"]


class EtcdGateway(etcd.EtcdGateway):
    def __init__(self, endpoints: Sequence[str], **kwargs: Any) -> None:
        try:
            super().__init__(endpoints, **kwargs)
        except EtcdError as e:
            raise LockError(str(e)) from None

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return super().call(path, body)
        except EtcdError as e:
            raise LockError(str(e)) from None

    def wait_change(self, watches: Sequence[Watch], start_revision: int,
                    timeout: float) -> list[Event] | None:
        try:
            return super().wait_change(watches, start_revision, timeout)
        except EtcdError as e:
            raise LockError(str(e)) from None
