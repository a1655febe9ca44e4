"""One snapshot of the fleet from etcd: the reports, the lock semaphores, the halt rule."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from channels import fleet
from channels.etcd import EtcdGateway
from imagebuild.cloudconfig.certs import read_password
from imagebuild.core.errors import ConfigError


def connect(endpoints: str | Sequence[str], *, cacert: Path | None = None,
            cert: Path | None = None, key: Path | None = None,
            user: str = "", password_file: Path | None = None,
            timeout: float = 10.0) -> EtcdGateway:
    """A gateway client for ``--etcd URL[,URL]`` (and its TLS files; with etcd's auth on, a
    user and its password file, e.g. ``root`` and ``certs/root.password``).

    Raises: ConfigError (no URL, a URL that is not http(s), a TLS file that is missing).
    """
    urls = [u.strip() for u in endpoints.split(",")] if isinstance(endpoints, str) \
        else list(endpoints)
    urls = [u for u in urls if u]
    if not urls:
        raise ConfigError("--etcd: give at least one etcd URL")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise ConfigError(f"--etcd: {u!r} is not an http(s) URL")
    for flag, path in (("--cacert", cacert), ("--cert", cert), ("--key", key)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag}: {path}: no such file")
    if key is not None and cert is None:
        raise ConfigError("--key: needs --cert")
    if bool(user) != (password_file is not None):
        raise ConfigError("--user and --password-file go together")
    password = None
    if password_file is not None:
        read_password(password_file)  # a missing or empty file fails now, not mid-read

        def password() -> str:
            return read_password(password_file)
    return EtcdGateway(urls, ca=cacert, cert=cert, key=key, timeout=timeout, user=user,
                       password=password)


def snapshot(gw: EtcdGateway, *, halt_after: int = fleet.HALT_AFTER,
             group: str | None = None) -> dict[str, Any]:
    """``channels.fleet.summarize`` of what etcd holds now, with the time it was read.

    Raises: EtcdError (etcd unreachable or refusing).
    """
    started = time.monotonic()
    hosts = gw.get_prefix_paged(fleet.HOSTS)
    reports, problems = fleet.parse_reports((kv.key, kv.value) for kv in hosts)
    locks, lock_problems = fleet.parse_locks(
        (kv.key, kv.value) for kv in gw.get_prefix_paged(fleet.LOCK_GROUPS)
        if kv.key.endswith("/semaphore"))
    out = fleet.summarize(reports, locks, [*problems, *lock_problems], halt_after=halt_after,
                          group=group)
    out["read_at"] = time.time()
    out["read_seconds"] = round(time.monotonic() - started, 3)
    return out
