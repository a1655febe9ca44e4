"""Watch a VM cluster update itself: each node's agent, the reboot lock, a replicated service.

What ``make demo`` shows and the cluster end-to-end test asserts: after a release is
published, every node's agent stages it, takes the reboot lock in the cluster's own etcd,
reboots into the other slot, passes its health gate and releases the lock; the probe of the
replicated service (``probe.Prober``, inside the cluster's namespace) records how long it
ever went unanswered. The arithmetic (gaps, reboot spans, the report) is pure and tested
without VMs; ``watch`` does the I/O.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagebuild.core.errors import VMError
from imagebuild.core.wait import poll
from imagebuild.lab.agent import AgentStatus, Phase, status
from imagebuild.lab.cluster import ClusterState
from imagebuild.lab.probe import Prober
from imagebuild.lab.vm import VM

# Done with a version: at rest on it, or already polling the channel again (confirming ->
# idle -> checking can pass between two looks of the watcher).
RESTING = frozenset({Phase.IDLE, Phase.ROLLED_BACK, Phase.CHECKING})


# --- pure ---------------------------------------------------------------------------------


def longest_gap(answers: Sequence[tuple[float, bool]], start: float, end: float) -> float:
    """The longest span inside [start, end] with no answered probe (answers sorted by time)."""
    last, gap = start, 0.0
    for t, ok in answers:
        if ok and start <= t <= end:
            gap, last = max(gap, t - last), t
    return max(gap, end - last)


@dataclass
class NodeProgress:
    """One node's way to the new version, in watcher time (time.time()).

    Looks are sequential SSH calls that may be slow or time out under load, so an
    unreachable node is not yet a rebooting one: a span counts from the first look that saw
    it rebooting, or from the first unreachable look before it came back confirming or
    updated (the reboot, or the reboot and its health gate, fell between looks).
    ``first_down`` and ``last_down`` are only what was seen (the agent in
    ``rebooting``/``confirming``, or unreachable once seen rebooting): the overlap check uses
    them alone, never a guess from a slow look."""

    name: str
    went_down: float | None = None  # the reboot's start as best seen (first_down or earlier)
    updated: float | None = None  # first seen at rest on the new version
    first_down: float | None = None  # first look that saw it rebooting or confirming
    last_down: float | None = None  # last look that saw it so (or unreachable, rebooting)
    staged: bool = False
    last: AgentStatus | None = None
    unreachable_since: float | None = None  # staged and unreachable since (not yet seen down)

    def observe(self, t: float, st: AgentStatus | Mapping[str, Any] | None,
                version: str) -> None:  # fmt: skip
        if self.updated is not None:
            return
        if st is None:
            if self.last is not None and self.last.phase is Phase.REBOOTING:
                self.last_down = t  # down in its reboot (not a slow look once back confirming)
            elif self.staged and self.first_down is None and self.unreachable_since is None:
                self.unreachable_since = t  # rebooting, or only a slow look: known later
            return
        self.last = st = AgentStatus.parse(st)
        if st.target_version == version or st.phase is Phase.REBOOTING:
            self.staged = True
        if st.phase in (Phase.REBOOTING, Phase.CONFIRMING):
            if self.first_down is None:
                self.first_down = t
                back = st.phase is Phase.CONFIRMING and self.unreachable_since is not None
                self.went_down = self.unreachable_since if back else t
            self.last_down = t
        if st.version == version and st.phase in RESTING:
            self.updated = t
            if self.went_down is None:  # its reboot and health gate fell between two looks
                self.went_down = self.unreachable_since
        self.unreachable_since = None

    @property
    def reboot_seconds(self) -> float | None:
        if self.went_down is None or self.updated is None:
            return None
        return self.updated - self.went_down


@dataclass
class RolloutReport:
    version: str
    started: float
    finished: float | None = None
    nodes: dict[str, NodeProgress] = field(default_factory=dict)
    most_holders: int = 0
    holders_seen: set[str] = field(default_factory=set)
    answers: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(n.updated is not None for n in self.nodes.values())

    @property
    def total_seconds(self) -> float:
        return (self.finished or time.time()) - self.started

    @property
    def reboot_sum(self) -> float:
        return sum(n.reboot_seconds or 0.0 for n in self.nodes.values())

    @property
    def longest_gap(self) -> float:
        return longest_gap(self.answers, self.started, self.finished or time.time())

    def overlapping_reboots(self) -> list[tuple[str, str]]:
        """Pairs of nodes seen down at once (must be none with max=1): the later one seen
        rebooting or confirming before the earlier one's last look in that state."""
        spans = sorted((n.first_down, n.last_down, n.name) for n in self.nodes.values()
                       if n.first_down is not None and n.last_down is not None)  # fmt: skip
        return [(a[2], b[2]) for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1]]

    def summary(self) -> str:
        lines = [f"rollout of {self.version}: {self.total_seconds:.0f} s in all; "
                 f"sum of single-node reboots {self.reboot_sum:.0f} s"]  # fmt: skip
        for n in self.nodes.values():
            secs = n.reboot_seconds
            lines.append(f"  {n.name}: rebooting to updated {secs:.0f} s" if secs is not None
                         else f"  {n.name}: {'updated' if n.updated else 'not updated'}, "
                              "its reboot not observed")  # fmt: skip
        ok = sum(1 for _, a in self.answers if a)
        lines.append(f"service: {ok}/{len(self.answers)} probes answered, longest gap "
                     f"{self.longest_gap:.1f} s; most reboot-lock holders at once: "
                     f"{self.most_holders}")  # fmt: skip
        return "\n".join(lines)


GATE_VERDICTS = {Phase.IDLE: "passed", Phase.CHECKING: "passed",
                 Phase.ROLLED_BACK: "failed (rolled back)"}  # fmt: skip


@dataclass
class Narrator:
    """What a person watching the rollout is told besides each node's state changes (pure):
    who takes, hands on and releases the reboot lock and who waits for it, and how long a
    node has been in its health gate (every ``gate_every`` seconds while it is there)."""

    started: float
    gate_every: float = 30.0
    holders: tuple[str, ...] = ()
    gate_since: dict[str, float] = field(default_factory=dict)
    gate_told: dict[str, float] = field(default_factory=dict)

    def stamp(self, t: float) -> str:
        return f"  [{time.strftime('%H:%M:%S', time.localtime(t))} +{t - self.started:.0f}s]"

    def lock(self, t: float, holders: Sequence[str],
             waiting: Sequence[str]) -> str | None:  # fmt: skip
        """A line when the lock's holders change (None when they did not)."""
        now, before = tuple(sorted(holders)), self.holders
        if now == before:
            return None
        self.holders = now
        gone = [h for h in before if h not in now]
        came = [h for h in now if h not in before]
        if gone and came:
            what = f"handed on from {', '.join(gone)} to {', '.join(came)}"
        elif came:
            what = f"taken by {', '.join(came)}"
        else:
            what = f"released by {', '.join(gone)}"
        queue = f"; waiting: {', '.join(sorted(waiting))}" if waiting else "; nobody waiting"
        return f"{self.stamp(t)} reboot lock {what}{queue}"

    def gate(self, t: float, name: str, st: AgentStatus | None) -> str | None:
        """A line when ``name`` enters its health gate, then every ``gate_every`` s in it,
        and when it leaves it (None otherwise; an unreachable node says nothing)."""
        if st is None:
            return None
        since = self.gate_since.get(name)
        if st.phase is Phase.CONFIRMING:
            if since is None:
                self.gate_since[name] = self.gate_told[name] = t
                return f"{self.stamp(t)} {name}: health gate on {st.version} started"
            if t - self.gate_told[name] >= self.gate_every:
                self.gate_told[name] = t
                return f"{self.stamp(t)} {name}: health gate, {t - since:.0f} s so far"
            return None
        if since is not None:
            del self.gate_since[name], self.gate_told[name]
            verdict = GATE_VERDICTS.get(st.phase, f"left for {st.phase}")
            return f"{self.stamp(t)} {name}: health gate {verdict} after {t - since:.0f} s"
        return None


# --- I/O ----------------------------------------------------------------------------------


def lock_holders(vms: Sequence[VM]) -> list[str] | None:
    """The reboot lock's holders, read on the first node that answers (None: none did)."""
    for vm in vms:
        try:
            out = vm.ssh("sudo tidehost-update lock status --json", check=False, timeout=30)
            return list(json.loads(out).get("holders", []))
        except (VMError, ValueError):  # rebooting, busy or half-up: ask the next node
            continue
    return None


def watch(
    cluster: ClusterState,
    version: str,
    timeout: float,
    prober: Prober | None = None,
    on_change: Callable[[str, AgentStatus], None] | None = None,
    every: float = 10.0,
    say: Callable[[str], None] | None = None,
) -> RolloutReport:
    """Poll every node until all run ``version``; raise VMError on timeout or a dead QEMU.
    ``say`` is told the lock's hand-offs and the health gates' progress (``Narrator``).
    Each look starts ``tidehost-update`` (Python) on every guest over SSH: under emulation
    that is CPU the rebooting node needs, so the looks are ``every`` seconds apart."""
    report = RolloutReport(version=version, started=time.time())
    narrator = Narrator(report.started)
    vms = [cluster.vm(n.name) for n in cluster.nodes]
    report.nodes = {vm.hostname: NodeProgress(vm.hostname) for vm in vms}
    seen: dict[str, tuple[Any, ...]] = {}

    def look() -> bool:
        """One round over the nodes and the lock; True once every node runs ``version``."""
        for vm in vms:
            st = status(vm)
            report.nodes[vm.hostname].observe(time.time(), st, version)
            if st is not None and st.step[:3] != seen.get(vm.hostname) and on_change:
                on_change(vm.hostname, st)
            if st is not None:
                seen[vm.hostname] = st.step[:3]
            if say and (line := narrator.gate(time.time(), vm.hostname, st)):
                say(line)

        def resting_first(v: VM) -> bool:
            last = report.nodes[v.hostname].last
            return last is None or last.phase is not Phase.IDLE

        holders = lock_holders(sorted(vms, key=resting_first))
        if holders is not None:
            report.most_holders = max(report.most_holders, len(holders))
            report.holders_seen.update(holders)
            lasts = {name: p.last for name, p in report.nodes.items() if p.last is not None}
            waiting = [n for n, st in lasts.items() if st.phase is Phase.WAITING_FOR_LOCK]
            if say and (line := narrator.lock(time.time(), holders, waiting)):
                say(line)
        if prober:
            report.answers = prober.snapshot()
        return report.done

    if not poll(look, timeout, every=every):
        left = [n for n, p in report.nodes.items() if p.updated is None]
        raise VMError(f"rollout of {version}: {', '.join(left)} not updated within "
                      f"{timeout:.0f}s\n{report.summary()}")  # fmt: skip
    report.finished = time.time()
    if prober:
        report.answers = prober.snapshot()
    return report
