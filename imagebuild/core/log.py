"""Logging for the workstation commands: one logger, timed steps that show progress."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

log = logging.getLogger("tidehost")


def setup(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


@contextlib.contextmanager
def complete_step(text: str) -> Iterator[None]:
    """Log ``text``, run the block, then log how long it took (or that it failed)."""
    log.info("‣ %s", text)
    start = time.monotonic()
    try:
        yield
    except BaseException:
        log.info("  ✗ %s failed after %.1fs", text, time.monotonic() - start)
        raise
    log.info("  ✓ %s (%.1fs)", text, time.monotonic() - start)
