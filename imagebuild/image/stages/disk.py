"""Stages: ROOT and OEM filesystems, the GPT disk that holds them (and the ESP of
``stages.esp``), and its qcow2.

No loop mounts: ROOT is made with ``mkfs.ext4 -d``, the ESP with ``mkfs.vfat`` and mtools,
and every partition is written into the disk image at its offset (``image.layout``).
"""

from __future__ import annotations

import logging
import os

from channels.bundle import usr_partuuids
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


def assemble_disk(ctx: BuildContext) -> None:
    """The raw GPT disk: partition table, then each filesystem at its offset (sparse)."""
    require("sfdisk", "dd")
    uuids = usr_partuuids(ctx.roothash) if ctx.config.bundle_format >= 3 else ("", "")
    parts = layout(ctx.config.partitions, uuids)
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
