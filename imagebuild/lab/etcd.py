"""A single-member etcd (Debian's etcd-server) on 127.0.0.1, for the demo and the tests.

Guests on QEMU user networking reach it as 10.0.2.2:<port>.
"""

from __future__ import annotations

import logging
from pathlib import Path

import requests

from imagebuild.core.errors import StageError
from imagebuild.core.run import Process, require, spawn
from imagebuild.core.wait import poll
from imagebuild.lab.net import free_port

log = logging.getLogger(__name__)


class LocalEtcd:
    def __init__(self, data_dir: Path, name: str = "local") -> None:
        self.data_dir = data_dir
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def guest_url(self) -> str:
        """The URL a QEMU user-networking guest uses."""
        return f"http://10.0.2.2:{self.client_port}"

    def start(self, timeout: float = 30) -> LocalEtcd:
        require("etcd")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        logf = self.data_dir.parent / f"etcd-{self.name}.log"
        self.proc = spawn(
            ["etcd", "--name", self.name, "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"{self.name}={peer}"],
            log=logf,
        )  # fmt: skip
        if not poll(lambda: self._healthy(logf), timeout, every=0.2):
            raise StageError(f"etcd did not answer on {self.url} within {timeout:.0f}s")
        log.info("etcd %s listening on %s", self.name, self.url)
        return self

    def _healthy(self, logf: Path) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise StageError(f"etcd exited at start (log: {logf})")
        try:
            return requests.get(f"{self.url}/health", timeout=1).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(timeout=10)
        self.proc = None

    def __enter__(self) -> LocalEtcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
