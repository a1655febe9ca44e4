"""Writing the inactive slot on a disk image with a real GPT, through loop devices."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from channels.bundle import Slot, load_bundle
from channels.entries import boot_entry
from updater import slots, verity
from updater.errors import BadRelease, SlotError, VerificationError
from updater.slots import SlotDevices, active_slot, parse_entry, write_slot

pytestmark = pytest.mark.slow


def esp_with_factory_entry(tmp_path: Path, bundle: Path) -> Path:
    esp = tmp_path / "efi"
    (esp / "loader/entries").mkdir(parents=True)
    e = boot_entry(load_bundle(bundle), Slot.A, None)
    (esp / "loader/entries" / e.filename).write_text(e.text)
    return esp


def devs(disk, slot: Slot) -> SlotDevices:  # noqa: ANN001
    return SlotDevices(disk.parts[slot.usr_label], disk.parts[slot.verity_label])


def read_part(disk, label: str, n: int) -> bytes:  # noqa: ANN001
    off, _ = disk.offsets[label]
    with open(disk.image, "rb") as f:
        f.seek(off)
        return f.read(n)


def entries(esp: Path) -> list[str]:
    return sorted(p.name for p in (esp / "loader/entries").iterdir())


def test_active_slot_from_cmdline() -> None:
    assert active_slot("root=PARTLABEL=ROOT tidehost.slot=b usrhash=ab") is Slot.B
    with pytest.raises(SlotError, match="no tidehost.slot"):
        active_slot("root=/dev/sda2 quiet")
    with pytest.raises(SlotError, match="is not a or b"):
        active_slot("tidehost.slot=c")
    assert slots.cmdline_usrhash("x usrhash=abc y") == "abc"
    assert parse_entry("tidehost-b+2-1.conf") == slots.EntryName(Slot.B, 2, 1)
    assert parse_entry("tidehost-a.conf") == slots.EntryName(Slot.A, None, 0)
    assert parse_entry("tidehost-b+0-3.conf").bad and parse_entry("other.conf") is None


def test_write_inactive_slot(disk, bundles, tmp_path: Path) -> None:  # noqa: ANN001
    esp = esp_with_factory_entry(tmp_path, bundles["1.0.0"])
    b2 = bundles["2.0.0"]
    m = load_bundle(b2)
    (esp / "loader/entries/tidehost-b+0-3.conf").write_text("stale bad entry of slot B\n")
    for d in ("a", "b"):
        (esp / "tidehost" / d).mkdir(parents=True)
        (esp / "tidehost" / d / "vmlinuz").write_bytes(b"old kernel " + d.encode())
    entry = write_slot(b2, m, Slot.B, active=Slot.A, devices=devs(disk, Slot.B),
                       active_devices=devs(disk, Slot.A), esp=esp, tries=3)
    assert entry == "tidehost-b+3.conf"
    assert entries(esp) == ["tidehost-a.conf", "tidehost-b+3.conf"]
    text = (esp / "loader/entries/tidehost-b+3.conf").read_text()
    assert f"usrhash={m.roothash}" in text and "tidehost.slot=b" in text
    assert "version 2.0.0" in text and "linux /tidehost/b/vmlinuz" in text
    assert (esp / "tidehost/b/vmlinuz").read_bytes() == (b2 / "vmlinuz").read_bytes()
    assert (esp / "tidehost/b/initrd").read_bytes() == (b2 / "initrd").read_bytes()
    assert (esp / "tidehost/a/vmlinuz").read_bytes() == b"old kernel a"  # the running slot's
    img, ver = (b2 / "usr.img").read_bytes(), (b2 / "usr.verity").read_bytes()
    # the bytes landed in the USR-B and USR-B-VERITY partitions of the image file
    assert read_part(disk, "USR-B", len(img)) == img
    assert read_part(disk, "USR-B-VERITY", len(ver)) == ver
    assert read_part(disk, "USR-A", 1 << 20) == bytes(1 << 20)  # the active slot: untouched
    subprocess.run(["veritysetup", "verify", str(disk.parts["USR-B"]),
                    str(disk.parts["USR-B-VERITY"]), m.roothash], check=True)


def test_active_slot_is_never_written(disk, bundles, tmp_path: Path) -> None:  # noqa: ANN001
    esp = esp_with_factory_entry(tmp_path, bundles["1.0.0"])
    m = load_bundle(bundles["2.0.0"])
    with pytest.raises(SlotError, match="it is the running slot"):
        write_slot(bundles["2.0.0"], m, Slot.A, active=Slot.A, devices=devs(disk, Slot.A),
                   active_devices=None, esp=esp, tries=3)
    # the "other" slot's devices resolve to the running slot's: refused as well
    with pytest.raises(SlotError, match="device of the running slot"):
        write_slot(bundles["2.0.0"], m, Slot.B, active=Slot.A, devices=devs(disk, Slot.A),
                   active_devices=devs(disk, Slot.A), esp=esp, tries=3)
    assert read_part(disk, "USR-A", 1 << 20) == bytes(1 << 20)
    assert entries(esp) == ["tidehost-a.conf"]


def test_bad_root_hash_leaves_no_entry(disk, bundles, tmp_path: Path) -> None:  # noqa: ANN001
    esp = esp_with_factory_entry(tmp_path, bundles["1.0.0"])
    m = replace(load_bundle(bundles["2.0.0"]), roothash="0" * 64)
    with pytest.raises(VerificationError, match="hash tree gives root hash"):
        write_slot(bundles["2.0.0"], m, Slot.B, active=Slot.A, devices=devs(disk, Slot.B),
                   active_devices=devs(disk, Slot.A), esp=esp, tries=3)
    assert entries(esp) == ["tidehost-a.conf"]


@pytest.mark.parametrize("where", ["_stream", "verity.source_tree", "verity.check_data",
                                   "_copy_atomic", "atomic_write", "verity.read_back"])
def test_interruption_anywhere_keeps_current_slot_booting(
        disk, bundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:  # noqa: ANN001
    esp = esp_with_factory_entry(tmp_path, bundles["1.0.0"])
    b = load_bundle(bundles["2.0.0"])
    old = boot_entry(replace(b, version="1.5.0"), Slot.B, None)  # a previous, blessed B
    (esp / "loader/entries" / old.filename).write_text(old.text)

    def crash(*a: object, **k: object) -> None:
        raise KeyboardInterrupt("power cut")

    owner, _, name = where.rpartition(".")
    monkeypatch.setattr(slots.verity if owner else slots, name, crash)
    with pytest.raises(KeyboardInterrupt):
        write_slot(bundles["2.0.0"], b, Slot.B, active=Slot.A, devices=devs(disk, Slot.B),
                   active_devices=devs(disk, Slot.A), esp=esp, tries=3)
    if where == "verity.source_tree":  # before anything was touched: all as it was
        assert entries(esp) == ["tidehost-a.conf", old.filename]
        return
    # slot B may be half written, but no entry points at it: slot A boots
    assert entries(esp) == ["tidehost-a.conf"]


def test_device_too_small(disk_factory, bundle_factory, tmp_path: Path) -> None:  # noqa: ANN001
    big = bundle_factory("4.0.0", payload=6 << 20)
    gen = disk_factory(tmp_path / "small.img", (("USR-A", 2), ("USR-A-VERITY", 1),
                                                ("USR-B", 2), ("USR-B-VERITY", 1)))
    d = next(gen)
    try:
        esp = tmp_path / "efi"
        (esp / "loader/entries").mkdir(parents=True)
        with pytest.raises(SlotError, match="too small for usr.img"):
            write_slot(big, load_bundle(big), Slot.B, active=Slot.A, devices=devs(d, Slot.B),
                       active_devices=devs(d, Slot.A), esp=esp, tries=3)
    finally:
        gen.close()


def test_rollback_prefers_the_other_slot(tmp_path: Path, bundles) -> None:  # noqa: ANN001
    esp = esp_with_factory_entry(tmp_path, bundles["1.0.0"])
    with pytest.raises(SlotError, match="slot B has no usable boot entry"):
        slots.rollback(esp, Slot.A)
    (esp / "loader/entries/tidehost-b+0-3.conf").write_text("bad\n")
    with pytest.raises(SlotError, match="slot B has no usable"):
        slots.rollback(esp, Slot.A)
    (esp / "loader/entries/tidehost-b+0-3.conf").unlink()
    (esp / "loader/entries/tidehost-b.conf").write_text("good\n")
    other = slots.rollback(esp, Slot.A)
    assert other.name == "tidehost-b.conf"
    assert entries(esp) == ["tidehost-a+0.conf", "tidehost-b.conf"]


def test_full_verify(disk, bundles, tmp_path: Path) -> None:  # noqa: ANN001
    esp = esp_with_factory_entry(tmp_path, bundles["1.0.0"])
    b2 = bundles["2.0.0"]
    m = load_bundle(b2)
    write_slot(b2, m, Slot.B, active=Slot.A, devices=devs(disk, Slot.B),
               active_devices=devs(disk, Slot.A), esp=esp, tries=2, full_verify=True)
    assert entries(esp) == ["tidehost-a.conf", "tidehost-b+2.conf"]


def resigned_copy(src: Path, dest: Path, flip_at: int) -> Path:
    """A careless publisher's bundle: one byte of usr.img flipped, its sha256 re-signed."""
    shutil.copytree(src, dest)
    with open(dest / "usr.img", "r+b") as f:
        f.seek(flip_at)
        b = f.read(1)
        f.seek(flip_at)
        f.write(bytes([b[0] ^ 1]))
    m = json.loads((dest / "manifest.json").read_text())
    m["files"]["usr.img"]["sha256"] = hashlib.sha256((dest / "usr.img").read_bytes()).hexdigest()
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def test_usr_img_that_does_not_match_its_tree_is_never_staged(disk, bundles,  # noqa: ANN001
                                                              tmp_path: Path) -> None:
    esp = esp_with_factory_entry(tmp_path, bundles["1.0.0"])
    bad = resigned_copy(bundles["2.0.0"], tmp_path / "bad.release", 4096 * 9 + 123)
    m = load_bundle(bad)  # every file matches its (re-signed) sha256
    with pytest.raises(BadRelease, match=r"usr.img: block 9 \(byte 36864\) does not match"):
        write_slot(bad, m, Slot.B, active=Slot.A, devices=devs(disk, Slot.B),
                   active_devices=devs(disk, Slot.A), esp=esp, tries=3)
    assert entries(esp) == ["tidehost-a.conf"]
    # veritysetup, the kernel's view, agrees that such a slot could not be used
    assert subprocess.run(["veritysetup", "verify", str(bad / "usr.img"), str(bad / "usr.verity"),
                           m.roothash], capture_output=True).returncode != 0


def test_tree_that_does_not_cover_usr_img_is_refused(disk, bundles, tmp_path: Path) -> None:  # noqa: ANN001
    esp = esp_with_factory_entry(tmp_path, bundles["1.0.0"])
    b2 = bundles["2.0.0"]
    m = load_bundle(b2)
    m = replace(m, files={**m.files, "usr.img": replace(m.files["usr.img"],
                                                        size=m.files["usr.img"].size + 4096)})
    with pytest.raises(BadRelease, match=r"hash tree of \d+ bytes of data, not \d+"):
        write_slot(b2, m, Slot.B, active=Slot.A, devices=devs(disk, Slot.B),
                   active_devices=devs(disk, Slot.A), esp=esp, tries=3)
    assert entries(esp) == ["tidehost-a.conf"]


def test_read_back_catches_a_bad_write(disk, bundles) -> None:  # noqa: ANN001
    src = bundles["2.0.0"] / "usr.img"
    dev = disk.parts["USR-B"]
    assert verity.write_through(src, dev) == src.stat().st_size
    verity.read_back(dev, src)
    with open(dev, "r+b") as f:  # a sector that did not make it to the disk
        f.seek(70000)
        f.write(b"\0" * 512 if src.read_bytes()[70000:70512] != b"\0" * 512 else b"x" * 512)
        f.flush()
        os.fsync(f.fileno())
    with pytest.raises(VerificationError, match=r"differs from the release at byte 700\d\d"):
        verity.read_back(dev, src)


@pytest.mark.parametrize("change, tries, message", [
    ({}, True, r"field 'boot_tries': True is not a whole number"),
    ({}, 0, r"field 'boot_tries': 0 is not"),
    ({"kernel_cmdline": "quiet\ninitrd /evil\noptions init=/bin/sh"}, 3,
     r"field 'kernel_cmdline': contains a control character"),
    ({"version": "2.0.0\nlinux /x"}, 3, r"field 'version': contains a control character"),
])
def test_nothing_unvalidated_reaches_a_boot_entry(disk, bundles, tmp_path: Path,  # noqa: ANN001
                                                  change: dict, tries: object,
                                                  message: str) -> None:
    esp = esp_with_factory_entry(tmp_path, bundles["1.0.0"])
    old = boot_entry(replace(load_bundle(bundles["1.0.0"]), version="1.5.0"), Slot.B, None)
    (esp / "loader/entries" / old.filename).write_text(old.text)  # a previous, blessed B
    m = load_bundle(bundles["2.0.0"])
    for k, v in change.items():  # fields a lax manifest parser would have let through
        object.__setattr__(m, k, v)
    with pytest.raises(BadRelease, match=message):
        write_slot(bundles["2.0.0"], m, Slot.B, active=Slot.A, devices=devs(disk, Slot.B),
                   active_devices=devs(disk, Slot.A), esp=esp, tries=tries)
    # refused before anything was written: the old B entry and the partitions are untouched
    assert entries(esp) == ["tidehost-a.conf", old.filename]
    assert read_part(disk, "USR-B", 1 << 16) == bytes(1 << 16)


@pytest.mark.parametrize("flip_block", [None, 5, 1500, 3071])
def test_usr_img_is_hashed_in_parts_against_its_tree(tmp_path: Path,
                                                     flip_block: int | None) -> None:
    from channels import verity as tree

    data = tmp_path / "usr.img"
    data.write_bytes(os.urandom(3072 * 4096))  # 12 MiB: three 4 MiB chunks, two parts
    root = tree.build(data, tmp_path / "usr.verity", os.urandom(32))
    t = verity.source_tree(tmp_path / "usr.verity", data.stat().st_size, root)
    if flip_block is None:
        verity.check_data(data, t, root, threads=2)
        verity.check_data(data, t, root, threads=5)
        return
    with open(data, "r+b") as f:
        f.seek(flip_block * 4096 + 11)
        f.write(b"\xff\x00")
    for threads in (1, 2, 3):
        with pytest.raises(BadRelease, match=rf"block {flip_block} \(byte {flip_block * 4096}\)"):
            verity.check_data(data, t, root, threads=threads)
