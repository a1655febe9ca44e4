"""One deadline loop: call a check until it holds or the time is up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], timeout: float, every: float = 1.0) -> T | None:
    """Call ``check`` every ``every`` seconds until it returns a true value, and return that;
    return None once ``timeout`` seconds have passed. ``check`` runs at least once, and its
    exceptions propagate (raise from it to give up early, e.g. when a process died)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(every, left))
