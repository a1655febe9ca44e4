"""What the host's firmware enforces and what its loader booted, read from efivarfs.

Two uses:

- ``check_uki``: before a release's UKI is staged, it must be the target slot's (its signed
  command line names the slot and the release's root hash), and on a host that enforces
  Secure Boot it must pass the enrolled db and dbx (``channels.authenticode``): the agent never
  writes a boot artifact the firmware would refuse, so the host stays on its slot.
- ``stale_boot_count``: systemd-boot leaves ``LoaderBootCountPath`` behind when the entry it
  tried could not even be loaded (a UKI refused by Secure Boot, a truncated file) and the
  firmware runs the loader again in the same power cycle, which then boots another entry;
  ``systemd-bless-boot`` would bless the refused entry. Blessing is skipped when the counted
  entry is not the one that booted (``LoaderEntrySelected``). The variable cannot be deleted
  (efivarfs answers EINVAL under OVMF), so the guard is an ``ExecCondition=``.
"""

from __future__ import annotations

import re
from pathlib import Path

from channels.authenticode import (
    EFI_GLOBAL_GUID,
    EFI_IMAGE_SECURITY_GUID,
    efivar_data,
    pe_sections,
    verify_image,
)
from channels.bundle import Manifest, Slot
from channels.errors import ImageSignatureError
from updater.errors import BadRelease, SlotError

EFIVARS = Path("/sys/firmware/efi/efivars")
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # systemd-boot's vendor GUID
_COUNTER = re.compile(r"\+\d+(?:-\d+)?(?=\.(?:efi|conf)$)")


def read_var(efivars: Path, name: str, guid: str) -> bytes | None:
    """A variable's data (without its 4 attribute bytes); None if it is not set."""
    try:
        return efivar_data((Path(efivars) / f"{name}-{guid}").read_bytes())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SlotError(f"{efivars}/{name}-{guid}: cannot read ({e.strerror})") from None


def loader_string(efivars: Path, name: str) -> str:
    """One of systemd-boot's string variables (UTF-16LE, NUL-terminated); "" if unset."""
    raw = read_var(efivars, name, LOADER_GUID)
    return raw.decode("utf-16-le", errors="replace").split("\0", 1)[0] if raw else ""


def secure_boot_enabled(efivars: Path = EFIVARS) -> bool:
    """Whether the firmware enforces Secure Boot (``SecureBoot`` is 1)."""
    return read_var(efivars, "SecureBoot", EFI_GLOBAL_GUID) == b"\x01"


def enrolled(efivars: Path = EFIVARS) -> tuple[bytes, bytes]:
    """The enrolled ``db`` and ``dbx`` signature lists (``dbx`` may be empty).

    Raises:
        SlotError: Secure Boot without a db (nothing the agent writes could boot).
    """
    db = read_var(efivars, "db", EFI_IMAGE_SECURITY_GUID)
    if not db:
        raise SlotError(f"{efivars}: Secure Boot is on but no db is enrolled")
    return db, read_var(efivars, "dbx", EFI_IMAGE_SECURITY_GUID) or b""


def check_uki(data: bytes, name: str, manifest: Manifest, slot: Slot,
              efivars: Path = EFIVARS) -> str:  # fmt: skip
    """Refuse a UKI that is not ``slot``'s for ``manifest``, or (under Secure Boot) one the
    firmware would refuse; what was checked, for the journal.

    Raises:
        BadRelease: the release's signed bytes cannot boot this slot on this host (fetching
            them again cannot help); one line naming ``name``.
        SlotError: the host's enrolled keys cannot be read.
    """
    try:
        sections = pe_sections(data)
    except ImageSignatureError as e:
        raise BadRelease(f"{name}: {e}") from None
    if ".cmdline" not in sections or ".linux" not in sections:
        raise BadRelease(f"{name}: not a unified kernel image (no .linux or .cmdline)")
    args = sections[".cmdline"].rstrip(b"\0").decode(errors="replace").split()
    if manifest.shared_uki:  # no slot named: /usr is found by the root hash's UUIDs
        if f"usrhash={manifest.roothash}" not in args or any(
                a.startswith(("tidehost.slot=", "systemd.verity_usr_")) for a in args):
            raise BadRelease(f"{name}: its command line does not find /usr by root hash "
                             f"{manifest.roothash[:12]}… alone; not staged")  # fmt: skip
    elif f"tidehost.slot={slot.value}" not in args or f"usrhash={manifest.roothash}" not in args:
        raise BadRelease(f"{name}: its command line is not slot {slot.name}'s for root hash "
                         f"{manifest.roothash[:12]}…; not staged")  # fmt: skip
    if not secure_boot_enabled(efivars):
        return "Secure Boot off: signature not checked"
    db, dbx = enrolled(efivars)
    try:
        who = verify_image(data, db, dbx, name=name)
    except ImageSignatureError as e:
        raise BadRelease(f"{e}; this host enforces Secure Boot, so it is not staged") from None
    return f"passes Secure Boot under the enrolled db ({who})"


def stale_boot_count(count_path: str, selected: str) -> str | None:
    """Why the boot must not be blessed: the loader counted a try of another entry than the
    one that booted (pure); None when blessing is right (or there is nothing to bless).

    ``count_path`` is ``LoaderBootCountPath`` (``\\EFI\\Linux\\tidehost-b+0-3.efi``),
    ``selected`` is ``LoaderEntrySelected`` (``tidehost-a.efi``).
    """
    if not count_path:
        return None
    name = count_path.replace("\\", "/").rsplit("/", 1)[-1]
    if _COUNTER.sub("", name) == selected:
        return None
    return (f"LoaderBootCountPath names {name} but {selected or 'another entry'} booted: "
            "not blessing it")


def bless_guard(efivars: Path = EFIVARS) -> str | None:
    """``stale_boot_count`` for this boot, read from efivarfs."""
    return stale_boot_count(loader_string(efivars, "LoaderBootCountPath"),
                            loader_string(efivars, "LoaderEntrySelected"))  # fmt: skip
