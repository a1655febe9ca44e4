"""The lab's channel: a signed repository its hosts update from, and its server.

``init``, ``publish`` and ``promote`` do what ``tidehost channel`` does (with the same
``channels`` calls), echoing the command a user would type, for the demo and the tests.

``tidehost vm cluster up cluster.yaml --image IMG --serve REPO`` serves the repository inside
the cluster's network namespace on the bridge address that the cluster file's
``updater.channel.url`` names (the example's ``http://10.77.0.1:8080/``), so the nodes'
agents reach it and nothing outside the namespace does: a child process of its own (it
outlives ``up``) enters the namespace and runs ``channels.serve.ChannelServer``. Unless the
cluster file names its own ``updater.channel.root``, the nodes are told to trust that
repository's ``root.json``. ``down`` stops the server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from channels import keys
from channels.create import create
from channels.releases import ChannelRepository
from channels.repository import open_repository
from channels.serve import ChannelServer, published_root
from imagebuild.cloudconfig.model import Cluster
from imagebuild.core.chunker import fast_cutter
from imagebuild.core.errors import VMError
from imagebuild.core.run import fork, forked_alive, reap, run
from imagebuild.core.wait import poll
from imagebuild.lab.net import enter_netns

LOG = "channel-server.log"
SERVER = "tidehost-serve"  # the server process's name (/proc/PID/comm)


def _echo(*args: str | Path) -> None:
    print(f"$ tidehost channel {shlex.join(map(str, args))}", flush=True)


def init(repo: Path) -> None:
    """A new signed repository: keys in ``repo/keys``, the served tree in ``repo/published``."""
    _echo("init", repo)
    create(repo, keys.read_passphrase())


def publish(repo: Path, bundle: Path, channel: str = "alpha") -> str:
    """Publish a release bundle to ``channel``; returns its version."""
    _echo("publish", repo, bundle, "--channel", channel)
    cutter = fast_cutter()
    with open_repository(repo, keys.read_passphrase()) as tuf:
        rel, stats = ChannelRepository(tuf).publish(bundle, channel, cutter=cutter)
    print(f"published {rel.version} to {channel} ({stats.bytes_copied} bytes copied, "
          f"{stats.bytes_reused} already stored)", flush=True)  # fmt: skip
    if stats.chunks is not None:
        print(stats.chunks.summary(), flush=True)
    return str(rel.version)


def promote(repo: Path, version: str, src: str, dst: str) -> None:
    """List ``version`` of ``src`` in ``dst`` too: the same targets, re-signed."""
    _echo("promote", repo, version, "--from", src, "--to", dst)
    with open_repository(repo, keys.read_passphrase()) as tuf:
        rel, stats = ChannelRepository(tuf).promote(version, src, dst)
    print(f"promoted {rel.version} from {src} to {dst} ({stats.bytes_copied} bytes copied, "
          f"{stats.bytes_reused} re-listed)", flush=True)  # fmt: skip


def status(repo: Path) -> dict[str, Any]:
    """The repository's channels, releases and role expiry (``tidehost channel status``)."""
    with open_repository(repo, None) as tuf:
        return ChannelRepository(tuf).status()


def show_status(repo: Path) -> None:
    _echo("status", repo)
    for name, chan in status(repo)["channels"].items():
        print(f"{name}: current {chan['current'] or '-'}", flush=True)


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


def serve(netns: str, root: Path, host: str, port: int) -> None:
    """Serve ``root`` on ``host:port`` inside ``netns`` until killed (the server process)."""
    enter_netns(netns)
    server = ChannelServer(root, host, port)
    print(f"serving {root} at {server.url} in netns {netns}", flush=True)
    server.serve_forever()


def start(netns: str, repo: Path, host: str, port: int, state_dir: Path,
          timeout: float = 20) -> int:  # fmt: skip
    """Start the server in ``netns``; return its pid once it answers."""
    root = published_root(Path(repo).resolve())
    pid = fork(lambda: serve(netns, root, host, port), log=state_dir / LOG, name=SERVER)

    def answers() -> bool:
        if reap(pid):
            raise VMError(f"channel server exited (see {state_dir / LOG})")
        probe = run(["ip", "netns", "exec", netns, "nc", "-z", "-w", "1", host, str(port)],
                    check=False, capture=True)  # fmt: skip
        return probe.returncode == 0

    if not poll(answers, timeout, every=0.3):
        stop(pid)
        raise VMError(f"channel server did not answer on {host}:{port} in netns {netns}")
    return pid


def alive(pid: int) -> bool:
    return forked_alive(pid, SERVER)


def stop(pid: int, timeout: float = 5) -> None:
    if not alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)

    def gone() -> bool:
        reap(pid)  # when it is our child (`up` and `down` in one process)
        return not alive(pid)

    if not poll(gone, timeout, every=0.1):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        reap(pid)
