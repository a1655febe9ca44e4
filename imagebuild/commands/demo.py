"""``tidehost demo``: the main job, end to end, on this machine.

By default the 3-node cluster demo: build v1 and v2, publish v1, bring up the example
cluster, publish v2 and watch the nodes update one at a time under the etcd lock while their
replicated service keeps answering, then promote v2 to beta and stable.

``--single-host``: one host, a local etcd, and its agent step by step (see
``imagebuild.lab.demo``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebuild.lab.demo import run_cluster_demo, run_single_host_demo

V1, V2 = "1.0.0", "1.1.0"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build, publish, boot and update a cluster (or one host)",
                       description=__doc__)  # fmt: skip
    p.add_argument("-o", "--output", type=Path, default=Path("out/demo"))
    p.add_argument("--single-host", action="store_true",
                   help="one host and a local etcd instead of the 3-node cluster")
    p.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    out: Path = args.output.resolve()
    if args.single_host:
        return run_single_host_demo(out, v1=V1, v2=V2)
    return run_cluster_demo(out / "cluster", keep=args.keep, v1=V1, v2=V2)
