"""Moving work off this node before its reboot, and back after the health gate.

Built in for Docker swarm (``drain.swarm``): ``docker node update --availability drain
<self>``, then wait until no task meant to run is left on this node and every replicated
service runs all its replicas again (elsewhere); ``--availability active`` after the health
gate.  ``docker node update`` is a manager's command: on a worker the built-in drain says so
and does nothing (use ``drain.pre_reboot``).  ``drain.pre_reboot`` commands run after the
swarm drain, ``drain.post_health`` commands after the node is active again; all of it within
``drain.timeout`` (and the lock step's deadline).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from updater.config import Drain
from updater.errors import CommandError
from updater.run import run

log = logging.getLogger(__name__)
POLL = 2.0
Runner = Callable[..., Any]


def _settled(tasks_here: str, replicas: str) -> bool:
    """No task is meant to run here any more, and every replicated service runs all its
    replicas (``docker service ls --format '{{.Mode}} {{.Replicas}}'``). Pure."""
    if tasks_here.strip():
        return False
    for line in replicas.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "replicated":
            continue
        running, _, wanted = parts[1].partition("/")
        if running != wanted:
            return False
    return True


class Drainer:
    def __init__(self, config: Drain, *, runner: Runner = run,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.run = runner
        self.clock = clock
        self.sleep = sleep

    def _out(self, argv: Sequence[str], timeout: float = 60) -> str:
        return self.run(list(argv), timeout=max(timeout, 1.0)).stdout.decode(errors="replace")

    def _swarm_node(self) -> str:
        """This node's swarm id if it is a manager that can drain itself, else ""."""
        try:
            info = self._out(["docker", "info", "--format",
                              "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} "
                              "{{.Swarm.NodeID}}"]).split()
        except CommandError as e:
            log.warning("drain: docker info failed (%s): not draining the swarm node", e)
            return ""
        if len(info) < 3 or info[0] != "active":
            log.info("drain: not in a swarm: nothing to drain")
            return ""
        if info[1] != "true":
            log.warning("drain: this swarm node is a worker; docker node update needs a "
                        "manager: not drained (use drain.pre_reboot for workers)")
            return ""
        return info[2]

    def drain(self, budget: float) -> bool:
        """Drain within ``min(budget, drain.timeout)`` seconds; False: it did not finish."""
        end = self.clock() + min(budget, self.config.timeout)
        if self.config.swarm and (node := self._swarm_node()):
            try:
                self._out(["docker", "node", "update", "--availability", "drain", node])
                log.info("drain: swarm node %s set to drain; waiting for its tasks to move",
                         node)
                while not self._moved(node):
                    if self.clock() >= end:
                        log.error("drain: swarm tasks still on this node after %.0fs",
                                  self.config.timeout)
                        return False
                    self.sleep(POLL)
                log.info("drain: this node's tasks run elsewhere")
            except CommandError as e:
                log.error("drain: %s", e)
                return False
        return self._commands(self.config.pre_reboot, end, "pre_reboot")

    def _moved(self, node: str) -> bool:
        here = self._out(["docker", "node", "ps", node, "--filter", "desired-state=running",
                          "--format", "{{.ID}}"])
        services = self._out(["docker", "service", "ls", "--format",
                              "{{.Mode}} {{.Replicas}}"])
        return _settled(here, services)

    def undrain(self) -> bool:
        """Make the node active again and run ``post_health``; False: something failed."""
        ok = True
        if self.config.swarm and (node := self._swarm_node()):
            try:
                self._out(["docker", "node", "update", "--availability", "active", node])
                log.info("drain: swarm node %s active again", node)
            except CommandError as e:
                log.error("drain: cannot make the node active again: %s", e)
                ok = False
        end = self.clock() + self.config.timeout
        return self._commands(self.config.post_health, end, "post_health") and ok

    def _commands(self, commands: Sequence[Sequence[str]], end: float, what: str) -> bool:
        for argv in commands:
            left = end - self.clock()
            if left <= 0:
                log.error("drain: no time left for drain.%s %s", what, " ".join(argv))
                return False
            try:
                self.run(list(argv), timeout=left)
            except CommandError as e:
                log.error("drain.%s: %s", what, e)
                return False
            log.info("drain.%s: %s done", what, " ".join(argv))
        return True
