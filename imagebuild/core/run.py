"""Every subprocess of the workstation side goes through ``run``."""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from imagebuild.core.errors import StageError, ToolMissingError

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
        raise StageError(f"timed out after {timeout}s: {shlex.join(argv)}") from None
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
