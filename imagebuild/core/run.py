"""Every subprocess of the workstation side goes through here: ``run`` waits for a
command, ``spawn`` starts one and hands back a ``Process``, ``fork`` runs a function of the
toolkit in a child process of its own (a server that outlives the command that started it).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from imagebuild.core.errors import CommandTimeout, StageError, ToolMissingError

log = logging.getLogger("tidehost.run")


def require(*tools: str) -> None:
    """Raise ToolMissingError naming every program of ``tools`` not on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise ToolMissingError(
            f"missing tool(s): {', '.join(missing)} (run `make setup` or apt-get install them)"
        )


def run(
    cmd: Sequence[str | Path],
    *,
    check: bool = True,
    capture: bool = False,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    stream: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd``, logging it at debug level; on failure raise StageError with its stderr.

    ``stream`` shows the command's output as progress lines while keeping it for the error
    message (and for callers, as ``stderr`` of the result).
    """
    argv = [str(c) for c in cmd]
    log.debug("$ %s", shlex.join(argv))
    if stream:
        return _run_streaming(argv, check=check, env=env, cwd=cwd)
    try:
        proc = subprocess.run(
            argv,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise ToolMissingError(f"missing tool: {argv[0]} (run `make setup`)") from None
    except subprocess.TimeoutExpired:
        raise CommandTimeout(f"timed out after {timeout}s: {shlex.join(argv)}") from None
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        tail = f": {err[-1]}" if err else ""
        log.error("command failed (exit %d): %s", proc.returncode, shlex.join(argv))
        for line in err[-20:]:
            log.error("  %s", line)
        raise StageError(f"{argv[0]} exited {proc.returncode}{tail}")
    return proc


def _run_streaming(
    argv: list[str], *, check: bool, env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.CompletedProcess[bytes]:
    lines: list[bytes] = []
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    except FileNotFoundError:
        raise ToolMissingError(f"missing tool: {argv[0]} (run `make setup`)") from None
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.append(raw)
        text = raw.decode(errors="replace").rstrip()
        if text:
            log.info("    %s", text[-200:])
    rc = proc.wait()
    result = subprocess.CompletedProcess(argv, rc, b"", b"".join(lines))
    if check and rc != 0:
        log.error("command failed (exit %d): %s", rc, shlex.join(argv))
        last = next((ln for ln in reversed(lines) if ln.strip()), b"").decode(errors="replace")
        raise StageError(f"{argv[0]} exited {rc}: {last.strip()}")
    return result


def output(cmd: Sequence[str | Path], **kw: object) -> str:
    """Run ``cmd`` and return its stdout as text."""
    return run(cmd, capture=True, **kw).stdout.decode()  # type: ignore[arg-type]


class Process:
    """A program started by ``spawn``: ours to wait for, stop, or leave running."""

    def __init__(self, argv: list[str], popen: subprocess.Popen[bytes]) -> None:
        self.argv = argv
        self._popen = popen

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status, or None while it runs."""
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until it exits (at most ``timeout`` seconds); its exit status, or None."""
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.alive():
            self._popen.kill()
        self._popen.wait()

    def stop(self, timeout: float = 10, sig: int = signal.SIGTERM) -> None:
        """Send ``sig``; kill it if it has not exited within ``timeout`` seconds."""
        if self.alive():
            self._popen.send_signal(sig)
            if self.wait(timeout) is None:
                self.kill()


def spawn(
    cmd: Sequence[str | Path],
    *,
    log: Path | None = None,
    new_session: bool = False,
    env: Mapping[str, str] | None = None,
) -> Process:
    """Start ``cmd`` without waiting for it; its output is appended to ``log`` (a file, never
    an unread pipe that could fill up) or discarded. ``new_session``: it outlives us."""
    argv = [str(c) for c in cmd]
    log_path = f" > {log}" if log else ""
    logging.getLogger("tidehost.run").debug("$ %s &%s", shlex.join(argv), log_path)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=new_session,
                                 env=dict(env) if env is not None else None)  # fmt: skip
    except FileNotFoundError:
        raise ToolMissingError(f"missing tool: {argv[0]} (run `make setup`)") from None
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    return Process(argv, popen)


_PR_SET_NAME = 15


def fork(target: Callable[[], object], *, log: Path, name: str) -> int:
    """Run ``target()`` in a child process in a session of its own (it outlives us, like a
    daemon), its output appended to ``log``; return the child's pid.

    The child is named ``name`` (``/proc/PID/comm``, at most 15 characters), so that
    ``forked_alive`` does not take a recycled pid for it. The child exits when ``target``
    returns (status 0) or raises (status 1, the traceback in ``log``).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        for other in os.listdir("/proc/self/fd"):  # nothing of ours kept open (pipes, sockets)
            if int(other) > 2:
                with contextlib.suppress(OSError):
                    os.close(int(other))
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        target()
        status = 0
    except BaseException:  # noqa: BLE001 - the child reports any failure in its log and exits
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def forked_alive(pid: int, name: str) -> bool:
    """Whether ``pid`` is still the child ``fork`` started under ``name``."""
    if pid <= 0:
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return comm == name[:15] and state != "Z"


def reap(pid: int) -> bool:
    """Whether our child ``pid`` has exited; its exit status is collected (no zombie left).

    A pid that is not (or no longer) our child counts as exited.
    """
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid
