"""The GPT partitions under the slots: which slot's /usr is mounted, and the partition UUIDs
by which a format-3 release's UKI finds its /usr.

A format-3 UKI boots either slot: its command line carries only ``usrhash=``, and systemd's
veritysetup generator opens the data and hash partitions whose UUIDs that root hash derives
(``channels.bundle.usr_partuuids``). The agent gives those UUIDs to the slot it writes, after
the slot's bytes are verified and before its boot entry exists; the running slot keeps its
own. The command line then no longer says which slot runs, so that is read from the device
mapper: the partitions under ``/dev/mapper/usr``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from channels.bundle import Slot, usr_partuuids
from updater.errors import CommandError, SlotError
from updater.run import run

if TYPE_CHECKING:
    from updater.slots import SlotDevices

log = logging.getLogger(__name__)
SYS_BLOCK = Path("/sys/class/block")
DEV = Path("/dev")
USR_MAPPER = Path("/dev/mapper/usr")


def _devno(path: Path) -> str:
    rdev = os.stat(path).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def mounted_slot(devices: Mapping[Slot, SlotDevices], mapper: Path = USR_MAPPER,
                 sys_block: Path = SYS_BLOCK) -> Slot:  # fmt: skip
    """The slot whose USR partition lies under the verity device that is /usr.

    Raises:
        SlotError: /usr is not a device-mapper device over one of the slots.
    """
    name = os.path.basename(os.path.realpath(mapper))  # dm-0
    slaves = sys_block / name / "slaves"
    try:
        under = {(slaves / s / "dev").read_text().strip() for s in os.listdir(slaves)}
    except OSError as e:
        raise SlotError(f"{mapper}: cannot tell which partitions /usr is on ({slaves}: "
                        f"{e.strerror})") from None  # fmt: skip
    for slot, dev in devices.items():
        try:
            if _devno(dev.usr) in under:
                return slot
        except OSError:
            continue
    raise SlotError(f"{mapper}: /usr is on {', '.join(sorted(under)) or 'nothing'}, neither "
                    "slot's USR partition")  # fmt: skip


def partition_of(dev: Path, sys_block: Path = SYS_BLOCK, dev_dir: Path = DEV) -> tuple[Path, int]:
    """The whole disk and the partition number of the partition ``dev`` (sysfs).

    Raises:
        SlotError: ``dev`` is not a partition of a disk.
    """
    name = os.path.basename(os.path.realpath(dev))  # vda4
    node = (sys_block / name).resolve()  # .../block/vda/vda4
    try:
        number = int((node / "partition").read_text())
    except (OSError, ValueError):
        raise SlotError(f"{dev}: not a partition of a disk ({node}/partition is unreadable)") \
            from None
    return dev_dir / node.parent.name, number


def set_partuuids(devices: SlotDevices, roothash: str, runner: Callable[..., object] = run,
                  sys_block: Path = SYS_BLOCK, dev_dir: Path = DEV) -> None:  # fmt: skip
    """Give the slot's USR and USR-VERITY partitions the UUIDs ``roothash`` derives, in the GPT
    on disk (the running kernel keeps its view of the table until the reboot).

    Raises:
        SlotError: a device is not a partition, or sfdisk failed.
    """
    for dev, uuid in zip((devices.usr, devices.verity), usr_partuuids(roothash), strict=True):
        disk, number = partition_of(dev, sys_block, dev_dir)
        try:
            runner(["sfdisk", "--no-reread", "--no-tell-kernel", "--part-uuid", str(disk),
                    str(number), uuid], timeout=60)  # fmt: skip
        except CommandError as e:
            raise SlotError(f"{disk}: cannot set partition {number}'s UUID ({e})") from None
        log.info("%s: partition %d (%s) has UUID %s", disk, number, dev, uuid)
