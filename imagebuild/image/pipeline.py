"""The build: a flat sequence of stages over one BuildContext.

Everything is made in a private work folder inside the output directory and moved to its
final name only when the whole build succeeded, so a failed build never leaves a
half-written image under the output name.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from imagebuild.core.errors import ConfigError
from imagebuild.core.log import complete_step
from imagebuild.core.platforms import OutputFormat
from imagebuild.core.run import require
from imagebuild.image import keys, platforms
from imagebuild.image.config import ImageConfig, UsrFilesystem
from imagebuild.image.context import Artifacts, BuildContext, default_cache_dir
from imagebuild.image.epoch import env_epoch, epoch_and_build_id
from imagebuild.image.stages import configure, disk, esp, release, rootfs, tools, uki, usr

log = logging.getLogger(__name__)

TOOLS = ("mmdebstrap", "tar", "zstd", "veritysetup", "mkfs.ext4", "mkfs.vfat", "mmd", "mcopy",
         "sfdisk", "dd", "chroot")  # fmt: skip


@dataclass(frozen=True)
class BuildResult:
    artifacts: Artifacts  # OutputFormat.RAW, ..., Artifact.RELEASE -> published path
    roothash: str
    build_id: str
    seconds: float


def preflight(config: ImageConfig, output_dir: Path) -> None:
    """Cheap checks before any slow work: tools and a writable output directory."""
    tools = list(TOOLS)
    tools.append("mksquashfs" if config.usr_filesystem is UsrFilesystem.SQUASHFS else "mkfs.erofs")
    if OutputFormat.QCOW2 in config.formats:
        tools.append("qemu-img")
    require(*tools)
    if os.geteuid() != 0:
        raise ConfigError("tidehost build must run as root (mmdebstrap --mode=root, chroot)")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".tidehost-probe-"):
            pass
    except OSError as e:
        why = e.strerror
        raise ConfigError(f"{output_dir}: output directory is not writable ({why})") from None


def build(
    config: ImageConfig,
    output_dir: Path,
    *,
    cache_dir: Path | None = None,
    keep_work: bool = False,
    source_date_epoch: str | None = None,
) -> BuildResult:
    """Build ``config`` into ``output_dir``. ``source_date_epoch``: the build's epoch as
    the environment's ``SOURCE_DATE_EPOCH`` gives it (None: read the environment; "": the
    newest input, see ``image.epoch``)."""
    output_dir = Path(output_dir).resolve()
    if source_date_epoch is None:
        source_date_epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    env_epoch(source_date_epoch)  # a bad value is an error before any slow work
    preflight(config, output_dir)
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(dir=output_dir, prefix=f".build-{config.artifact_stem}-"))
    ctx = BuildContext(
        config=config,
        output_dir=output_dir,
        cache_dir=cache_dir or default_cache_dir(),
        work=work,
    )
    log.info("Building %s %s (%s, %s)", config.name, config.version,
             config.channel.value, config.suite.value)  # fmt: skip
    try:
        build_image(ctx, source_date_epoch)
        with complete_step("Publishing outputs"):
            published = publish(ctx)
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - start
    for kind, path in published.items():
        log.info("  %-8s %s", kind, path)
    log.info("Built %s in %.0fs", config.artifact_stem, seconds)
    return BuildResult(published, ctx.roothash, ctx.build_id, seconds)


def prepare_tree(ctx: BuildContext, source_date_epoch: str = "") -> None:
    """The configured tree: /usr complete, ROOT's contents staged (every stage before the
    filesystems are made)."""
    with complete_step("Root tree (mmdebstrap, cached)"):
        rootfs.install_tree(ctx)
        ctx.epoch, ctx.build_id = epoch_and_build_id(ctx.config, ctx.tree, source_date_epoch)
        log.info("  build id %s, epoch %d", ctx.build_id, ctx.epoch)
    if ctx.config.bundle_format >= 2:
        with complete_step("Tools tree (ukify, sbsign, systemd-boot; cached)"):
            tools.install_tools(ctx)
    with complete_step("Configuring the tree"):
        configure.configure_tree(ctx)
        configure.install_updater(ctx)
        configure.apply_overlay(ctx)
        configure.take_kernel(ctx)
    with complete_step("Moving /etc defaults into /usr, staging ROOT"):
        configure.split_etc(ctx)


def build_image(ctx: BuildContext, source_date_epoch: str = "") -> None:
    if ctx.config.secure_boot:  # a wrong passphrase fails here, before any slow work
        ctx.signing = keys.unlock(ctx.config.secure_boot.keys, ctx.work / "keys",
                                  f"{ctx.config.source}: secure_boot.keys")  # fmt: skip
    prepare_tree(ctx, source_date_epoch)
    with complete_step(f"/usr image ({ctx.config.usr_filesystem.value})"):
        usr.make_usr_image(ctx)
    with complete_step("dm-verity hash tree"):
        usr.make_verity(ctx)
    if ctx.config.bundle_format >= 2:
        signed = "signed, with a PCR policy" if ctx.signing else "unsigned"
        per = "one for both slots" if ctx.config.bundle_format >= 3 else "one per slot"
        with complete_step(f"Unified kernel image, {per} ({signed})"):
            uki.make_ukis(ctx, release.uki_cmdlines(ctx), ctx.signing)
        with complete_step(f"Release manifest (format {ctx.config.bundle_format})"):
            release.write_manifest(ctx, ctx.config.bundle_format, keys=ctx.signing)
        with complete_step("ESP with systemd-boot and slot A's UKI"):
            esp.make_esp(ctx, ctx.signing)
    else:
        with complete_step("Release manifest (format 1)"):
            release.write_manifest(ctx, fmt=1)
        with complete_step("ESP with systemd-boot and slot A's entry"):
            esp.make_entries_esp(ctx)
    with complete_step("ROOT and OEM filesystems (ext4)"):
        disk.make_root_fs(ctx)
        disk.make_oem_fs(ctx)
    with complete_step("GPT disk"):
        disk.assemble_disk(ctx)
    with complete_step(f"Output formats ({', '.join(f.value for f in ctx.config.formats)})"):
        disk.make_qcow2(ctx)
        platforms.make_platforms(ctx)  # each from a copy of the raw disk, with its OEM
        disk.drop_raw(ctx)
    with complete_step("Release bundle"):
        release.assemble_bundle(ctx)


def publish(ctx: BuildContext) -> Artifacts:
    """Move every artifact to its final name (same file system: atomic renames)."""
    published: Artifacts = {}
    for kind, path in ctx.artifacts.items():
        dest = ctx.output_dir / path.name
        if dest.is_dir() and not dest.is_symlink():
            old = ctx.work / f"old-{dest.name}"
            os.replace(dest, old)
        os.replace(path, dest)
        published[kind] = dest
    return published
