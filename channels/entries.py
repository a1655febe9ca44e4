"""Boot entries and kernel command lines of the slots: the only writers of what the build and
the agent put on the ESP (``channels.bundle`` is the release they come from).

Format 1 boots type #1 entries (``boot_entry``: ``loader/entries/tidehost-<slot>[+N].conf``
naming the slot's kernel and initrd on the ESP); formats 2 and 3 boot type #2 entries, the
UKI itself as ``EFI/Linux/tidehost-<slot>[+N].efi`` (``uki_entry_name``). Either way the
counter in the name is systemd-boot's boot counting, and ``slot_cmdline`` is the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from channels.bundle import Manifest, Slot
from channels.errors import BundleError
from channels.text import control_character, is_int

OEM_MOUNT = "/oem"
OEM_CMDLINE = "cmdline"  # on the OEM partition: the platform's extra kernel arguments


def read_oem_cmdline(oem_dir: Path = Path(OEM_MOUNT)) -> str:
    """The platform's kernel arguments kept on the host's OEM partition ("" if none)."""
    try:
        return " ".join((oem_dir / OEM_CMDLINE).read_text().split())
    except OSError:
        return ""


def slot_cmdline(manifest: Manifest, slot: Slot, extra: str = "") -> str:
    """The kernel command line that boots ``slot`` holding ``manifest``'s /usr.

    The initrd (dracut, systemd) opens USR-x with its verity partition under the root hash,
    mounts it read-only as /usr, and mounts ROOT as /. A format-3 release names no slot: the
    initrd finds the partitions by the UUIDs the root hash derives (``usr_partuuids``), so
    the line is the same for both. ``extra`` is the platform's (OEM) arguments, appended
    last so they win.
    """
    args = [
        "root=PARTLABEL=ROOT",
        "rw",
        "mount.usr=/dev/mapper/usr",
        f"mount.usrfstype={manifest.usr_filesystem}",
        "mount.usrflags=ro",
        f"usrhash={manifest.roothash}",
    ]
    if not manifest.shared_uki:
        args += [
            f"systemd.verity_usr_data=PARTLABEL={slot.usr_label}",
            f"systemd.verity_usr_hash=PARTLABEL={slot.verity_label}",
            f"tidehost.slot={slot.value}",
        ]
    args += [
        "rd.emergency=reboot",
        "panic=10",
        "oops=panic",  # an Oops leaves a half-dead kernel: reboot (a slot on trial falls back)
    ]
    if manifest.kernel_cmdline:
        args.append(manifest.kernel_cmdline)
    if extra:
        args.append(extra)
    return " ".join(args)


@dataclass(frozen=True)
class BootEntry:
    filename: str  # relative to loader/entries/ on the ESP
    text: str
    kernel: str  # ESP-relative path the entry boots
    initrd: str


def entry_stem(slot: Slot) -> str:
    return f"tidehost-{slot.value}"


def boot_entry(
    manifest: Manifest, slot: Slot, tries: int | None, extra_cmdline: str = ""
) -> BootEntry:
    """The Boot Loader Specification entry for ``slot``.

    ``tries`` is the boot-counting budget (``tidehost-b+3.conf``); None gives an entry without
    a counter (the factory slot, or a slot already blessed).  systemd-boot sorts entries by
    ``sort-key`` and then by ``version``, newest first, so the newer slot is preferred while
    it has tries left. ``extra_cmdline``: see ``slot_cmdline``.
    """
    filename = _counted_name(slot, tries, ".conf")
    kernel = f"/{slot.esp_dir}/vmlinuz"
    initrd = f"/{slot.esp_dir}/initrd"
    lines = (
        ("title", f"{manifest.name} {manifest.version} (slot {slot.name})"),
        ("sort-key", manifest.name),
        ("version", manifest.version),
        ("linux", kernel),
        ("initrd", initrd),
        ("options", slot_cmdline(manifest, slot, extra_cmdline)),
    )
    for key, value in lines:  # one line per key, whatever a manifest or OEM file holds
        ch = control_character(value)
        if ch is not None:
            raise BundleError(f"boot entry {filename}: '{key}' would contain the control "
                              f"character {ch}; refusing to write it")
    text = "".join(f"{key} {value}\n" for key, value in lines)
    return BootEntry(filename=filename, text=text, kernel=kernel, initrd=initrd)


def uki_entry_name(slot: Slot, tries: int | None) -> str:
    """The type #2 entry of ``slot`` in ``EFI/Linux/`` on the ESP: ``tidehost-b+3.efi`` with
    ``tries`` left to boot it, ``tidehost-a.efi`` without a counter (the factory slot, or one
    already blessed). systemd-boot takes the entry's sort key and version from the UKI's
    os-release (``IMAGE_ID``, ``IMAGE_VERSION``), so the newer slot is preferred while it
    has tries left, as with type #1 entries."""
    return _counted_name(slot, tries, ".efi")


def _counted_name(slot: Slot, tries: int | None, suffix: str) -> str:
    """``tidehost-<slot>[+tries]<suffix>``: systemd-boot's boot counter in an entry's name."""
    if tries is not None and (not is_int(tries) or not 0 <= tries <= 99):
        raise BundleError(f"boot entry of slot {slot.name}: tries {tries!r} is not a whole "
                          "number from 0 to 99")
    stem = entry_stem(slot)
    return f"{stem}{suffix}" if tries is None else f"{stem}+{tries}{suffix}"
