"""A single-member etcd (Debian's etcd-server) on 127.0.0.1, for the demo and the tests.

Guests on QEMU user networking reach it as 10.0.2.2:<port>.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

from imagebuild.core.errors import StageError
from imagebuild.core.run import require

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalEtcd:
    def __init__(self, data_dir: Path, name: str = "local") -> None:
        self.data_dir = data_dir
        self.name = name
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

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
        logf = open(self.data_dir.parent / f"etcd-{self.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["etcd", "--name", self.name, "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"{self.name}={peer}"],
            stdout=logf, stderr=subprocess.STDOUT,
        )  # fmt: skip
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StageError(f"etcd exited at start (log: {logf.name})")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    log.info("etcd %s listening on %s", self.name, self.url)
                    return self
            time.sleep(0.2)
        raise StageError(f"etcd did not answer on {self.url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LocalEtcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
