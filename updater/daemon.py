"""The long-running service: reconcile at start, then step the agent until SIGTERM.

Each step runs in a forked child (``fork=True``, the default): the parent only holds the
config, the loop and the sd_notify socket, so the idle agent stays small (the HTTP, TUF and
crypto stacks are imported by the child and vanish with it), and a crash or leak in a step
cannot take the service down.  All state is on disk, so a child needs nothing from the
parent but the factory that builds the agent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from updater.errors import StateError, UpdaterError
from updater.schedule import backoff

if TYPE_CHECKING:
    from updater.agent import Agent

log = logging.getLogger(__name__)
LOCKFILE = "agent.lock"


@contextlib.contextmanager
def exclusive(state_dir: Path, *, wait: bool = True) -> Iterator[None]:
    """Serialise the daemon's steps and the CLI's verbs on one host (flock)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise UpdaterError(f"{state_dir}: another tidehost-update is busy") from None
        yield
    finally:
        os.close(fd)


def notify(message: str) -> None:
    """sd_notify without libsystemd (Type=notify services)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    import socket

    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), addr)


def one_step(make_agent: Callable[[], Agent], state_dir: Path, first: bool) -> dict[str, object]:
    """Build the agent and run ``startup()`` (first) or ``step()``; a JSON-able result."""
    try:
        with exclusive(state_dir):
            agent = make_agent()
            if first:
                try:
                    agent.startup()
                except StateError as e:
                    log.error("%s; starting from a fresh state", e)
                    agent.store.quarantine()
                    agent.startup()
                return {"delay": 0.0, "phase": str(agent.load().phase)}
            delay = agent.step()
            return {"delay": delay, "phase": str(agent.load().phase)}
    except (UpdaterError, OSError) as e:  # e.g. disk full while saving the state
        return {"error": str(e)}


class _Child:
    pid = 0


def _forked(make_agent: Callable[[], Agent], state_dir: Path, first: bool,
            child: _Child) -> dict[str, object]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(r)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            os.write(w, json.dumps(one_step(make_agent, state_dir, first)).encode())
            code = 0
        except BaseException:  # noqa: BLE001 - reported, then the child exits
            log.exception("step crashed")
        finally:
            logging.shutdown()
            os._exit(code)
    child.pid = pid
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while data := f.read():
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    child.pid = 0
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return {"error": f"step ended without a result (wait status {status})"}


def run_daemon(make_agent: Callable[[], Agent], state_dir: Path, *, fork: bool = True,
               stop: threading.Event | None = None,
               rand: Callable[[], float] | None = None) -> None:
    stop = stop or threading.Event()
    child = _Child()

    def on_signal(*_: object) -> None:
        stop.set()
        if child.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread (tests)
            signal.signal(sig, on_signal)
    failures = 0
    first = True
    while not stop.is_set():
        if fork:
            res = _forked(make_agent, state_dir, first, child)
        else:
            res = one_step(make_agent, state_dir, first)
        if "error" in res and stop.is_set():
            break  # the step was stopped with the service
        if "error" in res:
            failures += 1
            delay = backoff(failures, base=30, cap=3600, rand=rand)
            log.error("%s (retrying in %.0fs)", res["error"], delay)
        else:
            failures = 0
            delay = float(res["delay"])  # type: ignore[arg-type]
            notify(f"STATUS={res.get('phase', '')}")
        if first:
            notify("READY=1")
            first = False
        stop.wait(min(max(delay, 1.0), 3600.0))
    notify("STOPPING=1")
    log.info("stopped")
