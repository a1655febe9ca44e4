"""The rolling-update watcher's arithmetic, without VMs: service gaps, reboot spans, overlaps,
and the probe against a real HTTP server on loopback."""

from __future__ import annotations

import http.server
import socket
import threading

from imagebuild.lab.agent import AgentStatus
from imagebuild.lab.probe import probe
from imagebuild.lab.rollout import Narrator, NodeProgress, RolloutReport, longest_gap

V = "1.1.0"


def test_longest_gap_counts_the_edges_and_ignores_failures() -> None:
    answers = [(1.0, True), (2.0, False), (3.0, False), (7.5, True), (8.0, True)]
    assert longest_gap(answers, 0.0, 9.0) == 6.5  # 1.0 -> 7.5
    assert longest_gap(answers, 0.0, 20.0) == 12.0  # 8.0 -> the end: still unanswered
    assert longest_gap([], 5.0, 8.0) == 3.0  # never answered: the whole span
    assert longest_gap([(1.0, True), (50.0, True)], 10.0, 20.0) == 10.0  # outside the span


def _st(version: str, state: str, target: str = "") -> dict:
    return {"version": version, "state": state, "target_version": target, "slot": "a"}


def test_a_node_goes_down_once_staged_and_is_done_when_idle_on_the_version() -> None:
    n = NodeProgress("node1")
    n.observe(10, None, V)  # unreachable before it staged anything: not a reboot
    assert n.went_down is None
    n.observe(20, _st("1.0.0", "staged", V), V)
    n.observe(30, _st("1.0.0", "waiting-for-lock", V), V)
    n.observe(40, None, V)  # rebooting (the short "rebooting" state was missed)
    n.observe(50, None, V)
    n.observe(60, _st(V, "confirming", V), V)
    assert n.updated is None
    n.observe(70, _st(V, "idle"), V)
    n.observe(80, _st(V, "idle"), V)
    assert (n.went_down, n.updated, n.reboot_seconds) == (40, 70, 30)


def test_a_node_that_confirmed_and_polls_again_is_done() -> None:
    # confirming -> idle -> checking between two looks: it released the lock at "idle", so
    # its reboot ended then, not when it is next seen idle (a false overlap with the next node)
    n = NodeProgress("node2")
    n.observe(10, _st("1.0.0", "rebooting", V), V)
    n.observe(20, _st(V, "confirming", V), V)
    n.observe(30, _st(V, "checking"), V)
    n.observe(40, _st(V, "idle"), V)
    assert (n.went_down, n.updated) == (10, 30)


def test_a_reboot_and_health_gate_between_two_looks_count_from_the_unreachable_look() -> None:
    # seen in a 3-node run: waiting, then unreachable, then next seen idle on the new version
    n = NodeProgress("node2")
    n.observe(10, _st("1.0.0", "waiting-for-lock", V), V)
    n.observe(20, None, V)
    n.observe(30, None, V)
    n.observe(390, _st(V, "idle"), V)
    assert (n.went_down, n.updated, n.reboot_seconds) == (20, 390, 370)
    assert n.first_down is None  # seen down never: no span for the overlap check
    # a slow look while it waited is forgotten once it answers again
    m = NodeProgress("node3")
    m.observe(10, _st("1.0.0", "waiting-for-lock", V), V)
    m.observe(20, None, V)
    m.observe(30, _st("1.0.0", "waiting-for-lock", V), V)
    m.observe(90, _st(V, "idle"), V)
    assert m.updated == 90 and m.reboot_seconds is None


def test_a_rollback_is_not_an_update() -> None:
    n = NodeProgress("node1")
    n.observe(1, _st("1.0.0", "rebooting", V), V)
    n.observe(9, _st("1.0.0", "rolled-back"), V)
    assert n.went_down == 1 and n.updated is None


def test_report_totals_and_overlaps() -> None:
    r = RolloutReport(version=V, started=0.0, finished=100.0)
    for name, down, up in (("node1", 10, 30), ("node2", 35, 60), ("node3", 55, 90)):
        r.nodes[name] = NodeProgress(name, went_down=down, updated=up, first_down=down,
                                     last_down=up - 1)  # fmt: skip
    r.answers = [(t, True) for t in range(0, 101, 2)]
    assert r.done and r.reboot_sum == 20 + 25 + 35
    assert r.overlapping_reboots() == [("node2", "node3")]
    assert r.longest_gap == 2
    text = r.summary()
    assert "100 s in all; sum of single-node reboots 80 s" in text and "longest gap 2.0 s" in text


def _rollout(node3_reboots_at: float) -> RolloutReport:
    """Three nodes through one lock, as slow looks see them (a CI run's timeline, shortened):
    node1 is unreachable once while it waits, node3 is seen rebooting before node1 is next
    seen at rest (looks go node by node; node1 released the lock before node3 took it)."""
    r = RolloutReport(version=V, started=0.0)
    r.nodes = {n: NodeProgress(n) for n in ("node1", "node2", "node3")}
    looks = [
        (90, "node1", _st("1.0.0", "waiting-for-lock", V)),
        (95, "node3", _st("1.0.0", "waiting-for-lock", V)),
        (100, "node2", _st("1.0.0", "rebooting", V)),
        (110, "node2", None),
        (150, "node1", None),  # a look that timed out: not a reboot
        (160, "node1", _st("1.0.0", "waiting-for-lock", V)),
        (200, "node2", _st(V, "confirming", V)),
        (210, "node2", _st(V, "confirming", V)),
        (220, "node2", _st(V, "idle")),
        (230, "node1", None),  # it took the lock and rebooted between two looks
        (300, "node1", _st(V, "confirming", V)),
        (node3_reboots_at, "node3", _st("1.0.0", "rebooting", V)),
        (320, "node1", _st(V, "idle")),
        (330, "node3", None),
        (400, "node3", _st(V, "confirming", V)),
        (420, "node3", _st(V, "idle")),
    ]
    for t, name, st in sorted(looks, key=lambda look: look[0]):
        r.nodes[name].observe(t, st, V)
    return r


def test_slow_looks_are_no_overlap_and_a_real_overlap_is_found() -> None:
    r = _rollout(node3_reboots_at=310)
    assert r.done and r.overlapping_reboots() == []
    assert [r.nodes[n].reboot_seconds for n in ("node1", "node2", "node3")] == [90, 120, 110]
    # node3 seen rebooting (250) before node1 was seen back in its health gate (300): both down
    assert _rollout(node3_reboots_at=250).overlapping_reboots() == [("node3", "node1")]


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"node2\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_probe_tries_the_next_node_when_one_is_down() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = f"http://127.0.0.1:{server.server_address[1]}/"
        down = _closed_url()
        assert probe([down, up], timeout=2) == "node2"
        assert probe([down], timeout=2) == "-"
    finally:
        server.shutdown()
        server.server_close()


def _closed_url() -> str:
    """A loopback URL on which nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def test_the_narrator_tells_each_lock_hand_off_and_who_waits() -> None:
    n = Narrator(started=1000.0)
    assert n.lock(1001, [], []) is None  # nobody holds it yet: nothing to say
    line = n.lock(1010, ["node1"], ["node2", "node3"])
    assert line is not None and line.endswith(
        "+10s] reboot lock taken by node1; waiting: node2, node3"
    )
    assert n.lock(1020, ["node1"], ["node3", "node2"]) is None  # unchanged
    line = n.lock(1100, ["node2"], ["node3"])
    assert line is not None and line.endswith(
        "+100s] reboot lock handed on from node1 to node2; waiting: node3"
    )
    line = n.lock(1200, [], [])
    assert line is not None and line.endswith(
        "+200s] reboot lock released by node2; nobody waiting"
    )


def test_the_narrator_follows_a_health_gate_until_it_passes_or_fails() -> None:
    n = Narrator(started=0.0, gate_every=30)
    confirming = AgentStatus.parse(_st(V, "confirming", V))
    assert n.gate(5, "node1", None) is None  # unreachable: rebooting
    line = n.gate(10, "node1", confirming)
    assert line is not None and line.endswith("node1: health gate on 1.1.0 started")
    assert n.gate(20, "node1", confirming) is None
    line = n.gate(41, "node1", confirming)
    assert line is not None and line.endswith("node1: health gate, 31 s so far")
    line = n.gate(50, "node1", AgentStatus.parse(_st(V, "idle")))
    assert line is not None and line.endswith("node1: health gate passed after 40 s")
    assert n.gate(60, "node1", AgentStatus.parse(_st(V, "idle"))) is None
    n.gate(70, "node2", confirming)
    line = n.gate(99, "node2", AgentStatus.parse(_st("1.0.0", "rolled-back")))
    assert line is not None and line.endswith("node2: health gate failed (rolled back) after 29 s")
