"""channels.authenticode against sbsign's real signatures, efitools' real signature lists,
and sbverify's verdicts: what the agent relies on to never stage a UKI the firmware refuses."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from channels.authenticode import (
    EFI_CERT_X509,
    authenticode_digest,
    db_certificates,
    efivar_data,
    pe_sections,
    signature_lists,
    verify_image,
)
from channels.errors import ImageSignatureError


def db(keys: Path) -> bytes:
    return (keys / "db.esl").read_bytes()


def sbverify(data: bytes, cert: Path, tmp_path: Path) -> bool:
    f = tmp_path / "check.efi"
    f.write_bytes(data)
    return subprocess.run(["sbverify", "--cert", str(cert), str(f)],
                          capture_output=True).returncode == 0


def test_a_signed_image_passes_under_the_db_that_signed_it(fleet_keys, tiny_pe, sbsign, tmp_path) -> None:
    signed = sbsign(tiny_pe(), fleet_keys)
    assert verify_image(signed, db(fleet_keys), name="uki-b.efi") == "CN=Test fleet db"
    assert sbverify(signed, fleet_keys / "db.crt", tmp_path)
    # an efivarfs db file is 4 attribute bytes, then the very same signature lists
    efivar = struct.pack("<I", 0x27) + db(fleet_keys)
    assert verify_image(signed, efivar_data(efivar)) == "CN=Test fleet db"


@pytest.mark.parametrize("where", ["section", "header"])
def test_one_changed_byte_is_refused(fleet_keys, tiny_pe, sbsign, tmp_path, where: str) -> None:
    signed = bytearray(sbsign(tiny_pe({".cmdline": b"usrhash=ab tidehost.slot=b"}), fleet_keys))
    at = 0x200 + 5 if where == "section" else 0x40 + 4 + 20 + 2  # .cmdline, or the linker version
    signed[at] ^= 1
    with pytest.raises(ImageSignatureError, match=r"^uki-b.efi: Secure Boot would refuse it: "
                       r"the image's sha256 digest does not match its signature"):
        verify_image(bytes(signed), db(fleet_keys), name="uki-b.efi")
    assert not sbverify(bytes(signed), fleet_keys / "db.crt", tmp_path)


def test_an_unsigned_image_is_refused(fleet_keys, tiny_pe) -> None:
    with pytest.raises(ImageSignatureError, match=r"^uki-a.efi: Secure Boot would refuse it: not signed$"):
        verify_image(tiny_pe(), db(fleet_keys), name="uki-a.efi")


def test_an_image_signed_by_a_stranger_is_refused(fleet_keys, tiny_pe, stranger_keys, sbsign, tmp_path) -> None:
    signed = sbsign(tiny_pe(), stranger_keys)
    with pytest.raises(ImageSignatureError, match=r"signed by CN=Stranger db, which is not "
                       r"\(issued by\) a certificate in db"):
        verify_image(signed, db(fleet_keys))
    assert not sbverify(signed, fleet_keys / "db.crt", tmp_path)


def test_a_broken_signature_is_refused(fleet_keys, tiny_pe, sbsign) -> None:
    signed = bytearray(sbsign(tiny_pe(), fleet_keys))
    pe = struct.unpack_from("<I", signed, 0x3C)[0]
    cert_off, cert_size = struct.unpack_from("<II", signed, pe + 24 + 112 + 4 * 8)
    length = struct.unpack_from("<I", signed, cert_off)[0]
    signed[cert_off + length - 20] ^= 1  # inside the RSA signature, the SignerInfo's last field
    with pytest.raises(ImageSignatureError, match=r"the signer's signature does not verify"):
        verify_image(bytes(signed), db(fleet_keys))


def test_dbx_revokes_and_db_admits_by_hash(fleet_keys, tiny_pe, sbsign, tmp_path) -> None:
    signed = sbsign(tiny_pe(), fleet_keys)
    f = tmp_path / "revoked.efi"
    f.write_bytes(signed)
    subprocess.run(["hash-to-efi-sig-list", str(f), str(tmp_path / "dbx.esl")], check=True,
                   capture_output=True)
    dbx = (tmp_path / "dbx.esl").read_bytes()
    assert dbx.endswith(authenticode_digest(signed))  # efitools hashes the PE as we do
    with pytest.raises(ImageSignatureError, match=r"its digest is revoked in dbx"):
        verify_image(signed, db(fleet_keys), dbx)
    unsigned = tiny_pe({".text": b"\x90" * 32})
    f.write_bytes(unsigned)
    subprocess.run(["hash-to-efi-sig-list", str(f), str(tmp_path / "db-hash.esl")], check=True,
                   capture_output=True)
    assert verify_image(unsigned, (tmp_path / "db-hash.esl").read_bytes()) == "listed in db"


def test_what_is_not_a_pe_file_is_refused_in_one_line(fleet_keys, tiny_pe) -> None:
    for junk in (b"", b"MZ" + b"\0" * 10, b"hello world" * 100, tiny_pe()[:0x90]):
        with pytest.raises(ImageSignatureError, match=r"^x.efi: Secure Boot would refuse it: ") as e:
            verify_image(junk, db(fleet_keys), name="x.efi")
        assert "\n" not in str(e.value)
    with pytest.raises(ImageSignatureError, match=r"db: .*EFI_SIGNATURE_LIST"):
        verify_image(tiny_pe(), b"\x01" * 40)


def test_the_db_list_of_keys_init_holds_its_certificate(fleet_keys) -> None:
    entries = signature_lists(db(fleet_keys))
    assert [t for t, _ in entries] == [EFI_CERT_X509]
    assert entries[0][1] == (fleet_keys / "db.cer").read_bytes()
    assert db_certificates(db(fleet_keys))[0].subject.rfc4514_string() == "CN=Test fleet db"


def test_sections_of_a_pe_are_read_by_name(tiny_pe) -> None:
    sections = pe_sections(tiny_pe({".osrel": b"ID=tidehost\n", ".cmdline": b"x tidehost.slot=a"}))
    assert sections == {".osrel": b"ID=tidehost\n", ".cmdline": b"x tidehost.slot=a"}


def test_a_release_names_the_db_certificate_that_signed_it(fleet_keys, stranger_keys, tiny_pe,
                                                           sbsign) -> None:  # fmt: skip
    from channels.authenticode import cert_sha256, verify_signed_by

    fingerprint = cert_sha256(db_certificates(db(fleet_keys))[0])
    signed = sbsign(tiny_pe(), fleet_keys)
    assert verify_signed_by(signed, fingerprint, name="uki-a.efi") == "CN=Test fleet db"
    with pytest.raises(ImageSignatureError, match=r"^uki-a.efi: not signed by the db "
                       rf"certificate {fingerprint[:12]}…$"):
        verify_signed_by(sbsign(tiny_pe(), stranger_keys), fingerprint, name="uki-a.efi")
    with pytest.raises(ImageSignatureError, match=r"not signed by the db certificate"):
        verify_signed_by(tiny_pe(), fingerprint, name="uki-a.efi")
    tampered = bytearray(signed)
    tampered[0x205] ^= 1
    with pytest.raises(ImageSignatureError, match=r"does not match its signature"):
        verify_signed_by(bytes(tampered), fingerprint, name="uki-a.efi")
