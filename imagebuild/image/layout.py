"""The GPT layout of a Tidehost disk: partitions in disk order, 1 MiB aligned (pure).

Shared by the build (``stages.disk``), the platform disks (``platforms.disk``) and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from channels.bundle import Slot
from imagebuild.image.config import Partitions

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
    uuid: str = ""  # the partition's UUID ("": sfdisk makes one up)

    @property
    def offset(self) -> int:
        return self.start_mib * MiB


def layout(p: Partitions, slot_a_uuids: tuple[str, str] = ("", "")) -> list[Part]:
    """The partitions in disk order, 1 MiB aligned; ROOT last so it can grow (pure).

    ``slot_a_uuids``: the UUIDs of USR-A and USR-A-VERITY, those its root hash derives
    (``channels.bundle.usr_partuuids``) when the release's UKI finds /usr by them.
    """
    usr_a, verity_a = slot_a_uuids
    order = [
        ("ESP", ESP_TYPE, p.esp, "", ""),
        (Slot.A.usr_label, USR_TYPE, p.usr, READ_ONLY_ATTR, usr_a),
        (Slot.A.verity_label, USR_VERITY_TYPE, p.usr_verity, READ_ONLY_ATTR, verity_a),
        (Slot.B.usr_label, USR_TYPE, p.usr, READ_ONLY_ATTR, ""),
        (Slot.B.verity_label, USR_VERITY_TYPE, p.usr_verity, READ_ONLY_ATTR, ""),
        ("OEM", LINUX_DATA_TYPE, p.oem, "", ""),
        ("ROOT", ROOT_TYPE, p.root, "", ""),
    ]
    parts, start = [], 1
    for label, guid, size, attrs, uuid in order:
        parts.append(Part(label, guid, start, size, attrs, uuid))
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
        uuid = f", uuid={part.uuid}" if part.uuid else ""
        lines.append(
            f"start={part.offset // SECTOR}, size={part.size_mib * MiB // SECTOR}, "
            f'type={part.type_guid}, name="{part.label}"{attrs}{uuid}'
        )
    return "\n".join(lines) + "\n"
