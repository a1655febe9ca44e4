"""``tidehost vagrant``: a Vagrantfile for a local cluster, and the per-channel box catalogs.

::

    tidehost vagrant init --nodes 3 --channel-url http://host:8080/ --channel stable -o demo/
    tidehost vagrant catalog publish REPO --channel alpha --version 1.2.0 \\
        --box libvirt=out/tidehost-1.2.0-vagrant-libvirt.box --box-url-base http://host:8080/
    tidehost vagrant catalog promote REPO 1.2.0 --from alpha --to beta
    tidehost vagrant libvirt start      # where no systemd runs libvirtd: in a netns of its own
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from imagebuild.cloudconfig import parse_cluster_file
from imagebuild.core.errors import ConfigError
from imagebuild.core.fields import enum
from imagebuild.core.files import read_ssh_public_key
from imagebuild.core.platforms import BoxProvider
from imagebuild.lab import libvirt
from imagebuild.lab.vm import kvm_works
from imagebuild.vagrant.catalog_io import find_boxes, promote_box_catalog, write_box_catalog
from imagebuild.vagrant.remote import Unreachable, check_catalog, fetch_root
from imagebuild.vagrant.vagrantfile import DRIVERS, InitOptions, init_cluster

CHANNEL_HELP = "alpha, beta or stable"
log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("vagrant", help="Vagrant clusters and box catalogs", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    verbs = p.add_subparsers(dest="vagrant_verb", metavar="ACTION", required=True)

    i = verbs.add_parser("init", help="write a Vagrantfile for an N-node cluster")
    i.add_argument("--nodes", type=int, default=3, help="number of nodes (1-9, default 3)")
    i.add_argument("--channel-url", default="", help="URL the channel repository is served at")
    i.add_argument("--channel", default="stable", help=f"{CHANNEL_HELP} (default stable)")
    i.add_argument("--provider", default="libvirt", help="libvirt (default) or virtualbox")
    i.add_argument("-o", "--output", type=Path, default=Path("."), help="folder (default .)")
    i.add_argument("--cluster", type=Path, help="use this cluster file instead of generating one")
    i.add_argument("--ssh-key", type=Path, action="append", default=[],
                   help="public key for the user core (repeatable)")  # fmt: skip
    i.add_argument("--image", default="tidehost", help="image name of the boxes")
    i.add_argument("--subnet", default="192.168.56.0/24", help="the cluster's private network")
    i.add_argument("--memory", type=int, default=2048, help="MiB per node")
    i.add_argument("--cpus", type=int, default=2, help="vCPUs per node")
    i.add_argument("--channel-root", type=Path, metavar="ROOT_JSON",
                   help="the channel's root.json the nodes trust (default: fetched from "
                        "CHANNEL_URL/metadata/root.json now)")  # fmt: skip
    i.add_argument("--driver", choices=DRIVERS,
                   help="libvirt domain type (default: kvm where it runs guests, else qemu)")
    i.add_argument("--no-check", action="store_true",
                   help="do not ask the channel server for its root and box catalog")
    i.set_defaults(func=cmd_init)

    c = verbs.add_parser("catalog", help="per-channel Vagrant box catalogs in a repository")
    cverbs = c.add_subparsers(dest="catalog_verb", metavar="ACTION", required=True)
    pub = cverbs.add_parser("publish", help="list a release's boxes in a channel's catalog")
    pub.add_argument("repo", type=Path, help="channel repository (or the folder it serves)")
    pub.add_argument("--channel", required=True, help=CHANNEL_HELP)
    pub.add_argument("--version", required=True)
    pub.add_argument("--box", action="append", default=[], metavar="PROVIDER=FILE",
                     help="a box file: libvirt=... or virtualbox=... (repeatable)")  # fmt: skip
    pub.add_argument("--build-dir", type=Path,
                     help="take every box of VERSION that `tidehost build` left here")  # fmt: skip
    pub.add_argument("--box-url-base", required=True,
                     help="URL the repository's published tree is served at")  # fmt: skip
    pub.add_argument("--image", default="tidehost")
    pub.add_argument("--no-copy", action="store_true",
                     help="do not copy the boxes in (they are already at the URL)")  # fmt: skip
    pub.set_defaults(func=cmd_catalog_publish)
    pro = cverbs.add_parser("promote", help="list a version's boxes in another channel too")
    pro.add_argument("repo", type=Path)
    pro.add_argument("version")
    pro.add_argument("--from", dest="src", required=True, help=CHANNEL_HELP)
    pro.add_argument("--to", dest="dst", required=True, help=CHANNEL_HELP)
    pro.add_argument("--image", default="tidehost")
    pro.set_defaults(func=cmd_catalog_promote)

    lv = verbs.add_parser("libvirt", help="start libvirt where no service runs it, or stop it")
    lverbs = lv.add_subparsers(dest="libvirt_verb", metavar="ACTION", required=True)
    ls = lverbs.add_parser("start", help="virtlogd + libvirtd in a network namespace of their "
                           "own, unless libvirt answers already")  # fmt: skip
    ls.add_argument("--netns", default=libvirt.NETNS, help=f"default {libvirt.NETNS}")
    ls.set_defaults(func=cmd_libvirt_start)
    lst = lverbs.add_parser("stop", help="stop what `start` started")
    lst.add_argument("--force", action="store_true", help="even with domains or networks left")
    lst.set_defaults(func=cmd_libvirt_stop)
    lverbs.add_parser("status", help="where libvirt runs").set_defaults(func=cmd_libvirt_status)


def cmd_init(args: argparse.Namespace) -> int:
    channel_url = args.channel_url
    cluster = parse_cluster_file(args.cluster) if args.cluster else None
    if not channel_url and cluster is not None:
        channel_url = cluster.updater.channel_url
    provider = enum(BoxProvider)("--provider", args.provider)
    driver = args.driver or ("kvm" if provider is not BoxProvider.LIBVIRT or kvm_works()
                             else "qemu")  # fmt: skip
    opts = InitOptions(nodes=args.nodes, channel_url=channel_url, channel=args.channel,
                       provider=provider, image=args.image, subnet=args.subnet,
                       memory=args.memory, cpus=args.cpus, driver=driver)  # fmt: skip
    command = shlex.join(["tidehost", "vagrant", "init", "--nodes", str(opts.nodes),
                          "--channel-url", opts.channel_url, "--channel", opts.channel,
                          "--provider", opts.provider.value])  # fmt: skip
    root_json = _channel_root(args, opts, has_root=cluster is not None
                              and cluster.updater.channel_root is not None)  # fmt: skip
    if not args.no_check:
        try:
            check_catalog(opts.box_url, opts.box_name, opts.provider)
        except Unreachable as e:
            log.warning("warning: %s; `vagrant up` needs it", e)
    written = init_cluster(opts, args.output, cluster_file=args.cluster,
                           ssh_keys=tuple(map(read_ssh_public_key, args.ssh_key)),
                           command=command, root_json=root_json)  # fmt: skip
    for path in written:
        print(path)
    where = libvirt.running() if provider is BoxProvider.LIBVIRT else None
    prefix = " ".join(where.prefix()) + " " if where is not None and where.netns else ""
    print(f"next: cd {args.output} && {prefix}VAGRANT_DEFAULT_PROVIDER={opts.provider.value} "
          "vagrant up", file=sys.stderr)  # fmt: skip
    return 0


def _channel_root(args: argparse.Namespace, opts: InitOptions, *, has_root: bool) -> bytes | None:
    """The root.json the nodes' agents trust: --channel-root, else (unless the cluster file
    names one) the repository's own, fetched now."""
    if args.channel_root is not None:
        try:
            return Path(args.channel_root).read_bytes()
        except OSError as e:
            raise ConfigError(f"--channel-root: {args.channel_root}: {e.strerror}") from None
    if has_root or args.no_check:
        return None
    try:
        data = fetch_root(opts.channel_url)
    except Unreachable as e:
        log.warning("warning: %s: the nodes get no channel root, and their agents trust only "
                    "one built into the image; pass --channel-root ROOT_JSON", e)  # fmt: skip
        return None
    log.info("trusting %smetadata/root.json as fetched now (pass --channel-root to pin a "
             "copy you trust)", opts.channel_url.rstrip("/") + "/")  # fmt: skip
    return data


def _boxes(raw: list[str]) -> dict[BoxProvider, Path]:
    boxes: dict[BoxProvider, Path] = {}
    for item in raw:
        name, sep, path = item.partition("=")
        provider = next((p for p in BoxProvider if p.value == name), None)
        if not sep or provider is None or not path:
            choices = ", ".join(p.value for p in BoxProvider)
            raise ConfigError(f"--box: {item!r} is not PROVIDER=FILE (PROVIDER: {choices})")
        boxes[provider] = Path(path)
    return boxes


def cmd_catalog_publish(args: argparse.Namespace) -> int:
    boxes = _boxes(args.box)
    if args.build_dir is not None:
        boxes = {**find_boxes(args.build_dir, args.image, args.version), **boxes}
    dest = write_box_catalog(args.repo, channel=args.channel, version=args.version,
                             boxes=boxes, box_url_base=args.box_url_base,
                             image=args.image, copy=not args.no_copy)  # fmt: skip
    print(dest)
    return 0


def cmd_catalog_promote(args: argparse.Namespace) -> int:
    dest = promote_box_catalog(args.repo, version=args.version, src=args.src, dst=args.dst,
                               image=args.image)  # fmt: skip
    print(dest)
    return 0


def cmd_libvirt_start(args: argparse.Namespace) -> int:
    before = libvirt.running()
    state = before or libvirt.start(netns=args.netns)
    if before is None:
        print(f"started {', '.join(f'{d} (pid {p})' for d, p in state.pids)} in netns "
              f"{state.netns}")  # fmt: skip
    print(libvirt.describe(state))
    return 0


def cmd_libvirt_stop(args: argparse.Namespace) -> int:
    done = libvirt.stop(force=args.force)
    print(f"stopped {', '.join(done)}" if done else "nothing to stop (not started by tidehost)")
    return 0


def cmd_libvirt_status(args: argparse.Namespace) -> int:
    print(libvirt.describe(libvirt.running()))
    return 0
