"""``tidehost keys init|show`` and the build's use of a key directory (real openssl/efitools)."""

from __future__ import annotations

import hashlib
import shutil
import stat
import uuid
from pathlib import Path

import pytest

from channels.authenticode import signature_lists
from imagebuild.cli import main, tidehost
from imagebuild.core.errors import ConfigError, TidehostError
from imagebuild.image import keys


def test_keys_init_makes_a_private_complete_set(fleet_keys: Path) -> None:
    assert sorted(p.name for p in fleet_keys.iterdir()) == sorted(keys.FILES)
    assert stat.S_IMODE(fleet_keys.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in fleet_keys.iterdir()} == {0o600}
    guid = (fleet_keys / "owner-guid.txt").read_text().strip()
    for name in keys.SECURE_BOOT_KEYS:  # each .auth carries its own .esl after the signature
        auth = (fleet_keys / f"{name}.auth").read_bytes()
        esl = (fleet_keys / f"{name}.esl").read_bytes()
        assert auth.endswith(esl) and len(auth) > len(esl) + 1000
        assert uuid.UUID(bytes_le=esl[28:44]) == uuid.UUID(guid)  # the entry's owner
        assert signature_lists(esl)[0][1] == (fleet_keys / f"{name}.cer").read_bytes()


def test_show_prints_the_fingerprints_the_manifest_carries(fleet_keys: Path, tmp_path: Path) -> None:
    out = tidehost("keys", "show", fleet_keys, quiet=True)
    db_sha = hashlib.sha256((fleet_keys / "db.cer").read_bytes()).hexdigest()
    pcr_sha = hashlib.sha256((fleet_keys / "pcr.pub.pem").read_bytes()).hexdigest()
    assert f"db certificate sha256:  {db_sha}" in out and f"PCR public key sha256:  {pcr_sha}" in out
    k = keys.unlock(fleet_keys, tmp_path / "unlocked", "image.yaml: secure_boot.keys")
    assert (k.db_sha256, k.pcr_public_sha256) == (db_sha, pcr_sha)
    assert stat.S_IMODE((tmp_path / "unlocked").stat().st_mode) == 0o700


def test_init_refuses_a_directory_that_holds_files(fleet_keys: Path, capsys) -> None:
    before = {p.name: p.read_bytes() for p in fleet_keys.iterdir()}
    assert main(["keys", "init", str(fleet_keys)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tidehost: error: {fleet_keys}: already exists and is not an empty directory " \
                  "(refusing to overwrite keys)"
    assert {p.name: p.read_bytes() for p in fleet_keys.iterdir()} == before


def test_a_key_directory_without_db_is_named_in_one_line(fleet_keys: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(fleet_keys, partial)
    (partial / "db.key").unlink()
    (partial / "db.auth").unlink()
    with pytest.raises(ConfigError, match=rf"^img.yaml: secure_boot.keys: {partial} lacks db.key, "
                       r"db.auth \(make a key set with `tidehost keys init DIR`\)$"):
        keys.unlock(partial, tmp_path / "u", "img.yaml: secure_boot.keys")
    with pytest.raises(ConfigError, match=r"is not a directory"):
        keys.check_key_dir(tmp_path / "nowhere", "img.yaml: secure_boot.keys")


def test_a_db_key_that_is_not_its_certificates_key_is_refused(fleet_keys, stranger_keys, tmp_path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(fleet_keys, mixed)
    shutil.copy(stranger_keys / "db.key", mixed / "db.key")
    with pytest.raises(ConfigError, match=r"db.key is not the key of .*db.crt$"):
        keys.unlock(mixed, tmp_path / "u", "where")


def test_a_passphrase_protects_the_keys(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "correct horse")
    d = tmp_path / "locked"
    tidehost("keys", "init", d, quiet=True)
    for name in keys.PRIVATE_KEYS:
        assert (d / name).read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    k = keys.unlock(d, tmp_path / "u1", "where")
    assert k.db_key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "wrong horse")
    with pytest.raises(ConfigError, match=rf"^where: {d}/db.key: wrong passphrase \(from "
                       r"TIDEHOST_KEYS_PASSPHRASE\)$"):
        keys.unlock(d, tmp_path / "u2", "where")
    assert main(["keys", "show", str(d)]) == 2
    assert "wrong passphrase" in capsys.readouterr().err
    monkeypatch.delenv(keys.PASSPHRASE_ENV)
    with pytest.raises(ConfigError, match=r"db.key is encrypted: set TIDEHOST_KEYS_PASSPHRASE"):
        keys.unlock(d, tmp_path / "u3", "where")
    with pytest.raises(TidehostError):
        tidehost("keys", "show", d, quiet=True)


def test_ec2_uefi_data_holds_the_fleets_pk_kek_and_db(fleet_keys: Path, tmp_path: Path) -> None:
    from virt.firmware.varstore.aws import AwsVarStore

    from imagebuild.image.platforms.uefidata import aws_uefi_data

    blob = tmp_path / "uefi-data"
    blob.write_text(aws_uefi_data(fleet_keys, "img.yaml: secure_boot.keys"))
    back = AwsVarStore(str(blob)).get_varlist()  # AWS's format, read back by its own parser
    assert sorted(back) == ["KEK", "PK", "db"]
    for name in ("PK", "KEK", "db"):
        assert back[name].data == (fleet_keys / f"{name}.esl").read_bytes()
