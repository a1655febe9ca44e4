"""Stage: the Debian root tree, made by mmdebstrap and cached as tar.zst by its inputs.

The cache key covers everything that decides the tree's contents: suite, mirror, the sorted
package list, the dpkg path filters (the image file's ``exclude``) and the hook files (the
dracut configuration and the initrd's drop-ins). A second build with the same inputs restores
the tree in seconds instead of bootstrapping again.

The initrd is made here, by dracut when the kernel package is installed, so it is part of the
cached tree: two builds from one cache have byte-identical initrds (and a release that changes
only /usr ships the same kernel and initrd). What the initrd must hold beyond dracut's own
modules is copied into the tree before any package is installed (``INITRD_FILES``).
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

APT_OPTIONS = ('APT::Install-Recommends "false"',)
CACHE_FORMAT = 3  # bump when the way trees are made changes

# Data files copied into the tree before its packages are installed, so that dracut puts them
# into the initrd too: (data file, path in the tree). The host reads the same files from /usr.
INITRD_FILES = (
    ("dracut-tidehost.conf", "/etc/dracut.conf.d/"),
    ("system-tidehost.conf", "/usr/lib/systemd/system.conf.d/50-tidehost.conf"),
    ("veritysetup-tidehost.conf",
     "/usr/lib/systemd/system/systemd-veritysetup@.service.d/50-tidehost.conf"),
)  # fmt: skip


def dpkg_filters(exclude: tuple[str, ...]) -> tuple[str, ...]:
    """dpkg's path filters for the image file's ``exclude`` globs, in order (pure)."""
    return tuple(f"path-include={g[1:]}" if g.startswith("!") else f"path-exclude={g}"
                 for g in exclude)  # fmt: skip


def _data(name: str) -> str:
    return data_file("imagebuild.image.data", name).read_text()


def dracut_conf() -> str:
    return _data("dracut-tidehost.conf")


def cache_key(suite: str, mirror: str | None, packages: tuple[str, ...],
              exclude: tuple[str, ...] = ()) -> str:  # fmt: skip
    """A stable digest of every input that decides the tree's contents."""
    doc = {
        "format": CACHE_FORMAT,
        "suite": suite,
        "mirror": mirror or "",
        "packages": sorted(packages),
        "dpkg": list(dpkg_filters(exclude)),  # ordered: the last matching filter wins
        "apt": list(APT_OPTIONS),
        "initrd": {dest: _data(name) for name, dest in INITRD_FILES},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def cached_tree_path(ctx: BuildContext) -> Path:
    c = ctx.config
    key = cache_key(c.suite.value, c.mirror, c.all_packages, c.exclude)
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
    hooks = []
    for n, (name, dest) in enumerate(INITRD_FILES):
        folder, base = dest.rsplit("/", 1)
        src = ctx.work / "initrd-files" / str(n) / (base or name)
        src.parent.mkdir(parents=True)
        src.write_text(_data(name))
        hooks += [f'--essential-hook=mkdir -p "$1{folder}"',
                  f"--essential-hook=copy-in {src} {folder}/"]  # fmt: skip
    cmd: list[str | Path] = [
        "mmdebstrap", "--mode=root", "--variant=apt", "--format=tar",
        f"--include={','.join(c.all_packages)}",
        *(f"--aptopt={o}" for o in APT_OPTIONS),
        *(f"--dpkgopt={o}" for o in dpkg_filters(c.exclude)),
        *hooks,
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
