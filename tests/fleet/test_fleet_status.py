"""``tidehost fleet status`` and ``fleet watch`` against a real etcd: hosts, counts, lock
holders, rollbacks, halted versions; bad input flagged, an unreachable etcd one line."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from channels.create import create
from channels.etcd import EtcdGateway
from channels.releases import ChannelRepository
from channels.repository import open_repository
from imagebuild.cli import main
from tests.channels.conftest import write_bundle
from updater.lock.etcd import EtcdLockClient
from updater.lock.gateway import EtcdGateway as LockGateway

pytestmark = pytest.mark.slow


def tidehost(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_status_lists_hosts_counts_locks_and_rollbacks(fleet_etcd, report) -> None:  # noqa: ANN001
    report("node1", version="1.1.0")
    report("node2", state="rolled-back", bad_versions=("1.1.0",),
           last_error="1.1.0 failed its boot or health checks")
    report("node3", state="rolled-back", bad_versions=("1.1.0",), last_error="health: app")
    report("db1", group="db", state="waiting-for-lock", target_version="1.1.0")
    lock = EtcdLockClient(LockGateway([fleet_etcd.url]), "db", 60, token="t" * 32)
    lock.lock("db0")
    code, out, err = tidehost("fleet", "status", "--etcd", fleet_etcd.url, "--json")
    assert code == 0, err
    snap = json.loads(out)
    assert [h["id"] for h in snap["hosts"]] == ["db1", "node1", "node2", "node3"]
    assert {"id", "version", "slot", "state"} <= set(snap["hosts"][0])
    assert snap["versions"] == {"1.0.0": 3, "1.1.0": 1}
    assert snap["states"] == {"idle": 1, "rolled-back": 2, "waiting-for-lock": 1}
    assert snap["groups"]["db"]["lock_holders"] == ["db0"]
    assert snap["groups"]["default"]["halted"] == {"1.1.0": ["node2", "node3"]}
    assert [r["id"] for r in snap["rolled_back"]] == ["node2", "node3"]
    code, out, _ = tidehost("fleet", "status", "--etcd", fleet_etcd.url)
    assert "HALTED 1.1.0: rolled back on 2 hosts (node2, node3)" in out
    assert "lock 1/1 held by db0" in out
    assert "node2 (1.1.0): 1.1.0 failed its boot or health checks" in out
    code, out, _ = tidehost("fleet", "status", "--etcd", fleet_etcd.url, "--group", "db",
                            "--json")
    assert [h["id"] for h in json.loads(out)["hosts"]] == ["db1"]
    code, out, _ = tidehost("fleet", "status", "--etcd", fleet_etcd.url, "--halt-after", "3",
                            "--json")
    assert json.loads(out)["groups"]["default"]["halted"] == {}
    lock.unlock("db0")


def test_bad_keys_are_flagged_and_never_crash(fleet_etcd, report) -> None:  # noqa: ANN001
    report("good")
    report("odd host\u202e\n")  # odd characters: shown escaped on one line
    gw = EtcdGateway([fleet_etcd.url])
    gw.put("tidehost/fleet/hosts/junk", "{not json")
    gw.put("tidehost/fleet/hosts/x/y", "{}")
    gw.put(b"tidehost/fleet/hosts/\xff".decode("utf-8", "surrogateescape"), "{}")
    gw.put("tidehost/fleet/hosts/newer", json.dumps(
        {"id": "newer", "version": "9.0.0", "format": 3, "cpu_temp": 71}))
    code, out, err = tidehost("fleet", "status", "--etcd", fleet_etcd.url)
    assert code == 0, err
    lines = out.splitlines()
    assert any(ln.startswith("good ") for ln in lines)
    assert any(ln.startswith("newer ") and "9.0.0" in ln for ln in lines)
    assert "odd host\\u202e\\n" in out and "\u202e" not in out
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    assert len(warnings) == 4
    assert any("junk: not a host report: not JSON; skipped" in w for w in warnings)
    assert any("x/y: not a host report key" in w for w in warnings)
    assert any("not URL-escaped UTF-8" in w for w in warnings)
    assert any("newer agent, report format 3 (extra fields: cpu_temp)" in w for w in warnings)


def test_unreachable_etcd_and_bad_options_are_one_line() -> None:
    code, out, err = tidehost("fleet", "status", "--etcd", "http://127.0.0.1:9")
    assert code == 4 and not out
    assert err.startswith("tidehost: error: etcd unreachable") and err.count("\n") == 1
    code, _, err = tidehost("fleet", "status", "--etcd", "ftp://x")
    assert code == 2 and "is not an http(s) URL" in err
    code, _, err = tidehost("fleet", "status", "--etcd", "http://x", "--cacert", "/nonexistent")
    assert code == 2 and "--cacert: /nonexistent: no such file" in err


def test_watch_pauses_the_release_once_the_reports_cross_the_line(fleet_etcd, report,  # noqa: ANN001
                                                                  tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    create(repo, None)
    with open_repository(repo) as tuf:
        r = ChannelRepository(tuf)
        r.publish(write_bundle(tmp_path / "b", "1.1.0", channel="stable"), "stable")
    report("a", state="rolled-back", bad_versions=("1.1.0",))
    args = ("fleet", "watch", "--etcd", fleet_etcd.url, "--repo", str(repo), "--once")
    assert tidehost(*args)[:2] == (0, "")  # one rollback: nothing to do
    report("b", state="rolled-back", bad_versions=("1.1.0",))
    code, out, err = tidehost(*args)
    assert code == 0, err
    assert out == "paused stable 1.1.0: rolled back on 2 hosts (a, b)\n"
    with open_repository(repo) as tuf:
        assert ChannelRepository(tuf).release("stable", "1.1.0").rollout.paused
    assert tidehost(*args)[:2] == (0, "")  # already paused: left alone
