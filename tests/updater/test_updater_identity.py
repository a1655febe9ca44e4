"""Lock holder identity (issue 11, items 6 and 10) against a real etcd: a holder id is bound
to its host's token, ids are printable, and the CLI's bounds."""

from __future__ import annotations

import json
import re
import stat
import uuid
from pathlib import Path

import pytest

from updater.cli import main
from updater.errors import HolderConflict, LockError, LockExists
from updater.lock import host_token
from updater.lock.etcd import EtcdLockClient
from updater.lock.gateway import EtcdGateway

pytestmark = pytest.mark.slow


def host(etcd, group: str, token: str, lease: int = 900) -> EtcdLockClient:  # noqa: ANN001
    """One host's lock client: its own token, as ``make_lock`` gives it."""
    return EtcdLockClient(EtcdGateway([etcd.url], timeout=5), group, lease, init_max=2,
                          token=token)


def test_two_hosts_with_one_id_never_share_a_slot(etcd) -> None:  # noqa: ANN001
    g = f"g-{uuid.uuid4().hex[:8]}"
    a, twin, c = host(etcd, g, "token-a" * 5), host(etcd, g, "token-b" * 5), \
        host(etcd, g, "token-c" * 5)
    assert a.acquire("node1")
    with pytest.raises(HolderConflict, match=r"holder id node1 is held by another host"):
        twin.acquire("node1")  # the twin does not think it holds node1's slot
    assert not twin.renew("node1")  # nor does renewing make it a holder
    twin.release("node1")  # and its release gives back nothing of a's
    assert a.status().holders == ("node1",) and a.holds("node1")
    assert a.renew("node1")
    with pytest.raises(LockExists):
        a.lock("node1")  # a itself: still its own slot
    assert c.acquire("node3")
    assert a.status().holders == ("node1", "node3") and a.status().semaphore == 0
    with pytest.raises(HolderConflict):
        twin.unlock("node1")
    live = json.loads(a.gw.get(a.holder_key("node1")).value)
    assert live["holder"] == "node1" and live["host"] == a.host and "token-a" not in str(live)
    a.release("node1")  # the rightful host releases; the twin may take the id now
    assert twin.acquire("node1") and not a.renew("node1")


def test_the_operator_unlocks_any_host(etcd, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    g = f"g-{uuid.uuid4().hex[:8]}"
    host(etcd, g, "some-other-host-token-x").lock("web-7")
    cfg = tmp_path / "update.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/state\netcd: {{endpoints: [{etcd.url}]}}\n"
                   f"group: {g}\n")
    args = ["--config", str(cfg), "--defaults", "/nonexistent"]
    assert main([*args, "lock", "lock", "web-7"]) == 1  # this host is not web-7's host
    assert "held by another host" in capsys.readouterr().err
    assert main([*args, "lock", "unlock", "web-7"]) == 0
    assert "web-7 released" in capsys.readouterr().out
    assert main([*args, "lock", "lock", "web-7"]) == 0
    token = tmp_path / "state/lock-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(host_token(token.parent)) == 64
    assert host_token(token.parent) == token.read_text().strip()  # the same on every call


@pytest.mark.parametrize("argv, message", [
    (["lock", "lock", "evil\nMax: 99"], r"holder id: 'evil\\nMax: 99' contains a control"),
    (["lock", "lock", "x" * 254], r"holder id: holder id of 254 characters \(at most 253\)"),
    (["lock", "unlock", "\x1b[2Jnode"], r"contains a control character"),
    (["lock", "lock", "n1", "--lease", "-5"], r"--lease: -5 is negative"),
    (["lock", "lock", "n1", "--lease", "100000000"], r"--lease: 100000000 is longer than 366"),
    (["lock", "set-max", str(10 ** 30)], r"set-max: 1000000000000000000000000000000 is not "
                                         r"from 0 to 10000"),
    (["lock", "set-max", "-1"], r"set-max: -1 is not from 0"),
])
def test_lock_cli_refuses_bad_ids_and_bounds(etcd, tmp_path: Path, capsys, argv: list[str],  # noqa: ANN001
                                             message: str) -> None:
    cfg = tmp_path / "update.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/state\netcd: {{endpoints: [{etcd.url}]}}\n"
                   f"group: g-{uuid.uuid4().hex[:8]}\n")
    assert main(["--config", str(cfg), "--defaults", "/nonexistent", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert re.search(message, err), err


def test_lock_status_cannot_be_spoofed_by_an_id_in_etcd(etcd, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    g = f"g-{uuid.uuid4().hex[:8]}"
    c = host(etcd, g, "t" * 40)
    c.lock("real")
    raw = json.loads(c.gw.get(c.key).value)  # what an older, unchecking client could write
    raw["holders"].append("evil\n\nMachine IDs:\nnobody")
    c.gw.put(c.key, json.dumps(raw))
    cfg = tmp_path / "update.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/state\netcd: {{endpoints: [{etcd.url}]}}\n"
                   f"group: {g}\n")
    assert main(["--config", str(cfg), "--defaults", "/nonexistent", "lock", "status"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines.count("Machine IDs:") == 1 and "nobody" not in lines  # one holder, one line
    assert lines[-2:] == ["'evil\\n\\nMachine IDs:\\nnobody'", "real"]
    with pytest.raises(LockError, match="contains a control character"):
        c.lock("a\nb")
