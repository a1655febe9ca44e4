"""The tidehost-update command: daemon without a channel, status, errors as exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from updater.cli import main
from updater.state import Phase, State, StateStore

REPO = Path(__file__).parents[2]
DIST = REPO / "updater/dist"


def config(tmp_path: Path, extra: str = "") -> list[str]:
    cfg = tmp_path / "update.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/state\nmetrics_file: {tmp_path}/m.prom\n"
                   f"etcd: {{endpoints: [http://127.0.0.1:1]}}\n{extra}")
    return ["--config", str(cfg), "--defaults", str(DIST / "usr/share/tidehost/update.yaml")]


def test_daemon_without_channel_idles_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "updater.cli", *config(tmp_path), "daemon"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert StateStore(tmp_path / "state").load().phase is Phase.IDLE
        assert 'tidehost_update_state{state="idle"} 1' in (tmp_path / "m.prom").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = err.strip().splitlines()
    assert lines[0].startswith("no channel configured") and lines[-1] == "stopped"


def test_status_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = config(tmp_path)
    StateStore(tmp_path / "state").save(
        State(phase=Phase.ROLLED_BACK, bad_versions=("3.0.0",), last_result="rolled back",
              lock_held=True))
    assert main([*args, "status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["state"] == "rolled-back" and st["bad_versions"] == ["3.0.0"]
    assert st["lock_held"] is True and st["strategy"] == "etcd-lock" and "version" in st
    assert main([*args, "status"]) == 0
    out = capsys.readouterr().out
    assert "state rolled-back" in out and "never again: 3.0.0" in out and "lock held" in out


def test_errors_become_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*config(tmp_path, "strategy: maybe\n"), "status"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "update.yaml: field 'strategy'" in err
    assert main([*config(tmp_path), "check"]) == 1
    assert "no channel configured" in capsys.readouterr().err
    assert main([*config(tmp_path), "lock", "status"]) == 1
    assert "etcd unreachable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*config(tmp_path), "frobnicate"])
    assert e.value.code == 2


def test_dist_tree_units_and_links(tmp_path: Path) -> None:
    system = DIST / "usr/lib/systemd/system"
    svc = (system / "tidehost-update.service").read_text()
    assert "ExecStart=/usr/bin/tidehost-update daemon" in svc and "Restart=on-failure" in svc
    health = (system / "tidehost-update-health.service").read_text()
    assert "Before=boot-complete.target" in health and "tidehost-update health" in health
    # The enablement links are data (dist/MANIFEST) that the image build makes in /usr.
    from imagebuild.image.stages.configure import install_agent_files

    install_agent_files(tmp_path)
    system = tmp_path / "usr/lib/systemd/system"
    wants = system / "multi-user.target.wants/tidehost-update.service"
    req = system / "boot-complete.target.requires/tidehost-update-health.service"
    assert wants.is_symlink() and wants.resolve() == (system / "tidehost-update.service").resolve()
    assert req.is_symlink() and req.resolve() == (system / "tidehost-update-health.service"
                                                  ).resolve()
    # only under usr/, beside the manifest
    assert {p.parts[len(DIST.parts)] for p in DIST.rglob("*")} == {"usr", "MANIFEST"}
    assert "d /var/lib/tidehost" in (DIST / "usr/lib/tmpfiles.d/tidehost-update.conf").read_text()


def test_daemon_with_bad_config_stays_up_and_says_why(tmp_path: Path) -> None:
    args = config(tmp_path, "boot_tries: lots\n")
    proc = subprocess.Popen([sys.executable, "-m", "updater.cli", *args, "daemon"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        assert proc.poll() is None  # no crash loop, no failed unit
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "field 'boot_tries'" in lines[0] and "waits" in lines[0]


def test_health_with_bad_config_uses_the_defaults(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    assert main([*config(tmp_path, "health: {units: 3}\n"), "health"]) == 0
    assert "field 'health.units'" in caplog.text and "healthy" in caplog.text


def test_the_image_gets_the_compiled_chunker_and_its_python3_loads_it(tmp_path: Path) -> None:
    """install_agent_files builds casync's C scanner beside channels/casync; Debian's python3
    (as on a host: no cache directory to fall back on) loads it instead of pure Python."""
    from channels.casync import fastchunk
    from imagebuild.image.stages.configure import SITE, install_agent_files

    install_agent_files(tmp_path / "tree")
    site = tmp_path / "tree" / SITE
    lib = site / "channels/casync" / fastchunk.LIBRARY_NAME
    assert lib.is_file() and len(list(site.rglob("*.so"))) == 1
    probe = ("import channels.casync.chunker as c, channels.casync.fastchunk as f; "
             "print(c.default_cutter().name, f.find_library())")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site),
           "TIDEHOST_CACHE": str(tmp_path / "no-cache")}
    out = subprocess.run(["/usr/bin/python3", "-c", probe], env=env, cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["c", str(lib)]
