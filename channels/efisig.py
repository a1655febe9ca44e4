"""EFI signature lists (pure): the contents of db and dbx (UEFI 2.10 §32.4.1), the
certificates in them, and efivarfs files."""

from __future__ import annotations

import struct
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from channels.errors import ImageSignatureError

EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_IMAGE_SECURITY_GUID = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"

def signature_lists(blob: bytes) -> list[tuple[uuid.UUID, bytes]]:
    """(signature type, data) of every entry of a run of EFI_SIGNATURE_LISTs (an ``.esl``
    file, or an efivarfs db/dbx file without its 4 attribute bytes); owner GUIDs dropped.

    Raises:
        ImageSignatureError: the lists are malformed.
    """
    out, pos = [], 0
    while pos < len(blob):
        if pos + 28 > len(blob):
            raise ImageSignatureError("db: truncated EFI_SIGNATURE_LIST")
        stype = uuid.UUID(bytes_le=blob[pos:pos + 16])
        lsize, hsize, ssize = struct.unpack_from("<III", blob, pos + 16)
        if lsize < 28 + hsize or ssize < 16 or pos + lsize > len(blob):
            raise ImageSignatureError("db: malformed EFI_SIGNATURE_LIST")
        for e in range(pos + 28 + hsize, pos + lsize - ssize + 1, ssize):
            out.append((stype, blob[e + 16:e + ssize]))
        pos += lsize
    return out


def efivar_data(raw: bytes) -> bytes:
    """An efivarfs file's data: its first 4 bytes are the variable's attributes."""
    return raw[4:]


def db_certificates(db: bytes) -> list[x509.Certificate]:
    """The X.509 certificates listed in ``db`` (signature lists)."""
    try:
        return [x509.load_der_x509_certificate(d) for t, d in signature_lists(db)
                if t == EFI_CERT_X509]  # fmt: skip
    except ValueError as e:
        raise ImageSignatureError(f"db: an X.509 entry does not parse ({e})") from None


def cert_sha256(cert: x509.Certificate) -> str:
    """The certificate's fingerprint as the manifest names it (sha256 of its DER, hex)."""
    return cert.fingerprint(hashes.SHA256()).hex()
