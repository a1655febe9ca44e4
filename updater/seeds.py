"""What a host already has of a new release: the seeds of its delta download.

- the active slot's /usr device, limited to the image it holds (the data blocks its verity
  superblock counts: the partition is larger than the image);
- the inactive slot's /usr device, limited the same way by its own verity superblock: the
  stale contents of the release before (skipped when that superblock is unreadable: a slot
  never written holds nothing worth chunking);
- the kernels and initrds of both slots on the ESP (``tidehost/<slot>/{vmlinuz,initrd}``),
  and their unified kernel images (``EFI/Linux/tidehost-<slot>*.efi``): a new release's UKIs
  share most of their chunks with them (the same kernel, much of the initrd).

Seeds are only read (``channels.casync.seed``), before the inactive slot is written, and
every byte taken from one is checked against its chunk id when it is used; a seed that
cannot be read makes that file come by full download (``channels.delta``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from channels import verity
from channels.bundle import UKI_DIR, Slot
from channels.delta import SeedSource
from channels.entries import entry_stem
from channels.errors import VerityError

if TYPE_CHECKING:
    from updater.slots import SlotDevices

log = logging.getLogger(__name__)


def image_size(verity_dev: Path) -> int | None:
    """The data size a slot's verity partition covers (its superblock), or None."""
    try:
        fd = os.open(verity_dev, os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.pread(fd, verity.SUPERBLOCK_SIZE, 0)
        finally:
            os.close(fd)
        return verity.Superblock.parse(head, str(verity_dev)).data_size
    except (OSError, VerityError) as e:
        log.info("seeds: %s: no verity superblock (%s)", verity_dev, e)
        return None


def host_seeds(devices: dict[Slot, SlotDevices | None], esp: Path,
               active: Slot) -> list[SeedSource]:
    """The seeds of this host, the active slot's first (see the module docstring)."""
    out: list[SeedSource] = []
    for slot in (active, active.other):
        dev = devices.get(slot)
        if dev is None:  # a layout without slot devices (tests with a fake slot writer)
            continue
        size = image_size(dev.verity)
        if size is not None and os.path.exists(dev.usr):
            out.append(SeedSource(Path(dev.usr), size))
        elif slot is active:
            log.warning("seeds: the running slot %s's image length is unknown; not seeding "
                        "from %s", slot.name, dev.usr)
    for slot in (active, active.other):
        for name in ("vmlinuz", "initrd"):
            path = Path(esp) / slot.esp_dir / name
            if path.is_file():
                out.append(SeedSource(path))
        ukis = Path(esp) / UKI_DIR
        if ukis.is_dir():
            out += [SeedSource(p) for p in sorted(ukis.glob(f"{entry_stem(slot)}*.efi"))
                    if p.is_file()]  # fmt: skip
    return out
