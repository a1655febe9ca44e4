"""A channel repository served to a VM cluster from inside its network namespace.

``tidehost vm cluster up cluster.yaml --image IMG --serve REPO`` runs ``tidehost channel serve``
under ``ip netns exec`` on the bridge address that the cluster file's ``updater.channel.url``
names (the example's ``http://10.77.0.1:8080/``), so the nodes' agents reach it and nothing
outside the namespace does. Unless the cluster file names its own ``updater.channel.root``,
the nodes are told to trust that repository's ``root.json``. ``down`` stops the server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from channels.serve import published_root
from imagebuild.cloudconfig.model import Cluster
from imagebuild.core.errors import VMError
from imagebuild.core.run import run

LOG = "channel-server.log"


def serve_address(cluster: Cluster, gateway_cidr: str) -> tuple[str, int]:
    """(host, port) of ``updater.channel.url``, which must be the bridge's own address."""
    url = urlsplit(cluster.updater.channel_url)
    gateway = str(ipaddress.ip_interface(gateway_cidr).ip)
    if url.scheme != "http" or url.hostname != gateway:
        raise VMError(f"{cluster.source}: updater.channel.url: {cluster.updater.channel_url} is "
                      f"not on the cluster bridge (serve it as http://{gateway}:PORT/)")
    return gateway, url.port or 80


def trust_repository(cluster: Cluster, repo: Path) -> Cluster:
    """The cluster whose hosts trust ``repo``'s root.json (unless the file names a root)."""
    root = published_root(repo) / "metadata" / "root.json"
    if not root.is_file():
        raise VMError(f"--serve: {repo}: no metadata/root.json (run `tidehost channel init`)")
    if cluster.updater.channel_root is not None:
        return cluster
    return replace(cluster, updater=replace(cluster.updater, channel_root=root))


def start(netns: str, repo: Path, host: str, port: int, state_dir: Path,
          timeout: float = 20) -> int:  # fmt: skip
    """Start the server in ``netns``; return its pid once it answers."""
    argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "imagebuild", "channel", "serve",
            str(Path(repo).resolve()), "--bind", host, "--port", str(port)]  # fmt: skip
    with (state_dir / LOG).open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise VMError(f"channel server exited with {proc.returncode} (see {state_dir / LOG})")
        probe = run(["ip", "netns", "exec", netns, "nc", "-z", "-w", "1", host, str(port)],
                    check=False, capture=True)  # fmt: skip
        if probe.returncode == 0:
            return proc.pid
        time.sleep(0.3)
    stop(proc.pid)
    raise VMError(f"channel server did not answer on {host}:{port} in netns {netns}")


def alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return pid > 0 and b"channel\0serve" in cmdline


def stop(pid: int, timeout: float = 5) -> None:
    if not alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
