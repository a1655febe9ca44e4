"""The agent's checks before it stages a UKI and before a boot is blessed (updater.secureboot),
on an efivarfs laid out in a folder exactly as the kernel shows it."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from channels.authenticode import EFI_GLOBAL_GUID, EFI_IMAGE_SECURITY_GUID
from channels.bundle import FILES, FILES_V3, FileInfo, Manifest, Slot
from updater.errors import BadRelease, SlotError
from updater.secureboot import LOADER_GUID, bless_guard, check_uki, stale_boot_count

HASH = "cd" * 32
MANIFEST = Manifest(name="tidehost", version="1.1.0", channel="alpha", build_id="b",
                    arch="x86-64", suite="trixie", usr_filesystem="squashfs", roothash=HASH,
                    kernel_cmdline="", boot_tries=3,
                    files={f: FileInfo(1, "00" * 32) for f in FILES})  # fmt: skip


def efivars(tmp_path: Path, secure_boot: bool, db: bytes | None = None) -> Path:
    d = tmp_path / "efivars"
    d.mkdir(exist_ok=True)
    attrs = struct.pack("<I", 0x06)
    (d / f"SecureBoot-{EFI_GLOBAL_GUID}").write_bytes(attrs + (b"\x01" if secure_boot else b"\x00"))
    if db is not None:
        (d / f"db-{EFI_IMAGE_SECURITY_GUID}").write_bytes(struct.pack("<I", 0x27) + db)
    return d


def uki(tiny_pe, slot: str = "b", roothash: str = HASH) -> bytes:
    named = f" tidehost.slot={slot}" if slot else ""  # "": format 3's, which names no slot
    cmdline = f"root=PARTLABEL=ROOT usrhash={roothash}{named} console=ttyS0"
    return tiny_pe({".osrel": b"ID=tidehost\n", ".cmdline": cmdline.encode(), ".linux": b"k"})


def test_secure_boot_off_stages_an_unsigned_uki_of_the_slot(tmp_path, tiny_pe) -> None:
    vars_ = efivars(tmp_path, secure_boot=False)
    assert check_uki(uki(tiny_pe), "uki-b.efi", MANIFEST, Slot.B, vars_) == \
        "Secure Boot off: signature not checked"
    assert check_uki(uki(tiny_pe), "uki-b.efi", MANIFEST, Slot.B, tmp_path / "no-efi") == \
        "Secure Boot off: signature not checked"  # a BIOS host has no efivars at all


def test_a_uki_for_another_slot_or_usr_is_never_staged(tmp_path, tiny_pe) -> None:
    vars_ = efivars(tmp_path, secure_boot=False)
    with pytest.raises(BadRelease, match=r"^uki-b.efi: its command line is not slot B's for "
                       r"root hash cdcdcdcdcdcd…; not staged$"):
        check_uki(uki(tiny_pe, slot="a"), "uki-b.efi", MANIFEST, Slot.B, vars_)
    with pytest.raises(BadRelease, match=r"not slot B's"):
        check_uki(uki(tiny_pe, roothash="ef" * 32), "uki-b.efi", MANIFEST, Slot.B, vars_)
    with pytest.raises(BadRelease, match=r"^uki-b.efi: not a unified kernel image"):
        check_uki(tiny_pe(), "uki-b.efi", MANIFEST, Slot.B, vars_)
    with pytest.raises(BadRelease, match=r"^uki-b.efi: not a well-formed PE file"):
        check_uki(b"\x7fELF", "uki-b.efi", MANIFEST, Slot.B, vars_)


def test_a_format_3_uki_finds_usr_by_the_root_hash_alone(tmp_path, tiny_pe) -> None:
    vars_ = efivars(tmp_path, secure_boot=False)
    m3 = replace(MANIFEST, format=3, files={f: FileInfo(1, "00" * 32) for f in FILES_V3})
    for slot in Slot:  # one UKI for either slot
        assert check_uki(uki(tiny_pe, slot=""), "uki.efi", m3, slot, vars_) == \
            "Secure Boot off: signature not checked"
    for bad in (uki(tiny_pe, slot="b"), uki(tiny_pe, slot="", roothash="ef" * 32)):
        with pytest.raises(BadRelease, match=r"^uki.efi: its command line does not find /usr "
                           r"by root hash cdcdcdcdcdcd… alone; not staged$"):
            check_uki(bad, "uki.efi", m3, Slot.B, vars_)


def test_under_secure_boot_only_what_the_enrolled_db_admits_is_staged(
        tmp_path, tiny_pe, sbsign, fleet_keys, stranger_keys) -> None:  # fmt: skip
    vars_ = efivars(tmp_path, secure_boot=True, db=(fleet_keys / "db.esl").read_bytes())
    signed = sbsign(uki(tiny_pe), fleet_keys)
    assert check_uki(signed, "uki-b.efi", MANIFEST, Slot.B, vars_) == \
        "passes Secure Boot under the enrolled db (CN=Test fleet db)"
    with pytest.raises(BadRelease, match=r"^uki-b.efi: Secure Boot would refuse it: not signed; "
                       r"this host enforces Secure Boot, so it is not staged$"):
        check_uki(uki(tiny_pe), "uki-b.efi", MANIFEST, Slot.B, vars_)
    with pytest.raises(BadRelease, match=r"signed by CN=Stranger db"):
        check_uki(sbsign(uki(tiny_pe), stranger_keys), "uki-b.efi", MANIFEST, Slot.B, vars_)
    tampered = bytearray(signed)
    tampered[tampered.index(b"console=ttyS0")] ^= 1
    with pytest.raises(BadRelease, match=r"does not match its signature"):
        check_uki(bytes(tampered), "uki-b.efi", MANIFEST, Slot.B, vars_)
    (vars_ / f"db-{EFI_IMAGE_SECURITY_GUID}").unlink()
    with pytest.raises(SlotError, match=r"Secure Boot is on but no db is enrolled"):
        check_uki(signed, "uki-b.efi", MANIFEST, Slot.B, vars_)


@pytest.mark.parametrize(("count_path", "selected", "stale"), [
    ("", "tidehost-a.efi", False),  # no counting this boot (a blessed entry)
    ("\\EFI\\Linux\\tidehost-b+2-1.efi", "tidehost-b.efi", False),  # the counted entry booted
    ("\\loader\\entries\\tidehost-b+2.conf", "tidehost-b.conf", False),
    ("\\EFI\\Linux\\tidehost-b+0-3.efi", "tidehost-a.efi", True),  # refused B, A booted
    ("\\EFI\\Linux\\tidehost-b+1-2.efi", "", True),
])  # fmt: skip
def test_a_stale_boot_count_is_never_blessed(count_path, selected, stale) -> None:
    why = stale_boot_count(count_path, selected)
    assert (why is not None) == stale
    if stale:
        assert why.startswith(f"LoaderBootCountPath names {count_path.rsplit(chr(92), 1)[-1]} but ")


def test_the_guard_reads_the_loaders_variables(tmp_path) -> None:
    d = tmp_path / "efivars"
    d.mkdir()
    assert bless_guard(d) is None
    for name, value in (("LoaderBootCountPath", "\\EFI\\Linux\\tidehost-b+0-3.efi"),
                        ("LoaderEntrySelected", "tidehost-a.efi")):
        (d / f"{name}-{LOADER_GUID}").write_bytes(b"\x06\0\0\0" + (value + "\0").encode("utf-16-le"))
    assert bless_guard(d) == ("LoaderBootCountPath names tidehost-b+0-3.efi but tidehost-a.efi "
                              "booted: not blessing it")


def test_the_image_gets_the_guard_as_bless_boots_exec_condition(tmp_path) -> None:
    from imagebuild.image.stages.configure import install_agent_files

    install_agent_files(tmp_path)
    dropin = tmp_path / "usr/lib/systemd/system/systemd-bless-boot.service.d/tidehost-bless-guard.conf"
    assert "\nExecCondition=/usr/bin/tidehost-update bless-guard\n" in dropin.read_text()
