"""``tidehost cloud-config``: certificates, user-data rendering and validation for a cluster."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from imagebuild.cloudconfig.certs import generate_certs
from imagebuild.cloudconfig.model import Cluster
from imagebuild.cloudconfig.parse import parse_cluster_file
from imagebuild.cloudconfig.render import render_user_data
from imagebuild.cloudconfig.seed import SEED_PROVIDERS, write_seed
from imagebuild.cloudconfig.validate import validate_user_data
from imagebuild.core.errors import ConfigError
from imagebuild.core.fields import enum
from imagebuild.core.files import read_ssh_public_key, write_atomic
from imagebuild.core.platforms import Provider

log = logging.getLogger("tidehost.cloudconfig")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cloud-config", help="cluster certificates and cloud-init user-data")
    verbs = p.add_subparsers(dest="cloudconfig_verb", metavar="ACTION", required=True)

    c = verbs.add_parser("certs", help="create the cluster CA and every node's etcd certificates")
    c.add_argument("cluster", type=Path, help="the cluster file")
    c.add_argument(
        "--out", type=Path, help="certificate folder (default: the file's etcd.cert_dir)"
    )
    c.set_defaults(func=cmd_certs)

    r = verbs.add_parser("render", help="render one node's (or every node's) user-data")
    r.add_argument("cluster", type=Path, help="the cluster file")
    r.add_argument("--provider", required=True, help="|".join(p.value for p in Provider))
    target = r.add_mutually_exclusive_group(required=True)
    target.add_argument("--node", help="the node to render")
    target.add_argument("--all", action="store_true", help="every node, into --out-dir")
    r.add_argument("-o", "--output", type=Path, help="output file (default: stdout)")
    r.add_argument("--out-dir", type=Path, help="with --all: write OUT_DIR/NODE.user-data")
    r.add_argument("--certs", type=Path, help="certificate folder (default: etcd.cert_dir)")
    r.add_argument(
        "--ssh-key",
        type=Path,
        action="append",
        default=[],
        help="an SSH public key file for the user core (repeatable)",
    )
    r.add_argument("--templates", type=Path, help="template folder (default: cloud-config/)")
    r.set_defaults(func=cmd_render)

    s = verbs.add_parser("seed", help="a NoCloud seed folder: user-data, meta-data, network-config")
    s.add_argument("cluster", type=Path, help="the cluster file")
    s.add_argument("--node", required=True, help="the node")
    s.add_argument("--out", type=Path, required=True, help="the seed folder to write")
    s.add_argument("--provider", default="nocloud", help="nocloud (default) | vagrant")
    s.add_argument(
        "--dhcp-mac",
        action="append",
        default=[],
        help="a further NIC (by MAC) that gets DHCP, e.g. QEMU user networking",
    )
    s.add_argument("--certs", type=Path, help="certificate folder (default: etcd.cert_dir)")
    s.add_argument(
        "--ssh-key",
        type=Path,
        action="append",
        default=[],
        help="an SSH public key file for the user core (repeatable)",
    )
    s.add_argument("--templates", type=Path, help="template folder (default: cloud-config/)")
    s.set_defaults(func=cmd_seed)

    v = verbs.add_parser("validate", help="run the real `cloud-init schema -c FILE`")
    v.add_argument("user_data", type=Path)
    v.set_defaults(func=cmd_validate)


def cmd_certs(args: argparse.Namespace) -> int:
    cluster = parse_cluster_file(args.cluster)
    out = args.out or cluster.etcd.cert_dir
    written = generate_certs(cluster, out)
    print(f"{out}: {len(written)} file(s) written" + ("" if written else " (all present)"))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    cluster, provider = _cluster_and_provider(args)
    keys = tuple(read_ssh_public_key(p) for p in args.ssh_key)
    if args.all:
        if args.out_dir is None:
            raise ConfigError("--all: name the output folder with --out-dir")
        names = [n.name for n in cluster.nodes]
    else:
        names = [args.node]
    # Render everything first: a bad node means nothing is written.
    texts = {
        name: render_user_data(cluster, name, provider, extra_ssh_keys=keys,
                               template_dir=args.templates)
        for name in names
    }  # fmt: skip
    for name, text in texts.items():
        if args.all:
            dest = args.out_dir / f"{name}.user-data"
        elif args.output is not None:
            dest = args.output
        else:
            print(text, end="")
            continue
        write_atomic(dest, text, 0o600)  # it holds private keys
        log.info("wrote %s", dest)
        print(dest)
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    cluster, provider = _cluster_and_provider(args)
    if provider not in SEED_PROVIDERS:
        raise ConfigError(f"--provider: seeds are for {', '.join(SEED_PROVIDERS)}, not {provider}")
    keys = tuple(read_ssh_public_key(p) for p in args.ssh_key)
    text = render_user_data(
        cluster, args.node, provider, extra_ssh_keys=keys, template_dir=args.templates
    )
    for path in write_seed(args.out, cluster, cluster.node(args.node), text,
                           tuple(args.dhcp_mac)):  # fmt: skip
        print(path)
    return 0


def _cluster_and_provider(args: argparse.Namespace) -> tuple[Cluster, Provider]:
    cluster = parse_cluster_file(args.cluster)
    provider = enum(Provider)("--provider", args.provider)
    if args.certs is not None:
        cluster = replace(cluster, etcd=replace(cluster.etcd, cert_dir=args.certs))
    return cluster, provider


def cmd_validate(args: argparse.Namespace) -> int:
    if not args.user_data.is_file():
        raise ConfigError(f"{args.user_data}: no such file")
    print(validate_user_data(args.user_data).splitlines()[-1])
    return 0

