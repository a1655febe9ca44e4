"""The FleetLock client against a server written to the protocol (SPECS §1) in conftest."""

from __future__ import annotations

import pytest

from updater.errors import LockError
from updater.lock.fleetlock import FleetLockClient


def test_pre_reboot_and_steady_state(fleetlock_server) -> None:  # noqa: ANN001
    a = FleetLockClient(fleetlock_server.url, "default")
    b = FleetLockClient(fleetlock_server.url.rstrip("/"), "default")  # trailing / is added
    assert a.acquire("node-a")
    assert a.acquire("node-a")  # recursive
    assert not b.acquire("node-b")  # one slot: failed_lock → busy, not an error
    a.release("node-a")
    a.release("node-a")  # unlocking what is not held succeeds
    assert b.acquire("node-b")
    paths = [p for p, _ in fleetlock_server.requests]
    assert paths[:3] == ["/v1/pre-reboot"] * 3 and "/v1/steady-state" in paths
    assert fleetlock_server.requests[0][1] == {"id": "node-a", "group": "default"}


def test_groups_are_separate_semaphores(fleetlock_server) -> None:  # noqa: ANN001
    w = [FleetLockClient(fleetlock_server.url, "workers") for _ in range(3)]
    assert w[0].acquire("w0") and w[1].acquire("w1") and not w[2].acquire("w2")
    assert FleetLockClient(fleetlock_server.url, "default").acquire("d0")
    assert fleetlock_server.holders == {"default": ["d0"], "workers": ["w0", "w1"]}


def test_errors_name_kind(fleetlock_server) -> None:  # noqa: ANN001
    with pytest.raises(LockError, match="unknown_group"):
        FleetLockClient(fleetlock_server.url, "nope").acquire("x")
    with pytest.raises(LockError, match="invalid_client_parameters"):
        FleetLockClient(fleetlock_server.url, "bad group!").acquire("x")
    with pytest.raises(LockError, match="unreachable"):
        FleetLockClient("http://127.0.0.1:1/", "default", timeout=2).acquire("x")


def test_header_is_required_by_the_server(fleetlock_server) -> None:  # noqa: ANN001
    import requests

    r = requests.post(fleetlock_server.url + "v1/pre-reboot",
                      json={"client_params": {"id": "x", "group": "default"}}, timeout=5)
    assert r.status_code == 400 and r.json()["kind"] == "invalid_client_identity"
