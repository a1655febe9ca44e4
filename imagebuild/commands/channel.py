"""``tidehost channel``: publish signed releases to alpha/beta/stable, promote, stage rollouts.

The repository directory holds ``keys/`` (private, never served) and ``published/`` (what
``serve``, a web server or a CDN serves); hosts bootstrap trust from
``published/metadata/root.json``. See ``channels.layout``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from channels import keys
from channels.bundle import CHANNELS
from channels.create import create
from channels.fetch import DEFAULT_MIN_RATE
from channels.repository import ROLES, open_repository
from channels.rollout import IMMEDIATE, Wave, parse_time, parse_waves
from channels.serve import published_root
from imagebuild.core.chunker import fast_cutter
from imagebuild.core.errors import ConfigError

log = logging.getLogger(__name__)
CHANNEL_HELP = " or ".join(CHANNELS)


def _waves(text: str | None) -> tuple[Wave, ...]:
    if text is None:
        return IMMEDIATE
    try:
        return parse_waves(text)
    except ValueError as e:
        raise ConfigError(f"--waves: {e}") from None


def _passphrase(args: argparse.Namespace) -> bytes | None:
    return keys.read_passphrase(args.passphrase_file)


def _repo_op(args: argparse.Namespace, op: Callable[[Any], Any]) -> Any:
    from channels.releases import ChannelRepository

    with open_repository(args.repo, _passphrase(args)) as tuf:
        return op(ChannelRepository(tuf))


def cmd_init(args: argparse.Namespace) -> int:
    expiry: dict[str, float] = {}
    for item in args.expiry or []:
        role, _, days = item.partition("=")
        if role not in ROLES:
            raise ConfigError(f"--expiry {item}: role must be one of {', '.join(ROLES)}")
        try:
            expiry[role] = float(days)
        except ValueError:
            raise ConfigError(f"--expiry {item}: {days!r} is not a number of days") from None
    signers: dict[str, str] = {}
    for item in args.signer or []:
        role, eq, uri = item.partition("=")
        if not eq or role not in ROLES:
            raise ConfigError(f"--signer {item}: give ROLE=URI, ROLE one of {', '.join(ROLES)}")
        signers[role] = uri
    create(args.repo, _passphrase(args), expiry_days=expiry, signers=signers)
    print(f"created {args.repo}: keys in {args.repo}/keys/, serve {args.repo}/published/; "
          f"hosts trust {args.repo}/published/metadata/root.json")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    cutter = fast_cutter()
    rel, stats = _repo_op(args, lambda r: r.publish(
        args.bundle, args.channel, waves=_waves(args.waves), min_version=args.min_version,
        cutter=cutter))
    print(f"published {rel.version} to {args.channel} "
          f"({stats.bytes_copied} bytes copied, {stats.bytes_reused} already stored)")
    if stats.chunks is not None:
        print(stats.chunks.summary())
    if args.box_url_base:
        from imagebuild.vagrant.catalog_io import find_boxes, write_box_catalog

        boxes = find_boxes(Path(args.bundle).resolve().parent, rel.manifest.name, rel.version)
        if boxes:
            path = write_box_catalog(args.repo, channel=args.channel, version=rel.version,
                                     boxes=boxes, box_url_base=args.box_url_base,
                                     image=rel.manifest.name)
            print(f"vagrant box catalog: {path}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    rel, stats = _repo_op(args, lambda r: r.promote(
        args.version, args.src, args.dst, waves=_waves(args.waves)))
    print(f"promoted {rel.version} from {args.src} to {args.dst} "
          f"({stats.bytes_copied} bytes copied, {stats.bytes_reused} re-listed)")
    from imagebuild.vagrant.catalog_io import promote_box_catalog, read_catalog

    published = published_root(args.repo)
    if read_catalog(published, args.src, rel.manifest.name).version(rel.version) is not None:
        path = promote_box_catalog(args.repo, version=rel.version, src=args.src, dst=args.dst,
                                   image=rel.manifest.name)
        print(f"vagrant box catalog: {path}")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    start = None
    if args.start:
        try:
            start = parse_time(args.start)
        except ValueError as e:
            raise ConfigError(f"--start: {e}") from None
    rel = _repo_op(args, lambda r: r.rollout(args.channel, args.version,
                                             _waves(args.waves), start))
    print(f"{args.channel} {rel.version}: rollout "
          f"{','.join(str(w) for w in rel.rollout.waves)} from {rel.rollout.to_dict()['start']}")
    return 0


def _flag(change: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        rel = _repo_op(args, lambda r: getattr(r, change)(args.channel, args.version))
        print(f"{args.channel} {rel.version}: {change}d" if change != "pull"
              else f"{args.channel} {rel.version}: pulled")
        return 0
    return run


def cmd_status(args: argparse.Namespace) -> int:
    from channels.releases import ChannelRepository

    with open_repository(args.repo, None) as tuf:
        st = ChannelRepository(tuf).status()
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    for chan, c in st["channels"].items():
        role = st["roles"][chan]
        print(f"{chan}: current {c['current'] or '-'}  (role v{role['version']}, "
              f"expires {role['expires']})")
        for r in c["releases"]:
            flags = [f for f in ("pulled", "paused") if r[f]]
            if r["min_version"]:
                flags.append(f"min {r['min_version']}")
            print(f"  {r['version']:<12} {r['open_percent']:>5g}% open  waves {r['waves']}  "
                  f"{' '.join(flags)}".rstrip())
    for role in ("root", "targets", "snapshot", "timestamp"):
        r = st["roles"][role]
        print(f"{role}: v{r['version']} expires {r['expires']}")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    def op(r: Any) -> list[str]:
        return r.tuf.refresh(all_roles=args.all)

    extra = _repo_op(args, op)
    print("re-signed snapshot, timestamp" + "".join(f", {r}" for r in extra))
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    keyid = _repo_op(args, lambda r: r.tuf.rotate_key(args.role, args.key_uri))
    print(f"role {args.role}: new key {keyid[:16]}"
          f"{' at ' + args.key_uri if args.key_uri else ''}; a retired file key is kept in "
          f"{args.repo}/keys/retired/")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from channels.serve import ChannelServer

    server = ChannelServer(args.repo, args.bind, args.port)  # refuses all but published/
    print(f"serving {server.root} at {server.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from channels.gc import collect

    with open_repository(args.repo, None) as tuf:
        stats = collect(tuf, grace=args.grace, dry_run=args.dry_run)
    print(json.dumps(stats.__dict__, sort_keys=True) if args.json else stats.summary())
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    from channels.mirror import mirror

    if not args.root.is_file():
        raise ConfigError(f"--root {args.root}: no such file")
    stats = mirror(args.url, args.dir, args.root, args.channel or CHANNELS,
                   timeout=args.timeout, min_rate=args.min_rate)
    print(json.dumps(stats.__dict__, sort_keys=True) if args.json else
          f"mirrored {args.url} into {args.dir}: {stats.summary()}")
    return 0


def _machine_id(value: str | None) -> str:
    if value:
        return value
    try:
        return Path("/etc/machine-id").read_text().strip()
    except OSError:
        raise ConfigError("--machine-id: not given and /etc/machine-id is unreadable") from None


def cmd_check(args: argparse.Namespace) -> int:
    from channels.client import ChannelClient

    if not args.root.is_file():
        raise ConfigError(f"--root {args.root}: no such file")
    mid = _machine_id(args.machine_id)
    client = ChannelClient(args.url, args.channel, args.state, args.root, timeout=args.timeout,
                           min_rate=args.min_rate)
    now = datetime.now(UTC)
    offer = client.offer(mid, args.current, now)
    decision = client.last_decision
    assert decision is not None
    out: dict[str, Any] = {"channel": args.channel, "machine_id": mid, "current": args.current,
                           "offered": offer.version if offer else None,
                           "reason": decision.reason}
    if offer is None:
        print(f"{args.channel}: {decision.reason} (machine {mid})")
    else:
        print(f"{args.channel}: offers {offer.version} to {mid} ({offer.size} bytes): "
              f"{offer.reason}")
        if args.download:
            from channels import delta

            for seed in args.seed or []:
                if not seed.exists():
                    raise ConfigError(f"--seed {seed}: no such file")
            if args.seed:
                fast_cutter()
            path, report = delta.download(client, offer, args.download,
                                          [delta.SeedSource(p) for p in args.seed or []])
            out["bundle"] = str(path)
            out.update(report.to_dict())
            print(f"downloaded and verified {path}: {report.summary()}")
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("channel", help="signed release channels: publish, promote, roll out")
    sub = p.add_subparsers(dest="channel_cmd", metavar="COMMAND", required=True)

    def cmd(name: str, func: Callable[[argparse.Namespace], int], help: str,  # noqa: A002
            repo: bool = True, writes: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        if repo:
            sp.add_argument("repo", type=Path, help="the repository directory")
        if writes:
            sp.add_argument("--passphrase-file", type=Path, default=None,
                            help=f"key passphrase (default: ${keys.PASSPHRASE_ENV})")
        sp.set_defaults(func=func)
        return sp

    def version_and_channel(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("version")
        sp.add_argument("--channel", required=True, metavar="CHANNEL", help=CHANNEL_HELP)

    sp = cmd("init", cmd_init, "create keys and empty alpha/beta/stable channels")
    sp.add_argument("--expiry", action="append", metavar="ROLE=DAYS",
                    help="role lifetime in days (repeatable)")
    sp.add_argument("--signer", action="append", metavar="ROLE=URI",
                    help="keep ROLE's key at a signer URI: hsm:[KEYID][?label=TOKEN] "
                         "(PIN: $TIDEHOST_HSM_PIN), awskms:, gcpkms:, azurekms: (repeatable)")
    sp = cmd("publish", cmd_publish, "publish a release bundle to a channel")
    sp.add_argument("bundle", type=Path)
    sp.add_argument("--channel", required=True, metavar="CHANNEL", help=CHANNEL_HELP)
    sp.add_argument("--waves", help='rollout waves, e.g. "1%%@0h,10%%@24h,100%%@72h"')
    sp.add_argument("--min-version", help="hosts below this version must update to it first")
    sp.add_argument("--box-url-base", metavar="URL",
                    help="where published/ is served: also list the bundle's Vagrant boxes "
                         "(built beside it) in the channel's box catalog")
    sp = cmd("promote", cmd_promote, "list a release in the next channel (no bytes copied)")
    sp.add_argument("version")
    sp.add_argument("--from", dest="src", required=True, metavar="CHANNEL", help=CHANNEL_HELP)
    sp.add_argument("--to", dest="dst", required=True, metavar="CHANNEL", help=CHANNEL_HELP)
    sp.add_argument("--waves", help="rollout waves in the target channel")
    sp = cmd("rollout", cmd_rollout, "set a release's rollout waves (restarts its clock)")
    version_and_channel(sp)
    sp.add_argument("--waves", required=True, help='e.g. "1%%@0h,10%%@24h,100%%@72h"')
    sp.add_argument("--start", help="ISO 8601 start time with zone (default: now)")
    for change, text in (("pause", "freeze a rollout's clock"),
                         ("resume", "continue a paused rollout"),
                         ("pull", "withdraw a release")):
        version_and_channel(cmd(change, _flag(change), text))
    sp = cmd("status", cmd_status, "show channels, releases and role expiry", writes=False)
    sp.add_argument("--json", action="store_true")
    sp = cmd("refresh", cmd_refresh, "re-sign snapshot and timestamp (for cron)")
    sp.add_argument("--all", action="store_true", help="re-sign every role but root too")
    sp = cmd("rotate-key", cmd_rotate_key, "replace a role's signing key")
    sp.add_argument("--role", required=True, help=", ".join(ROLES))
    sp.add_argument("--key-uri", metavar="URI",
                    help="move the role onto this signer's key (hsm:..., awskms:, ...) "
                         "instead of a fresh file key")
    sp = cmd("serve", cmd_serve, "serve the published tree over HTTP (Range, for local use)",
             writes=False)
    sp.add_argument("--port", type=int, default=8080)
    sp.add_argument("--bind", default="127.0.0.1")
    sp = cmd("gc", cmd_gc, "remove targets and chunks no listed release uses", writes=False)
    sp.add_argument("--dry-run", action="store_true", help="only say what would go")
    sp.add_argument("--grace", type=float, default=3600.0, metavar="SECONDS",
                    help="keep anything younger (default %(default)g)")
    sp.add_argument("--json", action="store_true")
    sp = cmd("mirror", cmd_mirror, "a verified copy of a served repository, to serve as is",
             repo=False, writes=False)
    sp.add_argument("url")
    sp.add_argument("dir", type=Path)
    sp.add_argument("--root", required=True, type=Path,
                    help="the root.json the hosts trust (the oldest: mirrored from it on)")
    sp.add_argument("--channel", action="append", choices=CHANNELS,
                    help="mirror this channel only (repeatable; default: all)")
    sp.add_argument("--timeout", type=float, default=30.0)
    sp.add_argument("--min-rate", type=float, default=DEFAULT_MIN_RATE, metavar="BYTES/S")
    sp.add_argument("--json", action="store_true")
    sp = cmd("check", cmd_check, "a host's view of a channel: what is offered, verified",
             repo=False, writes=False)
    sp.add_argument("url")
    sp.add_argument("--channel", required=True, metavar="CHANNEL", help=CHANNEL_HELP)
    sp.add_argument("--root", required=True, type=Path, help="the trusted root.json")
    sp.add_argument("--state", required=True, type=Path, help="trusted state kept between runs")
    sp.add_argument("--machine-id", help="default: /etc/machine-id")
    sp.add_argument("--current", default="0.0.0", help="the host's version (default 0.0.0)")
    sp.add_argument("--download", type=Path, metavar="DIR", help="fetch and verify the payload")
    sp.add_argument("--seed", type=Path, action="append", metavar="FILE",
                    help="with --download: a file or device holding an older release's "
                         "usr.img, kernel or initrd; only the chunks no seed has are "
                         "fetched (repeatable)")
    sp.add_argument("--timeout", type=float, default=30.0,
                    help="seconds any read may wait, and the least any file may take")
    sp.add_argument("--min-rate", type=float, default=DEFAULT_MIN_RATE, metavar="BYTES/S",
                    help="slowest download accepted: each file must arrive within "
                         "timeout + length / min-rate seconds (default %(default)g)")
    sp.add_argument("--json", action="store_true")
