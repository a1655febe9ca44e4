"""Stages: ROOT and ESP filesystems, the GPT disk that holds them, and its qcow2.

No loop mounts: ROOT is made with ``mkfs.ext4 -d``, the ESP with ``mkfs.vfat`` and mtools,
and every partition is written into the disk image at its offset (``image.layout``).
"""

from __future__ import annotations

import logging
import os

from channels.bundle import Manifest, Slot, boot_entry
from imagebuild.core.platforms import OutputFormat
from imagebuild.core.run import require, run
from imagebuild.image.context import BuildContext
from imagebuild.image.layout import disk_size, layout, sfdisk_script

log = logging.getLogger(__name__)


def make_root_fs(ctx: BuildContext) -> None:
    require("mkfs.ext4")
    img = ctx.parts / "root.img"
    run(["mkfs.ext4", "-q", "-F", "-L", "ROOT", "-d", ctx.staging, img,
         f"{ctx.config.partitions.root}M"], capture=True)  # fmt: skip


def make_oem_fs(ctx: BuildContext) -> None:
    """The generic OEM partition (ext4, mounted read-only at /oem): empty but for a note.

    Platform outputs (``imagebuild.image.platforms``) replace it with their own settings: kernel
    arguments in ``cmdline`` (kept by the updater in every boot entry it writes), cloud-init
    configuration, and so on.
    """
    staging = ctx.work / "oem-staging"
    staging.mkdir()
    (staging / "README").write_text("Tidehost OEM partition: generic image, no platform.\n")
    run(["mkfs.ext4", "-q", "-F", "-L", "OEM", "-d", staging, ctx.parts / "oem.img",
         f"{ctx.config.partitions.oem}M"], capture=True)  # fmt: skip


def loader_conf() -> str:
    return "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n"


def make_esp(ctx: BuildContext) -> None:
    """A FAT32 ESP with systemd-boot and slot A's kernel, initrd and boot entry.

    The factory slot's entry has no boot counter (it is good by definition); the updater
    writes slot B's entry with tries when it installs a release there.
    """
    require("mkfs.vfat", "mmd", "mcopy")
    img, t = ctx.parts / "esp.img", ctx.tree
    img.unlink(missing_ok=True)
    run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-C", img,
         str(ctx.config.partitions.esp * 1024)], capture=True)  # fmt: skip
    efi = t / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    if not efi.exists():
        efi = t / "usr/lib/systemd/boot/efi/systemd-bootx64.efi.signed"
    manifest = Manifest.from_json((ctx.parts / "manifest.json").read_text())
    entry = boot_entry(manifest, Slot.A, tries=None)
    (ctx.work / "loader.conf").write_text(loader_conf())
    (ctx.work / entry.filename).write_text(entry.text)
    dirs = ["::/EFI", "::/EFI/BOOT", "::/EFI/systemd", "::/loader", "::/loader/entries",
            "::/tidehost", "::/tidehost/a", "::/tidehost/b"]  # fmt: skip
    run(["mmd", "-i", img, *dirs])
    copies = [
        (efi, "::/EFI/BOOT/BOOTX64.EFI"),
        (efi, "::/EFI/systemd/systemd-bootx64.efi"),
        (ctx.work / "loader.conf", "::/loader/loader.conf"),
        (ctx.work / entry.filename, f"::/loader/entries/{entry.filename}"),
        (ctx.parts / "vmlinuz", f"::{entry.kernel}"),
        (ctx.parts / "initrd", f"::{entry.initrd}"),
    ]
    for src, dest in copies:
        run(["mcopy", "-o", "-i", img, src, dest])


def assemble_disk(ctx: BuildContext) -> None:
    """The raw GPT disk: partition table, then each filesystem at its offset (sparse)."""
    require("sfdisk", "dd")
    parts = layout(ctx.config.partitions)
    disk = ctx.work / f"{ctx.config.artifact_stem}.raw"
    with open(disk, "wb") as f:
        f.truncate(disk_size(parts))
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk],
        input=sfdisk_script(parts).encode(), capture=True)  # fmt: skip
    contents = {"ESP": "esp.img", "USR-A": "usr.img", "USR-A-VERITY": "usr.verity",
                "OEM": "oem.img", "ROOT": "root.img"}  # fmt: skip
    for part in parts:
        if part.label not in contents:
            continue  # slot B stays empty until the first update
        src = ctx.parts / contents[part.label]
        run(["dd", f"if={src}", f"of={disk}", "bs=1M", f"seek={part.start_mib}",
             "conv=notrunc,sparse", "status=none"])  # fmt: skip
    ctx.artifacts[OutputFormat.RAW] = disk


def make_qcow2(ctx: BuildContext) -> None:
    """The qcow2 of the raw disk, when the image file asks for it."""
    if OutputFormat.QCOW2 not in ctx.config.formats:
        return
    require("qemu-img")
    raw = ctx.artifacts[OutputFormat.RAW]
    qcow = raw.with_suffix(".qcow2")
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow])
    ctx.artifacts[OutputFormat.QCOW2] = qcow


def drop_raw(ctx: BuildContext) -> None:
    """The raw disk, once every format is made from it, unless it is an output itself."""
    if OutputFormat.RAW in ctx.config.formats:
        return
    os.unlink(ctx.artifacts.pop(OutputFormat.RAW))
