"""The fleet view of a lab cluster: its nodes' reports, read from the cluster's own etcd.

The etcd members listen on the cluster bridge inside the cluster's network namespace; the
reads run in a thread that entered it (``net.enter_netns`` moves one thread only), with the
operator's client certificate (``admin.crt``).  ``serve`` forks ``tidehost fleet serve``'s
server: it listens on 127.0.0.1 of this machine, its reader thread reads in the namespace.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from imagebuild.cloudconfig.model import Cluster
from imagebuild.core.errors import VMError
from imagebuild.core.run import fork
from imagebuild.fleet import source, table
from imagebuild.lab.net import enter_netns

SERVER = "tidehost-fleet"
LOG = "fleet-serve.log"


def reader(cluster: Cluster, netns: str) -> Callable[[], dict[str, Any]]:
    """A snapshot reader for ``cluster``; call it from a thread that may enter ``netns``."""
    certs = cluster.etcd.cert_dir
    tls: dict[str, Path] = {}
    if cluster.etcd.tls and certs is not None:
        tls = {"cacert": certs / "ca.crt", "cert": certs / "admin.crt", "key": certs / "admin.key"}
    gw = source.connect(list(cluster.client_endpoints()), **tls)  # type: ignore[arg-type]
    entered = threading.local()

    def read() -> dict[str, Any]:
        if not getattr(entered, "done", False):
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
