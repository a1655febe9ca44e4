"""A step that hangs is ended by the daemon (issue 11, item 1), and a verb that finds the
agent busy says who holds the step lock instead of waiting silently for ever."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from updater.cli import main
from updater.config import Deadlines
from updater.daemon import exclusive, run_daemon
from updater.errors import StepBusy
from updater.run import run
from updater.state import Phase, State, StateStore

from .test_updater_agent import Rig, rig  # noqa: F401 - the agent rig and its fixture

pytestmark = pytest.mark.slow


def test_a_hanging_download_is_ended_and_backed_off(rig: Rig, bundles, tmp_path: Path,  # noqa: ANN001, F811
                                                    caplog: pytest.LogCaptureFixture) -> None:
    rig.channel.publish(bundles["2.0.0"])
    pids = tmp_path / "pids"

    def trickle(offer: object, dest: Path, progress: object = None, **kw: object) -> Path:
        pids.write_text(f"{os.getpid()}\n")
        run(["sleep", "301.7"], timeout=None)  # a mirror that never finishes, and a command
        raise AssertionError("not reached")

    rig.channel.download = trickle  # type: ignore[method-assign]

    def make_agent():  # noqa: ANN202
        a = rig.agent()
        a.clock = time.time  # the daemon's deadlines are real time
        return a

    stop = threading.Event()
    caplog.set_level(logging.INFO)
    timer = threading.Timer(6.0, stop.set)
    timer.start()
    t0 = time.monotonic()
    try:
        run_daemon(make_agent, rig.config.state_dir, stop=stop, rand=lambda: 0.0,
                   deadlines=Deadlines(download=2), tick=0.2)
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 10
    late = [r.getMessage() for r in caplog.records if "ran past its deadline" in r.getMessage()]
    assert late and late[0].startswith("step download (downloading) ran past its deadline of "
                                       "2s (deadline.download): stopped it (retrying in")
    child = int(pids.read_text().split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the step's process is gone...
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and
                _cmdline(p) == "sleep\x00301.7\x00"]  # ...and the command it ran with it
    s = StateStore(rig.config.state_dir).load()
    assert s.phase is Phase.ERROR and "downloading stopped: step download" in s.last_error
    assert s.next_check > time.time() and s.failures == 1  # backed off, not retried at once
    assert rig.entries() == ["tidehost-a.conf"]


def _cmdline(p: Path) -> str:
    try:
        return (p / "cmdline").read_text()
    except OSError:
        return ""


def test_a_verb_names_who_holds_the_step_lock(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    state = tmp_path / "state"
    cfg = tmp_path / "update.yaml"
    cfg.write_text(f"state_dir: {state}\nmetrics_file: ''\nchannel: {{url: http://127.0.0.1:1/}}\n"
                   f"channel: {{url: 'http://127.0.0.1:1/', root: {tmp_path}/root.json}}\n")
    (tmp_path / "root.json").write_text("{}")
    StateStore(state).save(State(phase=Phase.DOWNLOADING, target_version="2.0.0"))
    held = threading.Event()
    done = threading.Event()

    def daemon_step() -> None:
        with exclusive(state, what="daemon step"):
            held.set()
            done.wait(10)

    t = threading.Thread(target=daemon_step)
    t.start()
    held.wait(5)
    try:
        info = json.loads((state / "agent.lock").read_text())
        assert info["pid"] == os.getpid() and info["step"] == "daemon step"
        t0 = time.monotonic()
        code = main(["--config", str(cfg), "--defaults", "/nonexistent", "check", "--wait", "1"])
        waited = time.monotonic() - t0
        err = capsys.readouterr().err.strip()
        assert code == 3 and 1 <= waited < 5
        assert err.startswith(f"tidehost-update: {state} is busy: pid {os.getpid()} "
                              "(daemon step, state downloading) since "), err
        assert err.endswith("; waited 1s") and "\n" not in err
        with pytest.raises(StepBusy, match=r"busy: pid \d+ \(daemon step"):
            with exclusive(state, wait=0):
                pass
    finally:
        done.set()
        t.join()
    with exclusive(state, wait=0, what="tidehost-update check"):  # free again
        assert json.loads((state / "agent.lock").read_text())["step"] == "tidehost-update check"
