"""The etcd reboot lock against a real etcd (Debian's etcd-server, started by the tests)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from updater.cli import main
from updater.errors import LockBusy, LockError, LockExists, LockNotHeld
from updater.lock.etcd import EtcdLockClient
from updater.lock.gateway import EtcdGateway, api_prefix

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[2]


def client(etcd, group: str, lease: int = 900) -> EtcdLockClient:  # noqa: ANN001
    return EtcdLockClient(EtcdGateway([etcd.url], timeout=5), group, lease)


def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def test_gateway_prefix_detection(etcd) -> None:  # noqa: ANN001
    assert [api_prefix(v) for v in ("3.5.16", "3.4.23", "3.3.1", "3.2.0")] == [
        "/v3", "/v3", "/v3beta", "/v3alpha"]
    gw = EtcdGateway([etcd.url])
    gw.put("probe", "x")
    assert gw._prefix[etcd.url] == "/v3" and gw.get("probe").value == b"x"
    assert gw.get("no-such-key") is None


def test_lock_semantics_and_locksmith_json(etcd) -> None:  # noqa: ANN001
    g = group()
    c = client(etcd, g)
    assert c.status().max == 1
    c.set_max(2)
    c.lock("b")
    c.lock("a")
    with pytest.raises(LockExists):
        c.lock("a")
    with pytest.raises(LockBusy):
        c.lock("c")
    raw = c.gw.get(c.key)
    assert json.loads(raw.value) == {"semaphore": 0, "max": 2, "holders": ["a", "b"]}
    assert c.key == f"tidehost/rebootlock/groups/{g}/semaphore"
    c.unlock("a")
    with pytest.raises(LockNotHeld):
        c.unlock("a")
    assert c.gw.get(c.holder_key("a")) is None and c.gw.get(c.holder_key("b")).lease
    assert c.acquire("b") and c.acquire("c") and not c.acquire("d")
    c.release("zz")  # releasing what is not held is no error for the agent


def test_30_contenders_max_2(etcd) -> None:  # noqa: ANN001
    g = group()
    client(etcd, g).set_max(2)
    inside = 0
    peak = 0
    seen_in_etcd = 0
    done: list[str] = []
    errors: list[BaseException] = []
    mu = threading.Lock()

    def contender(i: int) -> None:
        nonlocal inside, peak, seen_in_etcd
        try:
            c = client(etcd, g)
            me = f"host-{i:02d}"
            while not c.acquire(me):
                time.sleep(random.uniform(0.02, 0.1))
            with mu:
                inside += 1
                peak = max(peak, inside)
            holders = c.status().holders
            with mu:
                seen_in_etcd = max(seen_in_etcd, len(holders))
            assert me in holders and len(holders) <= 2
            time.sleep(0.05)  # "rebooting"
            with mu:
                inside -= 1
            c.release(me)
            with mu:
                done.append(me)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors[0]
    assert len(done) == 30
    assert peak == 2 and seen_in_etcd == 2  # a real semaphore of 2, never 3
    s = client(etcd, g).status()
    assert s.holders == () and s.semaphore == 2 and s.max == 2


def test_dead_holder_is_cleared_after_its_lease(etcd) -> None:  # noqa: ANN001
    g = group()
    code = (
        "import time, sys\n"
        "from updater.lock.etcd import EtcdLockClient\n"
        "from updater.lock.gateway import EtcdGateway\n"
        f"c = EtcdLockClient(EtcdGateway([{etcd.url!r}]), {g!r}, lease=2)\n"
        "c.lock('victim'); print('locked', flush=True)\n"
        "while True:\n    c.renew('victim'); time.sleep(0.5)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        c = client(etcd, g)
        time.sleep(2.5)  # the victim renews: it stays a holder past its lease
        assert not c.acquire("survivor")
        assert c.status().holders == ("victim",)
    finally:
        proc.kill()  # killed mid-way: no unlock, no more renewals
        proc.wait()
    end = time.monotonic() + 15
    while not c.acquire("survivor"):
        assert time.monotonic() < end, "the dead holder was never cleared"
        time.sleep(0.3)
    assert c.status().holders == ("survivor",)
    assert c.gw.get(c.holder_key("victim")) is None


def test_holder_back_after_long_reboot_recreates_liveness(etcd) -> None:  # noqa: ANN001
    g = group()
    c = client(etcd, g, lease=2)
    c.lock("slow")
    time.sleep(3.5)  # the lease lapsed, but nobody contended yet
    assert c.gw.get(c.holder_key("slow")) is None
    assert c.renew("slow") is True
    assert c.gw.get(c.holder_key("slow")) is not None
    assert not client(etcd, g).acquire("other")  # still held: not a ghost
    c.unlock("slow")
    assert c.renew("slow") is False


def test_etcd_restart_mid_lock_loses_nothing(etcd) -> None:  # noqa: ANN001
    g = group()
    c = client(etcd, g)
    c.set_max(2)
    c.lock("before-restart")
    etcd.stop()
    try:
        with pytest.raises(LockError, match="etcd unreachable"):
            c.lock("during-outage")
        got: list[bool] = []

        def waiter() -> None:  # an agent retrying through the outage
            w = client(etcd, g)
            end = time.monotonic() + 30
            while time.monotonic() < end:
                try:
                    got.append(w.acquire("retrier"))
                    return
                except LockError:
                    time.sleep(0.2)

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.5)
    finally:
        etcd.start()
    t.join(30)
    assert got == [True]
    s = c.status()
    assert s.holders == ("before-restart", "retrier") and s.semaphore == 0
    c.unlock("before-restart")
    assert c.status().holders == ("retrier",)


def test_second_endpoint_is_used_when_first_is_down(etcd) -> None:  # noqa: ANN001
    gw = EtcdGateway(["http://127.0.0.1:1", etcd.url], timeout=2)
    c = EtcdLockClient(gw, group())
    assert c.acquire("x") and c.status().holders == ("x",)


def test_cli_lock_commands(etcd, capsys: pytest.CaptureFixture[str],  # noqa: ANN001
                           tmp_path: Path) -> None:
    g = group()
    base = ["--config", str(tmp_path / "none.yaml"), "--defaults", str(tmp_path / "none.yaml"),
            "lock", "--etcd", f"http://127.0.0.1:1,{etcd.url}", "--group", g]
    assert main([*base, "set-max", "2"]) == 0
    assert main([*base, "lock", "m1"]) == 0
    assert main([*base, "lock", "m2", "--lease", "60"]) == 0
    assert main([*base, "lock", "m3"]) == 3  # busy
    capsys.readouterr()
    assert main([*base, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"group": g, "max": 2, "holders": ["m1", "m2"]}
    assert main([*base, "unlock", "m1"]) == 0
    assert main([*base, "unlock", "m1"]) == 1
    assert "does not hold" in capsys.readouterr().err
    assert main([*base, "status"]) == 0
    out = capsys.readouterr().out
    assert "Available: 1" in out and "Max: 2" in out and "m2" in out
    after = [*base[:5], "status", "--json", "--etcd", etcd.url, "--group", g]  # verb first
    assert main(after) == 0
    assert json.loads(capsys.readouterr().out)["holders"] == ["m2"]


def test_group_created_with_configured_max(etcd) -> None:  # noqa: ANN001
    g = group()
    c = EtcdLockClient(EtcdGateway([etcd.url]), g, init_max=3)
    assert (c.status().max, c.status().semaphore) == (3, 3)
    other = EtcdLockClient(EtcdGateway([etcd.url]), g, init_max=1)
    assert other.status().max == 3  # only the creator's max counts; set-max changes it
