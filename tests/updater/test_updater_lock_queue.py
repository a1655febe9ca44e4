"""Waiting for the reboot lock on watches, against a real etcd: a waiter costs etcd nothing
while it waits, a release wakes one waiter, a hand-off is one transaction, and the operator's
``lock lock --wait`` waits the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from updater.lock.etcd import EtcdLockClient
from updater.lock.gateway import EtcdGateway

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[2]


def client(etcd, group: str, name: str, lease: int = 60) -> EtcdLockClient:  # noqa: ANN001
    return EtcdLockClient(EtcdGateway([etcd.url], timeout=5), group, lease,
                          token=f"token-of-{name}".ljust(32, "x"))


def group() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def test_a_waiter_sends_nothing_while_it_waits_and_wakes_on_release(etcd) -> None:  # noqa: ANN001
    g = group()
    holder = client(etcd, g, "h")
    holder.lock("h")
    w = client(etcd, g, "w")
    assert not w.acquire("w")
    woke: list[float] = []
    before: dict[str, int] = {}

    def wait() -> None:
        while not w.acquire("w"):
            w.wait_turn("w", 30)
        woke.append(time.monotonic())

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(1.0)
    before.update(w.gw.calls)
    time.sleep(3.0)  # waiting: not one request
    assert dict(w.gw.calls) == before and not woke
    released = time.monotonic()
    holder.release("h")
    t.join(10)
    assert woke and woke[0] - released < 2.0
    assert w.holds("w")
    assert w.gw.get(w.waiter_key("w")) is None  # taking the slot left the queue


def test_waiters_pass_in_order_one_transaction_per_hand_off(etcd) -> None:  # noqa: ANN001
    g = group()
    first = client(etcd, g, "first")
    first.set_max(2)
    first.lock("first")
    first.lock("second")
    order: list[str] = []
    clients = {f"w{i:02d}": client(etcd, g, f"w{i:02d}") for i in range(12)}
    peak = 0
    inside = 0
    woken_in_vain = 0
    mu = threading.Lock()

    def host(name: str) -> None:
        nonlocal peak, inside, woken_in_vain
        c = clients[name]
        woke = False
        while not c.acquire(name):
            if woke:  # told to try, and the slot was gone
                with mu:
                    woken_in_vain += 1
            woke = c.wait_turn(name, 60)
        with mu:
            order.append(name)
            inside += 1
            peak = max(peak, inside)
        time.sleep(0.1)
        with mu:
            inside -= 1
        c.release(name)

    threads = []
    for name in clients:  # they join the queue one after the other
        threads.append(threading.Thread(target=host, args=(name,)))
        threads[-1].start()
        time.sleep(0.15)
    first.release("first")
    first.release("second")
    for t in threads:
        t.join(60)
    assert sorted(order) == sorted(clients) and peak <= 2
    assert order == sorted(order)  # first come, first served
    # only the first waiter tries, when a slot is free: no one woken for nothing, no herd
    assert woken_in_vain <= 1
    txns = sum(c.gw.calls["kv/txn"] for c in clients.values())
    # per waiter: joining the queue, taking the slot, giving it back, and now and then a
    # compare-and-swap that lost to a release at the same moment (a herd: ~N per hand-off)
    assert txns <= 4 * len(clients)
    assert first.status().holders == ()


def test_a_dead_waiter_ahead_only_delays_the_queue_until_its_lease_ends(etcd) -> None:  # noqa: ANN001
    g = group()
    h = client(etcd, g, "h")
    h.lock("h")
    dead = client(etcd, g, "dead")
    dead._enqueue("dead", ttl=3)  # joined the queue, then the host died
    w = client(etcd, g, "w")
    got: list[bool] = []

    def wait() -> None:
        while not w.acquire("w"):
            w.wait_turn("w", 30)
        got.append(True)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.5)
    h.release("h")
    t.join(20)
    assert got and w.holds("w")


def test_lock_cli_wait_takes_the_slot_when_it_is_released(etcd, tmp_path: Path) -> None:  # noqa: ANN001
    g = group()
    holder = client(etcd, g, "holder")
    holder.lock("holder")
    cfg = tmp_path / "update.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/state\nmetrics_file: ''\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "updater.cli", "--config", str(cfg), "--defaults",
         str(tmp_path / "none.yaml"), "lock", "--etcd", etcd.url, "--group", g, "lock",
         "operator", "--wait"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    time.sleep(2.0)
    assert proc.poll() is None  # waiting in the queue
    t0 = time.monotonic()
    holder.release("holder")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert time.monotonic() - t0 < 5 and "operator holds the lock" in out
    assert holder.status().holders == ("operator",)
