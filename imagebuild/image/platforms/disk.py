"""A platform's copy of the raw disk: its OEM, its factory boot entry, (Vagrant) its user.

Nothing is mounted: the OEM and ROOT filesystems are made with ``mkfs.ext4 -d`` and written
at their offsets, the ESP's entry is replaced with mtools at the ESP's offset. /usr (both
slots) is never touched, so every platform disk carries the very same /usr.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from channels.bundle import Manifest, Slot
from channels.entries import boot_entry
from imagebuild.core.run import require, run
from imagebuild.image.context import BuildContext
from imagebuild.image.layout import MiB, Part, layout
from imagebuild.image.platforms.oem import OemSpec
from imagebuild.image.platforms.vagrant_user import add_vagrant_user
from imagebuild.image.stages.uki import ADDON_DIR, make_addon

log = logging.getLogger(__name__)
GiB = 1 << 30


def whole_gib(size: int) -> int:
    """``size`` rounded up to a whole GiB: GCE wants it, EC2 and DO bill volumes so (pure)."""
    return -(-size // GiB) * GiB


def _part(ctx: BuildContext, label: str) -> Part:
    return next(p for p in layout(ctx.config.partitions) if p.label == label)


def write_fs(disk: Path, image: Path, part: Part) -> None:
    """Replace a partition's contents with ``image``: punch the old blocks, write sparse."""
    run(["fallocate", "--punch-hole", "--offset", str(part.offset),
         "--length", str(part.size_mib * MiB), disk])  # fmt: skip
    run(["dd", f"if={image}", f"of={disk}", "bs=1M", f"seek={part.start_mib}",
         "conv=notrunc,sparse", "status=none"])  # fmt: skip


def make_oem_image(ctx: BuildContext, spec: OemSpec, dest: Path) -> Path:
    staging = ctx.work / f"oem-{spec.oem.value}"
    shutil.rmtree(staging, ignore_errors=True)
    for rel, text in spec.files().items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    run(["mkfs.ext4", "-q", "-F", "-L", "OEM", "-d", staging, dest,
         f"{ctx.config.partitions.oem}M"], capture=True)  # fmt: skip
    return dest


def make_vagrant_root(ctx: BuildContext, dest: Path) -> Path:
    """ROOT as the image build made it, plus the ``vagrant`` user."""
    tree = ctx.work / "root-vagrant"
    shutil.rmtree(tree, ignore_errors=True)
    run(["cp", "-a", ctx.staging, tree])
    add_vagrant_user(tree)
    run(["mkfs.ext4", "-q", "-F", "-L", "ROOT", "-d", tree, dest,
         f"{ctx.config.partitions.root}M"], capture=True)  # fmt: skip
    shutil.rmtree(tree, ignore_errors=True)
    return dest


OEM_ADDON = "tidehost-oem.addon.efi"


def rewrite_factory_entry(ctx: BuildContext, disk: Path, spec: OemSpec) -> None:
    """The OEM's kernel arguments on the copy's ESP: appended to slot A's entry (format 1);
    for UKIs, whose command line is signed, as a command-line addon that systemd-stub adds
    to every slot's UKI, the ones updates bring too (``stages.uki.make_addon``)."""
    manifest = Manifest.from_json((ctx.parts / "manifest.json").read_text())
    esp = _part(ctx, "ESP")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    img = f"{disk}@@{esp.offset}"
    if manifest.uki:
        addon = make_addon(ctx, spec.cmdline, f"oem-{spec.oem.value}.addon.efi", ctx.signing)
        run(["mmd", "-D", "s", "-i", img, f"::/{ADDON_DIR}"], env=env, check=False,
            capture=True)  # fmt: skip
        run(["mcopy", "-o", "-i", img, addon, f"::/{ADDON_DIR}/{OEM_ADDON}"], env=env)
        return
    entry = boot_entry(manifest, Slot.A, None, extra_cmdline=spec.cmdline)
    src = ctx.work / f"entry-{spec.oem.value}.conf"
    src.write_text(entry.text)
    run(["mcopy", "-o", "-i", img, src, f"::/loader/entries/{entry.filename}"], env=env)


def platform_disk(ctx: BuildContext, spec: OemSpec, raw: Path) -> Path:
    """The raw disk for ``spec``'s platform, made once per OEM and shared by its formats."""
    disk = ctx.work / f"{ctx.config.artifact_stem}-{spec.oem.value}.disk.raw"
    if disk.exists():
        return disk
    require("cp", "fallocate", "dd", "sfdisk", "mkfs.ext4", "mcopy")
    partial = disk.with_name(f".{disk.name}.partial")
    run(["cp", "--sparse=always", raw, partial])
    size = partial.stat().st_size
    if whole_gib(size) != size:
        os.truncate(partial, whole_gib(size))
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel",
             "--relocate", "gpt-bak-std", partial], capture=True)  # fmt: skip
    oem_img = make_oem_image(ctx, spec, ctx.work / f"oem-{spec.oem.value}.img")
    write_fs(partial, oem_img, _part(ctx, "OEM"))
    oem_img.unlink()
    if spec.wants_vagrant_user:
        root_img = make_vagrant_root(ctx, ctx.work / "root-vagrant.img")
        write_fs(partial, root_img, _part(ctx, "ROOT"))
        root_img.unlink()
    rewrite_factory_entry(ctx, partial, spec)
    os.replace(partial, disk)
    log.info("  %s disk: %s", spec.title, json.dumps(spec.cmdline))
    return disk
