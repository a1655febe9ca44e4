"""Stages: ROOT and ESP filesystems, the GPT disk that holds them, and its output formats.

No loop mounts: ROOT is made with ``mkfs.ext4 -d``, the ESP with ``mkfs.vfat`` and mtools,
and every partition is written into the disk image at its offset.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from channels.bundle import Manifest, Slot, boot_entry
from imagebuild.core.run import require, run
from imagebuild.image.config import OutputFormat, Partitions
from imagebuild.image.context import BuildContext

log = logging.getLogger(__name__)
MiB = 1 << 20
SECTOR = 512

# Discoverable Partitions Specification type GUIDs (x86-64).
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
USR_TYPE = "8484680C-9521-48C6-9C11-B0720656F69E"
USR_VERITY_TYPE = "77FF5F63-E7B6-4633-ACF4-1565B864C0E6"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
LINUX_DATA_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"  # OEM: plain Linux data
READ_ONLY_ATTR = "GUID:60"  # DPS: mount read-only


@dataclass(frozen=True)
class Part:
    label: str
    type_guid: str
    start_mib: int
    size_mib: int
    attrs: str = ""

    @property
    def offset(self) -> int:
        return self.start_mib * MiB


def layout(p: Partitions) -> list[Part]:
    """The partitions in disk order, 1 MiB aligned; ROOT last so it can grow (pure)."""
    order = [
        ("ESP", ESP_TYPE, p.esp, ""),
        (Slot.A.usr_label, USR_TYPE, p.usr, READ_ONLY_ATTR),
        (Slot.A.verity_label, USR_VERITY_TYPE, p.usr_verity, READ_ONLY_ATTR),
        (Slot.B.usr_label, USR_TYPE, p.usr, READ_ONLY_ATTR),
        (Slot.B.verity_label, USR_VERITY_TYPE, p.usr_verity, READ_ONLY_ATTR),
        ("OEM", LINUX_DATA_TYPE, p.oem, ""),
        ("ROOT", ROOT_TYPE, p.root, ""),
    ]
    parts, start = [], 1
    for label, guid, size, attrs in order:
        parts.append(Part(label, guid, start, size, attrs))
        start += size
    return parts


def disk_size(parts: list[Part]) -> int:
    """Bytes: the partitions plus 1 MiB at the end for the backup GPT."""
    last = parts[-1]
    return (last.start_mib + last.size_mib + 1) * MiB


def sfdisk_script(parts: list[Part]) -> str:
    lines = ["label: gpt", "unit: sectors", "first-lba: 2048", ""]
    for part in parts:
        attrs = f', attrs="{part.attrs}"' if part.attrs else ""
        lines.append(
            f"start={part.offset // SECTOR}, size={part.size_mib * MiB // SECTOR}, "
            f'type={part.type_guid}, name="{part.label}"{attrs}'
        )
    return "\n".join(lines) + "\n"


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
    ctx.artifacts[OutputFormat.RAW.value] = disk


def convert_formats(ctx: BuildContext) -> None:
    raw = ctx.artifacts[OutputFormat.RAW.value]
    if OutputFormat.QCOW2 in ctx.config.formats:
        require("qemu-img")
        qcow = raw.with_suffix(".qcow2")
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow])
        ctx.artifacts[OutputFormat.QCOW2.value] = qcow
    platforms = [f for f in ctx.config.formats if f.is_platform]
    if platforms:
        from imagebuild.image import platforms as plat  # the cloud and Vagrant artifacts

        for fmt in platforms:
            ctx.artifacts.update(plat.make(ctx, fmt, raw))
    if OutputFormat.RAW not in ctx.config.formats:
        del ctx.artifacts[OutputFormat.RAW.value]
        os.unlink(raw)

