"""Stage: the tools tree, a small Debian trixie tree that builds and signs the boot artifacts.

The build machine (bookworm) has no ukify and an older systemd; the host image must not carry
signing tools. So ukify, systemd-measure, sbsign and efitools run from a tree of their own,
made by mmdebstrap and cached as tar.zst by its inputs like the root tree (mkosi's
ToolsTree), and restored into the build's work folder in a second or two. Commands run in it
with ``chroot`` (``run_in_tools``); their files go through its ``/w`` folder.

The tree also holds the loader the ESP gets: systemd-boot from Debian forky (newer than
trixie's 257), taken only as an EFI binary. 257 hands a UKI the firmware refuses back to the
firmware, which then tries network boot and stops at its boot menu; the newer loader has
``reboot-on-error auto``: it resets while the refused entry has tries left, so every try
counts down and the other slot boots (see ``stages.esp``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from imagebuild.core.errors import StageError
from imagebuild.core.run import require, run
from imagebuild.image.context import BuildContext

log = logging.getLogger(__name__)

SUITE = "trixie"
PACKAGES = (
    "systemd-ukify", "systemd-boot-efi", "python3-pefile", "sbsigntool", "efitools", "openssl",
    "tpm2-tools",  # the libtss2 libraries systemd-measure needs to sign a PCR policy
)  # fmt: skip
LOADER_SUITE = "forky"
LOADER_PACKAGE = "systemd-boot-efi"
LOADER = "usr/lib/tidehost/loader/systemd-bootx64.efi"  # in the tools tree
LOADER_MUST_HAVE = b"reboot-on-error"
DPKG_FILTERS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
                "path-exclude=/usr/share/locale/*")  # fmt: skip
CACHE_FORMAT = 1  # bump when the way the tree is made changes
WORK = "w"  # the tree's folder for inputs and outputs of commands run in it

# Run on the build machine by mmdebstrap with the tree as $1: fetch the newer loader's package
# from the mirror the tree was made from (its suite's Release may be past Valid-Until on a
# frozen mirror, hence check-valid-until=no) and keep only its systemd-bootx64.efi.
_LOADER_HOOK = r"""set -e
m=$(sed -n 's/^deb \([^ ]*\) {suite} main.*/\1/p' "$1/etc/apt/sources.list" | head -n1)
[ -n "$m" ] || {{ echo "tools tree: no {suite} mirror in sources.list" >&2; exit 1; }}
list="$1/etc/apt/sources.list.d/tidehost-loader.list"
echo "deb [check-valid-until=no] $m {loader_suite} main" > "$list"
chroot "$1" apt-get -q -o APT::Sandbox::User=root update
chroot "$1" sh -c 'cd /tmp && apt-get -q -o APT::Sandbox::User=root download {pkg}/{loader_suite}'
mkdir -p "$1/$(dirname {loader})"
dpkg-deb --fsys-tarfile "$1"/tmp/{pkg}_*.deb \
  | tar -xO ./usr/lib/systemd/boot/efi/systemd-bootx64.efi > "$1/{loader}"
rm -f "$list" "$1"/tmp/{pkg}_*.deb
"""


def loader_hook() -> str:
    return _LOADER_HOOK.format(suite=SUITE, loader_suite=LOADER_SUITE, pkg=LOADER_PACKAGE,
                               loader=LOADER)  # fmt: skip


def cache_key(mirror: str | None) -> str:
    """A stable digest of every input that decides the tools tree's contents (pure)."""
    doc = {"format": CACHE_FORMAT, "suite": SUITE, "mirror": mirror or "",
           "packages": sorted(PACKAGES), "dpkg": list(DPKG_FILTERS), "loader": loader_hook()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def cached_tools_path(cache_dir: Path, mirror: str | None) -> Path:
    return cache_dir / "tools" / f"{SUITE}-{cache_key(mirror)[:20]}.tar.zst"


def tools_dir(ctx: BuildContext) -> Path:
    return ctx.work / "tools"


def work_dir(ctx: BuildContext) -> Path:
    """The tools tree's ``/w``, as seen from the build machine."""
    return tools_dir(ctx) / WORK


def inside(ctx: BuildContext, path: Path) -> str:
    """``path`` (under the tools tree) as a command run in the tree sees it."""
    return "/" + str(Path(path).relative_to(tools_dir(ctx)))


def bootstrap(target: Path, mirror: str | None) -> None:
    """Run mmdebstrap into ``target`` (a .tar.zst)."""
    cmd: list[str | Path] = [
        "mmdebstrap", "--mode=root", "--variant=apt", "--format=tar",
        f"--include={','.join(PACKAGES)}",
        '--aptopt=APT::Install-Recommends "false"',
        *(f"--dpkgopt={o}" for o in DPKG_FILTERS),
        f"--customize-hook={loader_hook()}",
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
        SUITE, target,
    ]  # fmt: skip
    if mirror:
        cmd.append(mirror)
    result = run(cmd, stream=True, check=False)
    if result.returncode != 0:
        target.unlink(missing_ok=True)
        out = result.stderr.decode(errors="replace")
        last = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["no output"]
        raise StageError(f"the tools tree ({SUITE}: {', '.join(PACKAGES)}) could not be made: "
                         f"{last[0]}")  # fmt: skip


def install_tools(ctx: BuildContext) -> Path:
    """Restore the tools tree into the work folder (bootstrapping it on a cache miss)."""
    require("mmdebstrap", "tar", "zstd", "chroot")
    cached = cached_tools_path(ctx.cache_dir, ctx.config.mirror)
    if cached.exists():
        log.info("  tools tree from cache: %s", cached)
    else:
        log.info("  no cached tools tree (%s): bootstrapping %s", cached.name, SUITE)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".partial-{os.getpid()}-{cached.name}")
        bootstrap(partial, ctx.config.mirror)
        os.replace(partial, cached)
    tree = tools_dir(ctx)
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    run(["tar", "--zstd", "-xpf", cached, "-C", tree, "--numeric-owner"])
    (tree / WORK).mkdir(mode=0o700)
    if LOADER_MUST_HAVE not in (tree / LOADER).read_bytes():
        raise StageError(f"{cached}: its loader {LOADER} has no {LOADER_MUST_HAVE.decode()} "
                         "(remove the cached tree to fetch a newer one)")  # fmt: skip
    return tree


def run_in_tools(ctx: BuildContext, args: Sequence[str | Path], what: str) -> str:
    """Run ``args`` in the tools tree; its output. Paths in ``args`` are as the tree sees them.

    Raises:
        StageError: the command failed; ``what`` says what was being made.
    """
    result = run(["chroot", tools_dir(ctx), *args], capture=True, check=False)
    out = (result.stdout + result.stderr).decode(errors="replace")
    if result.returncode != 0:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        for line in lines[-20:]:
            log.error("  %s", line)
        raise StageError(f"{what}: {Path(str(args[0])).name} exited {result.returncode}: "
                         f"{lines[-1] if lines else 'no output'}")  # fmt: skip
    return out
