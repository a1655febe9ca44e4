"""The agent's slot writer with format-2 and format-3 releases: the UKI is checked before
anything is written and is the entry written last (EFI/Linux/tidehost-<slot>+<tries>.efi); a
format-3 slot gets the partition UUIDs its UKI finds /usr by, before that entry; rollback.

The slot's devices are plain files here (the writer takes any file it can write); the
real-partition writes of /usr are tests/updater/test_updater_slots.py's."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from channels.authenticode import EFI_GLOBAL_GUID, EFI_IMAGE_SECURITY_GUID
from channels.bundle import Slot, load_bundle
from updater.errors import BadRelease
from updater.slots import SlotDevices, rollback, slot_entries, write_slot


@pytest.fixture
def host(tmp_path: Path) -> dict:
    """An ESP with slot A's UKI and a stale bad B, slot devices as files, Secure Boot off."""
    esp = tmp_path / "efi"
    (esp / "EFI/Linux").mkdir(parents=True)
    (esp / "loader/entries").mkdir(parents=True)
    (esp / "EFI/Linux/tidehost-a.efi").write_bytes(b"slot A's UKI")
    (esp / "EFI/Linux/tidehost-b+0-3.efi").write_bytes(b"an old, refused B")
    (esp / "loader/entries/tidehost-b+1.conf").write_text("an older type #1 entry of B\n")
    (esp / "tidehost/b").mkdir(parents=True)
    (esp / "tidehost/b/vmlinuz").write_bytes(b"old kernel")
    devs = {}
    for s in Slot:
        devs[s] = SlotDevices(tmp_path / f"usr-{s.value}", tmp_path / f"verity-{s.value}")
        for p in (devs[s].usr, devs[s].verity):
            p.write_bytes(b"\0" * (1 << 20))
    efivars = tmp_path / "efivars"
    efivars.mkdir()
    (efivars / f"SecureBoot-{EFI_GLOBAL_GUID}").write_bytes(b"\x06\0\0\0\x00")
    return {"esp": esp, "devs": devs, "efivars": efivars, "tmp": tmp_path}


def write(h: dict, bundle: Path, target: Slot = Slot.B, uuids: list | None = None) -> str:
    """``write_slot``; the slot's UUID settings go to ``uuids`` (the devices are files)."""
    def set_partuuids(devices: SlotDevices, roothash: str) -> None:
        img = (bundle / "usr.img").read_bytes()  # after the slot's bytes, before its entry:
        assert devices.usr.read_bytes()[:len(img)] == img
        assert not [p for p in listing(h["esp"]) if p.startswith(f"EFI/Linux/tidehost-{target.value}")]
        (uuids if uuids is not None else []).append((devices, roothash))

    return write_slot(bundle, load_bundle(bundle), target, active=target.other,
                      devices=h["devs"][target], active_devices=h["devs"][target.other],
                      esp=h["esp"], tries=3, efivars=h["efivars"],
                      set_partuuids=set_partuuids)  # fmt: skip


def listing(esp: Path) -> list[str]:
    return sorted(str(p.relative_to(esp)) for p in esp.rglob("*") if p.is_file())


def enforce(h: dict, db: bytes) -> None:
    (h["efivars"] / f"SecureBoot-{EFI_GLOBAL_GUID}").write_bytes(b"\x06\0\0\0\x01")
    (h["efivars"] / f"db-{EFI_IMAGE_SECURITY_GUID}").write_bytes(struct.pack("<I", 0x27) + db)


def test_the_uki_is_the_entry_written_last(host, tiny_pe, uki_maker, make_bundle, tmp_path) -> None:
    bundle = make_bundle(tmp_path, "2.0.0", {s: uki_maker(tiny_pe) for s in Slot})
    assert write(host, bundle) == "tidehost-b+3.efi"
    assert listing(host["esp"]) == ["EFI/Linux/tidehost-a.efi", "EFI/Linux/tidehost-b+3.efi"]
    assert (host["esp"] / "EFI/Linux/tidehost-b+3.efi").read_bytes() == \
        (bundle / "uki-b.efi").read_bytes()
    img = (bundle / "usr.img").read_bytes()
    assert host["devs"][Slot.B].usr.read_bytes()[:len(img)] == img
    assert not [p for p in (host["esp"] / "EFI/Linux").iterdir() if p.name.startswith(".")]


def test_a_format_3_uki_boots_the_slot_it_is_written_to(host, tiny_pe, uki_maker, make_bundle,
                                                        tmp_path) -> None:  # fmt: skip
    bundle = make_bundle(tmp_path, "2.0.0", {None: uki_maker(tiny_pe)}, fmt=3)
    assert sorted(p.name for p in bundle.iterdir()) == \
        ["manifest.json", "uki.efi", "usr.img", "usr.verity"]
    uuids: list = []
    assert write(host, bundle, uuids=uuids) == "tidehost-b+3.efi"
    assert (host["esp"] / "EFI/Linux/tidehost-b+3.efi").read_bytes() == \
        (bundle / "uki.efi").read_bytes()
    assert uuids == [(host["devs"][Slot.B], load_bundle(bundle).roothash)]


def test_a_format_3_uki_that_names_a_slot_is_refused(host, tiny_pe, uki_maker, make_bundle,
                                                     tmp_path) -> None:  # fmt: skip
    bundle = make_bundle(tmp_path, "2.0.0", {None: uki_maker(tiny_pe, slot_of=Slot.B)}, fmt=3)
    before, usr_before = listing(host["esp"]), host["devs"][Slot.B].usr.read_bytes()
    uuids: list = []
    with pytest.raises(BadRelease, match=r"^uki.efi: its command line does not find /usr by "
                       r"root hash [0-9a-f]{12}… alone; not staged$"):
        write(host, bundle, uuids=uuids)
    assert listing(host["esp"]) == before and uuids == []
    assert host["devs"][Slot.B].usr.read_bytes() == usr_before


def test_under_secure_boot_an_unsigned_uki_is_never_written(host, tiny_pe, uki_maker, make_bundle, tmp_path,
                                                           fleet_keys) -> None:  # fmt: skip
    enforce(host, (fleet_keys / "db.esl").read_bytes())
    bundle = make_bundle(tmp_path, "2.0.0", {s: uki_maker(tiny_pe) for s in Slot})
    before = listing(host["esp"])
    usr_before = host["devs"][Slot.B].usr.read_bytes()
    with pytest.raises(BadRelease, match=r"^uki-b.efi: Secure Boot would refuse it: not signed; "
                       r"this host enforces Secure Boot, so it is not staged$"):
        write(host, bundle)
    assert listing(host["esp"]) == before  # not even the old entries of B were removed
    assert host["devs"][Slot.B].usr.read_bytes() == usr_before


def test_under_secure_boot_a_db_signed_uki_is_written(host, tiny_pe, uki_maker, make_bundle, tmp_path,
                                                     fleet_keys, sbsign) -> None:  # fmt: skip
    enforce(host, (fleet_keys / "db.esl").read_bytes())
    signed = uki_maker(tiny_pe, sign=lambda d: sbsign(d, fleet_keys))
    bundle = make_bundle(tmp_path, "2.0.0", {s: signed for s in Slot})
    assert write(host, bundle) == "tidehost-b+3.efi"


def test_another_slots_uki_is_refused(host, tiny_pe, uki_maker, make_bundle, tmp_path) -> None:
    bundle = make_bundle(tmp_path, "2.0.0", {s: uki_maker(tiny_pe, slot_of=Slot.A) for s in Slot})
    with pytest.raises(BadRelease, match=r"uki-b.efi: its command line is not slot B's"):
        write(host, bundle)
    assert "EFI/Linux/tidehost-b+0-3.efi" in listing(host["esp"])


def test_rollback_marks_the_running_uki_bad(host) -> None:
    esp = host["esp"]
    (esp / "EFI/Linux/tidehost-b+0-3.efi").rename(esp / "EFI/Linux/tidehost-b.efi")
    os.unlink(esp / "loader/entries/tidehost-b+1.conf")
    other = rollback(esp, Slot.B)
    assert other.name == "tidehost-a.efi"
    assert [p.name for p in slot_entries(esp, Slot.B)] == ["tidehost-b+0.efi"]
