"""``tidehost fleet``: the fleet as its hosts report it in etcd (status, serve, watch)."""

from __future__ import annotations

import argparse
import json
import logging
from functools import partial
from pathlib import Path

from channels import keys
from channels.fleet import HALT_AFTER
from imagebuild.core.errors import ConfigError
from imagebuild.fleet import source

log = logging.getLogger(__name__)


def _reader(args: argparse.Namespace) -> partial[dict]:  # type: ignore[type-arg]
    if args.halt_after < 0:
        raise ConfigError(f"--halt-after: {args.halt_after} is less than 0")
    gw = source.connect(args.etcd, cacert=args.cacert, cert=args.cert, key=args.key,
                        user=args.user, password_file=args.password_file)
    return partial(source.snapshot, gw, halt_after=args.halt_after,
                   group=getattr(args, "group", None))


def cmd_status(args: argparse.Namespace) -> int:
    from imagebuild.fleet.table import render

    snap = _reader(args)()
    if args.json:
        print(json.dumps(snap, indent=2, sort_keys=True))
    else:
        print(render(snap), end="")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from imagebuild.fleet.serve import FleetView, server

    view = FleetView(_reader(args), interval=args.interval).start()
    try:
        httpd = server(view, args.address, args.port)
    except OSError as e:
        raise ConfigError(f"--port {args.port}: cannot listen on {args.address}: "
                          f"{e.strerror}") from None
    host, port = httpd.server_address[:2]
    print(f"fleet: http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    finally:
        view.stop()
        httpd.server_close()
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from imagebuild.fleet.watch import watch

    if not (Path(args.repo) / "keys").is_dir():
        raise ConfigError(f"--repo: {args.repo} is not a channel repository (no keys/)")
    return watch(_reader(args), Path(args.repo), keys.read_passphrase(args.passphrase_file),
                 interval=args.interval, once=args.once)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("fleet", help="the fleet's hosts, as they report in etcd")
    sub = p.add_subparsers(dest="fleet_verb", metavar="VERB", required=True)
    etcd = argparse.ArgumentParser(add_help=False)
    etcd.add_argument("--etcd", required=True, metavar="URL[,URL]", help="etcd client URLs")
    etcd.add_argument("--cacert", type=Path, help="CA bundle for etcd's TLS")
    etcd.add_argument("--cert", type=Path, help="client certificate (no CN, SPECS §11.3)")
    etcd.add_argument("--key", type=Path, help="client key")
    etcd.add_argument("--user", default="", help="etcd user, when etcd's auth is on (root)")
    etcd.add_argument("--password-file", type=Path, default=None,
                      help="that user's password file (certs/root.password)")
    etcd.add_argument("--halt-after", type=int, default=HALT_AFTER, metavar="N",
                      help=f"rollbacks in a group that halt a version (default {HALT_AFTER}, "
                           "0: never), as the hosts' halt_after")
    st = sub.add_parser("status", parents=[etcd], help="hosts, versions, locks, rollbacks")
    st.add_argument("--group", help="only this group")
    st.add_argument("--json", action="store_true", help='{"hosts": [...], ...}')
    st.set_defaults(func=cmd_status)
    sv = sub.add_parser("serve", parents=[etcd], help="a live page of the rollout")
    sv.add_argument("--port", type=int, default=8090)
    sv.add_argument("--address", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--interval", type=float, default=2.0, help="seconds between reads")
    sv.add_argument("--group", help="only this group")
    sv.set_defaults(func=cmd_serve)
    wa = sub.add_parser("watch", parents=[etcd],
                        help="pause a release in the channel when hosts roll it back")
    wa.add_argument("--repo", type=Path, required=True, help="the channel repository")
    wa.add_argument("--passphrase-file", type=Path, default=None,
                    help=f"key passphrase (default: ${keys.PASSPHRASE_ENV})")
    wa.add_argument("--interval", type=float, default=30.0, help="seconds between rounds")
    wa.add_argument("--once", action="store_true", help="one round, then exit")
    wa.set_defaults(func=cmd_watch)
