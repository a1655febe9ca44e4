"""The long-running service: reconcile at start, then step the agent until SIGTERM."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from updater.agent import Agent
from updater.errors import StateError, UpdaterError
from updater.schedule import backoff

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


def run_daemon(agent: Agent, stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread (tests)
            signal.signal(sig, lambda *_: stop.set())
    state_dir = agent.config.state_dir
    with exclusive(state_dir):
        try:
            agent.startup()
        except StateError as e:
            log.error("%s; starting from a fresh state", e)
            agent.store.quarantine()
            agent.startup()
    notify("READY=1")
    failures = 0
    while not stop.is_set():
        try:
            with exclusive(state_dir):
                delay = agent.step()
            failures = 0
        except (UpdaterError, OSError) as e:  # e.g. disk full while saving the state
            failures += 1
            delay = backoff(failures, base=30, cap=3600, rand=agent.rand)
            log.error("%s (retrying in %.0fs)", e, delay)
        notify(f"STATUS={agent.load().phase}")
        stop.wait(min(max(delay, 1.0), 3600.0))
    notify("STOPPING=1")
    log.info("stopped")
