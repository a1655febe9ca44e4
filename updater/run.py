"""Every external command of the agent goes through ``run()``: logged, and failures reported."""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Sequence

from updater.errors import CommandError

log = logging.getLogger(__name__)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 300,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and capture its output.

    Raises:
        CommandError: the command is missing, timed out, or (with ``check``) exited non-zero.
    """
    cmd = shlex.join(argv)
    log.debug("run: %s", cmd)
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        log.error("command not found: %s", cmd)
        raise CommandError(f"{argv[0]}: command not found", 127) from None
    except subprocess.TimeoutExpired:
        log.error("command timed out after %ss: %s", timeout, cmd)
        raise CommandError(f"{argv[0]}: timed out after {timeout}s", 124) from None
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        last = err[-1] if err else ""
        tail = f": {last}" if last else ""
        log.error("command failed (exit %d): %s%s", proc.returncode, cmd, tail)
        raise CommandError(
            f"{argv[0]} exited with {proc.returncode}{tail}", proc.returncode
        )
    return proc
