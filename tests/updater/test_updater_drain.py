"""Draining before the reboot, with a stand-in ``docker`` on PATH that answers as a swarm
manager does and records what it was asked (no Docker daemon runs here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from updater.config import Drain, OnTimeout
from updater.drain import Drainer

DOCKER = """#!/bin/sh
echo "$*" >> "$LOG"
case "$*" in
  "info --format"*) echo "active $MANAGER node-self-id" ;;
  "node ps"*) n=$(grep -c "node ps" "$LOG"); [ "$n" -le "$BUSY" ] && echo task1 ;;
  "service ls"*) echo "replicated 2/2"; echo "global 3/3" ;;
esac
exit 0
"""


@pytest.fixture
def docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("LOG", str(log))
    monkeypatch.setenv("MANAGER", "true")
    monkeypatch.setenv("BUSY", "2")
    return log


def calls(log: Path) -> list[str]:
    return [c for c in log.read_text().splitlines() if not c.startswith("info")]


def test_swarm_drain_waits_for_the_tasks_then_makes_the_node_active(docker: Path,
                                                                    tmp_path: Path) -> None:
    mark = tmp_path / "pre"
    d = Drainer(Drain(swarm=True, timeout=60, pre_reboot=(("touch", str(mark)),)),
                sleep=lambda s: None)
    assert d.drain(600)
    c = calls(docker)
    assert c[0] == "node update --availability drain node-self-id"
    assert sum(x.startswith("node ps node-self-id") for x in c) == 3  # busy twice, then empty
    assert mark.exists()  # pre_reboot ran after the tasks moved
    assert d.undrain()
    assert calls(docker)[-1] == "node update --availability active node-self-id"


def test_a_drain_that_does_not_finish_says_so(docker: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("BUSY", "1000")
    t = [0.0]
    d = Drainer(Drain(swarm=True, timeout=10, on_timeout=OnTimeout.WAIT),
                clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s))
    assert not d.drain(600)
    assert t[0] >= 10


def test_a_worker_or_no_swarm_drains_nothing_but_the_commands(docker: Path, monkeypatch,  # noqa: ANN001
                                                              tmp_path: Path) -> None:
    monkeypatch.setenv("MANAGER", "false")
    d = Drainer(Drain(swarm=True, post_health=(("false",),)), sleep=lambda s: None)
    assert d.drain(60)
    assert calls(docker) == []  # a worker cannot drain itself
    assert not d.undrain()  # post_health failed: reported
