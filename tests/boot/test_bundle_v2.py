"""Bundle format 3 (one UKI for both slots) beside formats 2 (one UKI per slot) and 1,
which the agent still takes."""

from __future__ import annotations

import json

import pytest

from channels.bundle import (
    FILES,
    FILES_V2,
    FILES_V3,
    FileInfo,
    Manifest,
    Slot,
    files_for,
    uki_file,
    usr_partuuids,
)
from channels.entries import slot_cmdline, uki_entry_name
from channels.errors import BundleError

HASH = "ab" * 32


def manifest(fmt: int = 2, **kw) -> Manifest:
    fields = dict(name="tidehost", version="1.2.0", channel="alpha", build_id="b1",
                  arch="x86-64", suite="trixie", usr_filesystem="squashfs", roothash=HASH,
                  kernel_cmdline="console=ttyS0", boot_tries=3,
                  files={f: FileInfo(1, "00" * 32) for f in files_for(fmt)}, format=fmt)
    fields.update(kw)
    return Manifest(**fields)


def test_format_2_carries_a_uki_per_slot_and_who_signed_them() -> None:
    m = manifest(db_sha256="cd" * 32, pcr_public_key_sha256="ef" * 32)
    d = json.loads(m.to_json())
    assert d["format"] == 2 and sorted(d["files"]) == sorted(FILES_V2)
    assert (d["db_sha256"], d["pcr_public_key_sha256"]) == ("cd" * 32, "ef" * 32)
    assert Manifest.from_json(m.to_json()) == m and m.uki
    assert [uki_file(s, 2) for s in Slot] == ["uki-a.efi", "uki-b.efi"] == list(m.uki_files)
    assert "tidehost.slot=b" in slot_cmdline(m, Slot.B) and not m.shared_uki
    unsigned = manifest()
    assert Manifest.from_json(unsigned.to_json()).db_sha256 == ""


def test_format_3_carries_one_uki_that_finds_usr_by_its_root_hash() -> None:
    m = manifest(fmt=3, db_sha256="cd" * 32)
    d = json.loads(m.to_json())
    assert d["format"] == 3 and sorted(d["files"]) == sorted(FILES_V3)
    assert Manifest.from_json(m.to_json()) == m and m.uki and m.shared_uki
    assert [m.uki_file(s) for s in Slot] == ["uki.efi", "uki.efi"] and m.uki_files == ("uki.efi",)
    line = slot_cmdline(m, Slot.A)
    assert line == slot_cmdline(m, Slot.B) and f"usrhash={HASH}" in line.split()
    assert "tidehost.slot" not in line and "PARTLABEL=USR" not in line


def test_the_usr_partitions_uuids_are_the_root_hashs_first_and_last_128_bits() -> None:
    h = bytes(range(32)).hex()  # 000102...1f
    assert usr_partuuids(h) == ("00010203-0405-0607-0809-0a0b0c0d0e0f",
                                "10111213-1415-1617-1819-1a1b1c1d1e1f")
    with pytest.raises(BundleError, match=r"is not 64 lowercase hex digits"):
        usr_partuuids("AB" * 32)


def test_format_1_is_still_read_and_written_as_it_was() -> None:
    old = manifest(fmt=1)
    d = json.loads(old.to_json())
    assert d["format"] == 1 and sorted(d["files"]) == sorted(FILES)
    assert "db_sha256" not in d and not Manifest.from_json(old.to_json()).uki


@pytest.mark.parametrize(("change", "error"), [
    ({"format": 4}, r"field 'format': 4 is not one of 1, 2, 3"),
    ({"format": True}, r"field 'format': True is not one of 1, 2, 3"),
    ({"files": {f: {"size": 1, "sha256": "00" * 32} for f in FILES}},
     r"field 'files': must list exactly usr.img, usr.verity, uki-a.efi, uki-b.efi"),
    ({"db_sha256": "xyz"}, r"field 'db_sha256': not empty or 64 lowercase hex digits"),
])  # fmt: skip
def test_a_malformed_format_2_manifest_is_refused(change, error) -> None:
    d = json.loads(manifest().to_json())
    d.update(change)
    with pytest.raises(BundleError, match=error):
        Manifest.from_json(json.dumps(d))


def test_a_format_1_manifest_names_no_signing_keys() -> None:
    with pytest.raises(BundleError, match=r"field 'db_sha256': a format-1 manifest names no signing keys"):
        manifest(fmt=1, db_sha256="cd" * 32)


def test_type_2_entries_count_tries_like_type_1() -> None:
    assert uki_entry_name(Slot.A, None) == "tidehost-a.efi"
    assert uki_entry_name(Slot.B, 3) == "tidehost-b+3.efi"
    assert uki_entry_name(Slot.A, 0) == "tidehost-a+0.efi"
    for bad in (-1, 100, True, "3"):
        with pytest.raises(BundleError, match=r"is not a whole number from 0 to 99"):
            uki_entry_name(Slot.B, bad)


def test_the_image_file_chooses_the_bundle_format(fleet_keys) -> None:
    from pathlib import Path

    from imagebuild.core.errors import ConfigError
    from imagebuild.image.config import parse_image_text

    assert parse_image_text("", "x.yaml", Path(".")).bundle_format == 3
    assert parse_image_text("bundle_format: 2", "x.yaml", Path(".")).bundle_format == 2
    assert parse_image_text("bundle_format: 1", "x.yaml", Path(".")).bundle_format == 1
    with pytest.raises(ConfigError, match=r"^x.yaml: secure_boot: needs bundle_format 2"):
        parse_image_text(f"bundle_format: 1\nsecure_boot: {{keys: {fleet_keys}}}", "x.yaml",
                         Path("."))
    with pytest.raises(ConfigError, match=r"^x.yaml: secure_boot.keys: .* is not a directory"):
        parse_image_text("secure_boot: {keys: nowhere}", "x.yaml", Path("/tmp"))
