"""Probe a replicated HTTP service across nodes, for the rolling-update watcher.

``probe`` asks the URLs in turn until one answers and returns the answer (the first word of
the body), or ``-`` when none did. ``Prober`` runs it every second from a thread inside the
cluster's network namespace (the bridge is the only way to the nodes) and keeps
``(time, answered)`` pairs for ``rollout.RolloutReport``.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Sequence

from imagebuild.core.errors import VMError
from imagebuild.core.wait import poll
from imagebuild.lab.net import enter_netns


def probe(urls: Sequence[str], timeout: float) -> str:
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - http only
                words = r.read(200).decode(errors="replace").split()
            return words[0] if words else "(empty)"
        except OSError:
            continue
    return "-"


class Prober:
    """``probe`` of ``urls`` every ``every`` seconds inside ``netns``, answers collected."""

    def __init__(self, netns: str, urls: Sequence[str], every: float = 1.0,
                 timeout: float = 2.0) -> None:  # fmt: skip
        self.netns = netns
        self.urls = list(urls)
        self.every = every
        self.timeout = timeout
        self.answers: list[tuple[float, bool]] = []
        self.last_answer = ""
        self.error: VMError | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="probe")

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            enter_netns(self.netns)  # this thread only
        except VMError as e:
            self.error = e
            return
        while not self._stop.is_set():
            t = time.time()
            answer = probe(self.urls, self.timeout)
            with self._lock:
                self.answers.append((t, answer != "-"))
                self.last_answer = answer
            self._stop.wait(max(0.0, self.every - (time.time() - t)))

    def snapshot(self) -> list[tuple[float, bool]]:
        with self._lock:
            return list(self.answers)

    def wait_answering(self, timeout: float) -> None:
        def answering() -> bool:
            if self.error:
                raise self.error
            return any(ok for _, ok in self.snapshot()[-3:])

        if not poll(answering, timeout):
            raise VMError(f"the service did not answer within {timeout:.0f}s")
