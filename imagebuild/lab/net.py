"""Ports and network namespaces of the lab's VMs and servers."""

from __future__ import annotations

import ctypes
import os
import socket

from imagebuild.core.errors import VMError
from imagebuild.core.run import run

_CLONE_NEWNET = 0x40000000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    """``argv`` run inside ``netns`` (``ip netns exec``), or as it is when there is none."""
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def netns_exists(netns: str) -> bool:
    r = run(["ip", "netns", "list"], capture=True)
    return any(line.split()[0] == netns for line in r.stdout.decode().splitlines() if line)


def enter_netns(netns: str) -> None:
    """Move the calling thread into network namespace ``netns`` (``ip netns add`` made it):
    the sockets it opens from now on live there. Other threads stay where they are.

    Raises:
        VMError: no such namespace, or not allowed (it needs root).
    """
    try:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    except OSError as e:
        raise VMError(f"netns {netns}: {e.strerror}") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise VMError(f"netns {netns}: setns: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
