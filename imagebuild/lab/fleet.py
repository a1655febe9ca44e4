"""The fleet view of a lab cluster: its nodes' reports, read from the cluster's own etcd.

The etcd members listen on the cluster bridge inside the cluster's network namespace; the
reads run in a thread that entered it (``net.enter_netns`` moves one thread only), with the
operator's identity (``operator_credentials``).  ``serve`` forks ``tidehost fleet serve``'s
server: it listens on 127.0.0.1 of this machine, its reader thread reads in the namespace.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from imagebuild.cloudconfig.certs import ROOT_PASSWORD, ROOT_USER
from imagebuild.cloudconfig.model import Cluster
from imagebuild.core.errors import CommandTimeout, VMError
from imagebuild.core.run import fork, run
from imagebuild.core.wait import poll
from imagebuild.fleet import source, table
from imagebuild.lab.net import enter_netns

SERVER = "tidehost-fleet"
LOG = "fleet-serve.log"


def operator_credentials(cluster: Cluster) -> dict[str, Any]:
    """``source.connect``'s TLS files and user for the operator (pure): the admin certificate;
    with etcd's authentication on, the CN-less gateway certificate and the root user with its
    password instead (etcd's JSON gateway refuses a certificate with a CN then)."""
    certs = cluster.etcd.cert_dir
    if not cluster.etcd.tls or certs is None:
        return {}
    if cluster.etcd_auth:
        return {"cacert": certs / "ca.crt", "cert": certs / "gateway.crt",
                "key": certs / "gateway.key", "user": ROOT_USER,
                "password_file": certs / ROOT_PASSWORD}  # fmt: skip
    return {"cacert": certs / "ca.crt", "cert": certs / "admin.crt", "key": certs / "admin.key"}


def grant_operator(cluster: Cluster, netns: str, timeout: float = 600) -> None:
    """Give etcd's root user the operator's password (``certs/root.password``), as the
    cloud-config README tells an operator to once the cluster formed: the first member's
    ``tidehost-etcd-auth`` made root with a password nobody keeps and turned authentication
    on. etcdctl is root by the admin certificate's CN (gRPC), inside ``netns`` ("": this
    namespace); it is retried until authentication is on. Nothing to do without etcd's
    authentication.

    Raises: VMError (root's password could not be set within ``timeout``).
    """
    certs = cluster.etcd.cert_dir
    if not cluster.etcd_auth or certs is None:
        return
    inside = ["ip", "netns", "exec", netns] if netns else []
    argv = [*inside, "etcdctl",
            "--endpoints", ",".join(cluster.client_endpoints()), "--cacert", certs / "ca.crt",
            "--cert", certs / "admin.crt", "--key", certs / "admin.key", "--dial-timeout", "10s",
            "user", "passwd", ROOT_USER, "--interactive=false"]  # fmt: skip
    password = (certs / ROOT_PASSWORD).read_bytes()
    last = [""]

    def granted() -> bool:
        try:
            done = run(argv, check=False, capture=True, input=password, timeout=60)
        except CommandTimeout:
            last[0] = "etcdctl did not answer in 60 s"
            return False
        last[0] = (done.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
        return done.returncode == 0

    if not poll(granted, timeout, every=10):
        raise VMError(f"etcd of cluster {cluster.name}: root's password not set within "
                      f"{timeout:.0f}s ({last[0] or 'no answer'})")  # fmt: skip


def reader(cluster: Cluster, netns: str) -> Callable[[], dict[str, Any]]:
    """A snapshot reader for ``cluster``; call it from a thread that may enter ``netns``."""
    gw = source.connect(list(cluster.client_endpoints()), **operator_credentials(cluster))
    entered = threading.local()

    def read() -> dict[str, Any]:
        if netns and not getattr(entered, "done", False):  # "": this namespace
            enter_netns(netns)
            entered.done = True
        return source.snapshot(gw, halt_after=cluster.updater.halt_after or 2)

    return read


def snapshot(cluster: Cluster, netns: str, timeout: float = 60) -> dict[str, Any]:
    """One snapshot, read in a thread of its own inside ``netns``.

    Raises: VMError (etcd did not answer), ChannelError (etcd refused).
    """
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["snap"] = reader(cluster, netns)()
        except Exception as e:  # noqa: BLE001 - handed to the caller's thread
            out["error"] = e

    t = threading.Thread(target=run, name="fleet-read", daemon=True)
    t.start()
    t.join(timeout)
    if "error" in out:
        raise out["error"]
    if "snap" not in out:
        raise VMError(f"fleet: etcd of cluster {cluster.name} did not answer in {timeout:.0f}s")
    return out["snap"]


def fleet_table(cluster: Cluster, netns: str) -> str:
    """``tidehost fleet status``'s table for the cluster (a line of error if unreadable)."""
    try:
        return table.render(snapshot(cluster, netns))
    except Exception as e:  # noqa: BLE001 - the demo goes on without the table
        return f"(fleet status: {e})\n"


def serve(cluster: Cluster, netns: str, port: int, state_dir: Path) -> int:
    """Fork the fleet page's server on 127.0.0.1:``port``; its pid."""
    from imagebuild.fleet.serve import FleetView, server

    def target() -> None:
        view = FleetView(partial(reader(cluster, netns)), interval=2.0)
        httpd = server(view, "127.0.0.1", port)  # the listening socket: this namespace
        view.start()  # the reader thread enters the cluster's
        print(f"fleet: http://127.0.0.1:{port}/", flush=True)
        httpd.serve_forever()

    return fork(target, log=Path(state_dir) / LOG, name=SERVER)
