"""``tidehost build [IMAGE_FILE]``: build a host image and its release bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebuild.image.config import parse_image_file
from imagebuild.image.pipeline import build


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build an A/B host image and its release bundle",
                       description=__doc__)  # fmt: skip
    p.add_argument("image_file", nargs="?", type=Path,
                   help="image file (YAML); default: the built-in reference image")  # fmt: skip
    p.add_argument("-o", "--output", type=Path, default=Path("out"), help="output directory")
    p.add_argument("--version", dest="image_version", help="override the image's version")
    p.add_argument("--channel", help="override the channel (alpha, beta, stable)")
    p.add_argument("--suite", help="override the Debian suite (trixie, bookworm)")
    p.add_argument("--format", dest="formats", help="output formats, comma-separated")
    p.add_argument("--cache-dir", type=Path, help="root-tree cache (default ~/.cache/tidehost)")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder (debugging)")
    p.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    config = parse_image_file(args.image_file).with_overrides(
        version=args.image_version, channel=args.channel, suite=args.suite,
        formats=args.formats,
    )  # fmt: skip
    result = build(config, args.output, cache_dir=args.cache_dir, keep_work=args.keep_work)
    for kind, path in result.artifacts.items():
        print(f"{kind}\t{path}")
    return 0
