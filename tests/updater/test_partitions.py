"""The slot's partitions: the UUIDs a format-3 UKI finds /usr by are written into a real GPT
(sfdisk, on a disk image), and the running slot is read from the device under /usr.

sysfs is a small tree here that says what the kernel's would: which disk and partition
number a device is, and which devices lie under the verity device."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from channels.bundle import Slot, usr_partuuids
from updater.errors import SlotError
from updater.partitions import mounted_slot, partition_of, set_partuuids
from updater.slots import SlotDevices

HASH = bytes(range(32)).hex()


def fake_sysfs(tmp: Path, disk, name: str = "vda") -> tuple[Path, Path]:  # noqa: ANN001
    """``class/block/<loopN>`` → ``devices/<name>/<loopN>`` with its partition number (the
    GPT's order), and ``/dev/<name>`` → the disk image."""
    sys_block, dev_dir = tmp / "sys/class/block", tmp / "dev"
    sys_block.mkdir(parents=True)
    dev_dir.mkdir()
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk.image)], check=True,
                                      capture_output=True, text=True).stdout)  # fmt: skip
    for number, part in enumerate(table["partitiontable"]["partitions"], 1):
        loop = disk.parts[part["name"]].name
        node = tmp / "sys/devices" / name / loop
        node.mkdir(parents=True)
        (node / "partition").write_text(f"{number}\n")
        (sys_block / loop).symlink_to(node)
    (dev_dir / name).symlink_to(disk.image)
    return sys_block, dev_dir


def uuids(image: Path) -> dict[str, str]:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], check=True,
                                      capture_output=True, text=True).stdout)  # fmt: skip
    return {p["name"]: p["uuid"].lower() for p in table["partitiontable"]["partitions"]}


def test_the_written_slot_gets_the_uuids_its_root_hash_derives(disk, tmp_path: Path) -> None:  # noqa: ANN001
    sys_block, dev_dir = fake_sysfs(tmp_path, disk)
    before = uuids(disk.image)
    assert partition_of(disk.parts["USR-B"], sys_block, dev_dir) == (dev_dir / "vda", 3)
    b = SlotDevices(disk.parts["USR-B"], disk.parts["USR-B-VERITY"])
    set_partuuids(b, HASH, sys_block=sys_block, dev_dir=dev_dir)
    after = uuids(disk.image)
    assert (after["USR-B"], after["USR-B-VERITY"]) == usr_partuuids(HASH)
    assert {k: v for k, v in after.items() if not k.startswith("USR-B")} == \
        {k: v for k, v in before.items() if not k.startswith("USR-B")}  # fmt: skip


def test_a_device_that_is_not_a_partition_is_refused(disk, tmp_path: Path) -> None:  # noqa: ANN001
    sys_block, dev_dir = fake_sysfs(tmp_path, disk)
    (tmp_path / "sys/devices/vda/loop99").mkdir()
    (sys_block / "loop99").symlink_to(tmp_path / "sys/devices/vda/loop99")
    with pytest.raises(SlotError, match=r"^/dev/loop99: not a partition of a disk"):
        partition_of(Path("/dev/loop99"), sys_block, dev_dir)
    before = uuids(disk.image)
    with pytest.raises(SlotError, match=r"not a partition of a disk"):
        set_partuuids(SlotDevices(Path("/dev/loop99"), disk.parts["USR-B-VERITY"]), HASH,
                      sys_block=sys_block, dev_dir=dev_dir)  # fmt: skip
    assert uuids(disk.image) == before


def test_the_running_slot_is_the_one_under_usr(disk, tmp_path: Path) -> None:  # noqa: ANN001
    devices = {s: SlotDevices(disk.parts[s.usr_label], disk.parts[s.verity_label]) for s in Slot}
    sys_block = tmp_path / "class/block"
    slaves = sys_block / "dm-0/slaves"
    for dev in (disk.parts["USR-B"], disk.parts["USR-B-VERITY"]):
        (slaves / dev.name).mkdir(parents=True)
        rdev = os.stat(dev).st_rdev
        (slaves / dev.name / "dev").write_text(f"{os.major(rdev)}:{os.minor(rdev)}\n")
    mapper = tmp_path / "usr"
    mapper.symlink_to("dm-0")  # /dev/mapper/usr -> ../dm-0
    assert mounted_slot(devices, mapper, sys_block) is Slot.B
    with pytest.raises(SlotError, match=r"usr: /usr is on .*, neither slot's USR partition$"):
        mounted_slot({Slot.A: devices[Slot.A]}, mapper, sys_block)
    with pytest.raises(SlotError, match=r"cannot tell which partitions /usr is on"):
        mounted_slot(devices, tmp_path / "nothing", sys_block)
