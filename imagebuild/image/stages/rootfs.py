"""Stage: the Debian root tree, made by mmdebstrap and cached as tar.zst by its inputs.

The cache key covers everything that decides the tree's contents: suite, mirror, the sorted
package list, the dpkg path filters and the hook files (the dracut configuration). A second
build with the same inputs restores the tree in seconds instead of bootstrapping again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from imagebuild.core.errors import ConfigError
from imagebuild.core.files import data_file
from imagebuild.core.run import require, run
from imagebuild.image.context import BuildContext

log = logging.getLogger(__name__)

# Left out of /usr: documentation, manual pages and translations (copyright files stay).
DPKG_FILTERS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)
APT_OPTIONS = ('APT::Install-Recommends "false"',)
CACHE_FORMAT = 2  # bump when the way trees are made changes


def dracut_conf() -> str:
    return data_file("imagebuild.image.data", "dracut-tidehost.conf").read_text()


def cache_key(suite: str, mirror: str | None, packages: tuple[str, ...]) -> str:
    """A stable digest of every input that decides the tree's contents."""
    doc = {
        "format": CACHE_FORMAT,
        "suite": suite,
        "mirror": mirror or "",
        "packages": sorted(packages),
        "dpkg": list(DPKG_FILTERS),
        "apt": list(APT_OPTIONS),
        "dracut": dracut_conf(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def cached_tree_path(ctx: BuildContext) -> Path:
    c = ctx.config
    key = cache_key(c.suite.value, c.mirror, c.all_packages)
    return ctx.cache_dir / "roots" / f"{c.suite.value}-{key[:20]}.tar.zst"


def missing_package(output: str) -> str | None:
    """The package apt could not find, from mmdebstrap's output (pure)."""
    m = re.search(r"Unable to locate package (\S+)", output) or re.search(
        r"Package '?([^' ]+)'? has no installation candidate", output
    )
    return m.group(1) if m else None


def bootstrap(ctx: BuildContext, target: Path) -> None:
    """Run mmdebstrap into ``target`` (a .tar.zst), showing its progress."""
    c = ctx.config
    conf = ctx.work / "dracut-tidehost.conf"
    conf.write_text(dracut_conf())
    cmd: list[str | Path] = [
        "mmdebstrap", "--mode=root", "--variant=apt", "--format=tar",
        f"--include={','.join(c.all_packages)}",
        *(f"--aptopt={o}" for o in APT_OPTIONS),
        *(f"--dpkgopt={o}" for o in DPKG_FILTERS),
        '--essential-hook=mkdir -p "$1/etc/dracut.conf.d"',
        f"--essential-hook=copy-in {conf} /etc/dracut.conf.d/",
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
        c.suite.value, target,
    ]  # fmt: skip
    if c.mirror:
        cmd.append(c.mirror)
    result = run(cmd, stream=True, check=False)
    if result.returncode != 0:
        target.unlink(missing_ok=True)
        out = result.stderr.decode(errors="replace")
        if pkg := missing_package(out):
            raise ConfigError(f"{c.source}: packages: {pkg!r} does not exist in {c.suite.value}")
        last = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["no output"]
        raise ConfigError(f"{c.source}: mmdebstrap failed for {c.suite.value}: {last[0]}")


def install_tree(ctx: BuildContext) -> None:
    """Restore the root tree from the cache, bootstrapping it first on a miss."""
    require("mmdebstrap", "tar", "zstd")
    cached = cached_tree_path(ctx)
    if cached.exists():
        log.info("  root tree from cache: %s", cached)
    else:
        log.info("  no cached tree (%s): bootstrapping %s", cached.name, ctx.config.suite.value)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".partial-{os.getpid()}-{cached.name}")  # keeps .tar.zst
        bootstrap(ctx, partial)
        os.replace(partial, cached)  # the cache never holds a half-written tree
    ctx.tree.mkdir(parents=True)
    run(["tar", "--zstd", "-xpf", cached, "-C", ctx.tree, "--numeric-owner",
         "--xattrs", "--xattrs-include=*"])  # fmt: skip
