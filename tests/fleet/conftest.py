"""Fixtures of the fleet view's tests: the session's real etcd with the fleet's keys cleared
for each test, and reports written by the agent's own reporter."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from channels import fleet
from channels.etcd import EtcdGateway
from updater.lock.gateway import EtcdGateway as LockGateway
from updater.report import FleetReporter

Report = Callable[..., fleet.HostReport]


@pytest.fixture
def fleet_etcd(etcd):  # noqa: ANN001, ANN201
    EtcdGateway([etcd.url]).delete_prefix(fleet.ROOT + "/")
    return etcd


@pytest.fixture
def report(fleet_etcd, tmp_path: Path) -> Report:  # noqa: ANN001
    """``report("node1", version=..., ...)`` writes a host's report as its agent does."""

    def write(host: str, **fields: object) -> fleet.HostReport:
        r = fleet.HostReport(**{"id": host, "version": "1.0.0", "slot": "a", "channel": "stable",
                                "group": "default", "state": "idle", "time": time.time(),
                                **fields})  # type: ignore[arg-type]
        state = tmp_path / "hosts" / host.replace("/", "_")
        state.mkdir(parents=True, exist_ok=True)
        FleetReporter(LockGateway([fleet_etcd.url]), state, 300).publish(r)
        return r

    return write
