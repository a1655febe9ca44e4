#!/usr/bin/env python3
"""/usr image figures: size and how much of it a small change changes, per squashfs setting.

    .venv/bin/python bench/usr_bench.py [--variants 1024:frag,1024:nofrag,256:nofrag]
                                        [--level 19] [--work DIR]

Three trees are prepared through the build's own stages (``pipeline.prepare_tree``): the
reference image at 1.0.0 (A), the same at 1.0.1 (B: only the version changed), and the
reference plus ``jq`` at 1.0.0 (C: one package added; its own cached root tree). For every
variant (block size in KiB, fragments or not) each tree becomes a usr.img, and the bench
prints its size, the 4 KiB blocks that differ from A's at the same offset (what a
block-by-block delta would send), and the bytes of casync chunks (``channels.casync``'s
default chunker) of B and C that A does not have (what a chunk-store delta fetches).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from channels.casync import fastchunk
from channels.casync.chunker import DEFAULT_PARAMS, iter_chunks
from imagebuild.core.run import run
from imagebuild.image.config import ImageConfig, parse_image_file
from imagebuild.image.context import BuildContext, default_cache_dir
from imagebuild.image.pipeline import prepare_tree
from imagebuild.image.stages.usr import make_usr_image

MB = 1_000_000
BLOCK = 4096


def prepare(config: ImageConfig, work: Path) -> BuildContext:
    ctx = BuildContext(config=config, output_dir=work, cache_dir=default_cache_dir(), work=work)
    work.mkdir(parents=True)
    prepare_tree(ctx)
    return ctx


def blocks_differing(a: Path, b: Path) -> tuple[int, int]:
    """4 KiB blocks of ``b`` that differ from ``a`` at the same offset, and ``b``'s blocks."""
    differ = total = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while block := fb.read(BLOCK):
            total += 1
            differ += fa.read(BLOCK) != block
    return differ, total


def chunk_ids(path: Path) -> dict[str, int]:
    with open(path, "rb") as f:
        return {hashlib.sha256(c).hexdigest(): len(c) for _, c in iter_chunks(f, DEFAULT_PARAMS)}


def new_chunk_bytes(old: dict[str, int], new: dict[str, int]) -> int:
    return sum(size for cid, size in new.items() if cid not in old)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="1024:frag,1024:nofrag,256:nofrag,128:nofrag")
    ap.add_argument("--level", type=int, default=19)
    ap.add_argument("--work", type=Path, help="keep the trees here (default: a temp folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fastchunk.ensure_cached_library(run)  # the C chunker, as the workstation builds it
    base = parse_image_file(None)
    configs = {
        "A": base.with_overrides(version="1.0.0"),
        "B": base.with_overrides(version="1.0.1"),
        "C": dataclasses.replace(base, packages=(*base.packages, "jq")).with_overrides(
            version="1.0.0"),
    }  # fmt: skip
    tmp = args.work or Path(tempfile.mkdtemp(prefix="tidehost-usr-bench-", dir="/var/tmp"))
    try:
        ctxs = {}
        for name, config in configs.items():
            t = time.monotonic()
            ctxs[name] = prepare(config, tmp / name)
            print(f"tree {name} ({config.version}, {len(config.packages)} packages): "
                  f"{time.monotonic() - t:.0f} s", flush=True)  # fmt: skip
        print(f"\n{'variant':16s} {'usr.img A':>10s} {'mksquashfs':>10s} "
              f"{'B: 4K blocks':>16s} {'B: new chunks':>14s} "
              f"{'C: 4K blocks':>16s} {'C: new chunks':>14s}")  # fmt: skip
        for variant in args.variants.split(","):
            kib, frag = variant.split(":")
            images, seconds = {}, 0.0
            for name, ctx in ctxs.items():
                ctx.config = dataclasses.replace(
                    ctx.config, compression_level=args.level,
                    compression_block_size=int(kib), fragments=frag == "frag")  # fmt: skip
                ctx.parts.mkdir(exist_ok=True)
                t = time.monotonic()
                make_usr_image(ctx)
                seconds += time.monotonic() - t
                images[name] = ctx.parts / f"usr-{kib}-{frag}.img"
                (ctx.parts / "usr.img").rename(images[name])
            ids = {n: chunk_ids(p) for n, p in images.items()}
            row = [f"{kib}K {frag:6s}", f"{images['A'].stat().st_size / MB:8.1f}MB",
                   f"{seconds / 3:8.0f} s"]  # fmt: skip
            for other in ("B", "C"):
                d, total = blocks_differing(images["A"], images[other])
                fetched = new_chunk_bytes(ids["A"], ids[other])
                size = images[other].stat().st_size
                row += [f"{d:6d}/{total} ", f"{fetched / MB:6.1f}MB {100 * fetched / size:4.1f}%"]
            print(" ".join(f"{c:>10s}" for c in row), flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
