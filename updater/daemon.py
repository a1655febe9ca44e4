"""The long-running service: reconcile at start, then step the agent until SIGTERM.

Each step runs in a forked child (``fork=True``, the default): the parent only holds the
config, the loop and the sd_notify socket, so the idle agent stays small (the HTTP, TUF and
crypto stacks are imported by the child and vanish with it), and a crash or leak in a step
cannot take the service down.  All state is on disk, so a child needs nothing from the
parent but the factory that builds the agent.

Every step runs under a deadline of its kind (``Deadlines``: the kind follows the phase the
child saved last -- checking, downloading, verifying, writing, rebooting, confirming, and
``lock`` for the rest).  When it passes, the parent ends the child's process group (SIGTERM,
then SIGKILL), logs one line and backs off as for any failure; the next child first marks
the abandoned work failed (``Agent.abandon``), as a restart would.

The step lock (``exclusive``, a flock on ``state_dir/agent.lock``) serialises the daemon's
steps and the CLI's verbs; its holder writes its pid, what it does and since when into the
lock file, so a verb that finds it busy says who holds it instead of waiting silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from updater.config import Deadlines
from updater.errors import StateError, StepBusy, UpdaterError
from updater.fields import human
from updater.schedule import backoff
from updater.state import Phase, StateStore

if TYPE_CHECKING:
    from updater.agent import Agent

log = logging.getLogger(__name__)
LOCKFILE = "agent.lock"
GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a step past its deadline
KINDS = {Phase.CHECKING: "check", Phase.DOWNLOADING: "download", Phase.VERIFYING: "verify",
         Phase.WRITING: "write", Phase.REBOOTING: "reboot", Phase.CONFIRMING: "confirm"}


def step_kind(phase: Phase) -> str:
    """The deadline kind of a step that is in ``phase`` (lock: taking, renewing, releasing)."""
    return KINDS.get(phase, "lock")


def holder(state_dir: Path) -> str:
    """Who holds the step lock, as one phrase: pid, what, since when, and the agent's phase."""
    try:
        info = json.loads((Path(state_dir) / LOCKFILE).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    since = float(info.get("since", 0) or 0)
    when = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if since else "?"
    try:
        phase = StateStore(state_dir).load().phase.value
    except StateError:
        phase = "?"
    return (f"pid {info.get('pid', '?')} ({info.get('step') or 'unknown'}, state {phase}) "
            f"since {when}" + (f", {time.time() - since:.0f}s ago" if since else ""))


@contextlib.contextmanager
def exclusive(state_dir: Path, *, wait: float | None = None, what: str = "") -> Iterator[None]:
    """Serialise the daemon's steps and the CLI's verbs on one host (flock).

    ``wait``: seconds to wait for a busy lock (None: for ever; 0: not at all).  While it
    waits it says once who holds the lock.

    Raises:
        StepBusy: still held after ``wait`` seconds; the text names the holder.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        end = None if wait is None else time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if end is not None and time.monotonic() >= end:
                    raise StepBusy(f"{state_dir} is busy: {holder(state_dir)}"
                                   + (f"; waited {wait:.0f}s" if wait else "")) from None
                if not told:
                    log.info("waiting for the agent's step lock, held by %s", holder(state_dir))
                    told = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "step": what,
                                  "since": time.time()}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
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


def one_step(make_agent: Callable[[], Agent], state_dir: Path, first: bool,
             abandoned: str = "") -> dict[str, object]:
    """Build the agent and run ``startup()`` (first) or ``step()``; a JSON-able result.
    ``abandoned``: the last step was ended from outside (why); mark its work failed first."""
    try:
        with exclusive(state_dir, wait=60.0, what="daemon step"):
            agent = make_agent()
            if first:
                try:
                    agent.startup()
                except StateError as e:
                    log.error("%s; starting from a fresh state", e)
                    agent.store.quarantine()
                    agent.startup()
                return {"delay": 0.0, "phase": str(agent.load().phase)}
            if abandoned:
                agent.abandon(abandoned)
                return {"delay": 0.0, "phase": str(agent.load().phase)}
            delay = agent.step()
            return {"delay": delay, "phase": str(agent.load().phase)}
    except (UpdaterError, OSError) as e:  # e.g. disk full while saving the state
        return {"error": str(e)}


class _Child:
    pid = 0


def _phase_since(state_dir: Path) -> tuple[Phase, float]:
    try:
        s = StateStore(state_dir).load()
    except StateError:
        return Phase.IDLE, 0.0
    return s.phase, s.since


def _end(pid: int) -> None:
    """SIGTERM the child's process group (its commands too), SIGKILL it after ``GRACE``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        end = time.monotonic() + GRACE
        while time.monotonic() < end:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            time.sleep(0.05)


def _forked(make_agent: Callable[[], Agent], state_dir: Path, first: bool, child: _Child,
            deadline: Callable[[Phase], tuple[str, int]], abandoned: str = "",
            tick: float = 1.0) -> dict[str, object]:
    r, w = os.pipe()
    started = time.time()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.setpgid(0, 0)  # its own group: a stopped step takes its commands with it
            os.close(r)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            os.write(w, json.dumps(one_step(make_agent, state_dir, first, abandoned)).encode())
            code = 0
        except BaseException:  # noqa: BLE001 - reported, then the child exits
            log.exception("step crashed")
        finally:
            logging.shutdown()
            os._exit(code)
    with contextlib.suppress(OSError):  # both sides set it: no race with a kill
        os.setpgid(pid, pid)
    child.pid = pid
    os.close(w)
    chunks = []
    late = ""
    with os.fdopen(r, "rb", buffering=0) as f:
        while True:
            ready, _, _ = select.select([f], [], [], tick)
            if ready:
                if not (data := f.read(65536)):
                    break
                chunks.append(data)
                continue
            phase, since = _phase_since(state_dir)
            kind, limit = deadline(phase)
            if time.time() - max(started, since) > limit:
                late = (f"step {kind} ({phase}) ran past its deadline of {human(limit)} "
                        f"(deadline.{kind}): stopped it")
                _end(pid)
                break
    if not late:
        os.waitpid(pid, 0)
    child.pid = 0
    if late:
        return {"error": late, "abandoned": late}
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return {"error": "step ended without a result"}


def deadlines_of(deadlines: Deadlines, health_deadline: int) -> Callable[[Phase], tuple[str, int]]:
    """Phase -> (kind, seconds); the confirm step may always outlast the health gate."""
    def of(phase: Phase) -> tuple[str, int]:
        kind = step_kind(phase)
        limit = int(getattr(deadlines, kind))
        if kind == "confirm":
            limit = max(limit, health_deadline + 60)
        return kind, limit

    return of


def run_daemon(make_agent: Callable[[], Agent], state_dir: Path, *, fork: bool = True,
               stop: threading.Event | None = None,
               rand: Callable[[], float] | None = None,
               deadlines: Deadlines | None = None, health_deadline: int = 300,
               tick: float = 1.0) -> None:
    stop = stop or threading.Event()
    child = _Child()
    deadline = deadlines_of(deadlines or Deadlines(), health_deadline)

    def on_signal(*_: object) -> None:
        stop.set()
        if child.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread (tests)
            signal.signal(sig, on_signal)
    failures = 0
    first = True
    abandoned = ""
    carry = 0.0  # the backoff of a step ended at its deadline, waited after the clean-up
    while not stop.is_set():
        if fork:
            res = _forked(make_agent, state_dir, first, child, deadline, abandoned, tick)
        else:
            res = one_step(make_agent, state_dir, first, abandoned)
        abandoned = str(res.get("abandoned", ""))
        if "error" in res and stop.is_set():
            break  # the step was stopped with the service
        if "error" in res:
            failures += 1
            delay = backoff(failures, base=30, cap=3600, rand=rand)
            log.error("%s (retrying in %.0fs)", res["error"], delay)
            if abandoned:  # mark its work failed at once; then wait
                carry, delay = delay, 0.0
        else:
            failures = 0 if not carry else failures
            delay = max(float(res["delay"]), carry)  # type: ignore[arg-type]
            carry = 0.0
            notify(f"STATUS={res.get('phase', '')}")
        if first:
            notify("READY=1")
            first = False
        if delay or not abandoned:
            stop.wait(min(max(delay, 1.0), 3600.0))
    notify("STOPPING=1")
    log.info("stopped")
