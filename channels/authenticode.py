"""Would UEFI Secure Boot run this PE file (a UKI, systemd-boot) under this ``db`` and ``dbx``?

Pure: bytes in, a verdict out; stdlib and ``cryptography`` only (they are all a host has: no
sbverify, pesign or osslsigncode on the image, and ``cryptography`` has no PKCS#7
verification). The build checks every UKI it signs with it, and the agent checks a release's
UKI against the host's enrolled db before it stages it. The checks follow the firmware's
order (edk2 ``DxeImageVerificationLib``):

1. the image's Authenticode digest (the PE/COFF file hashed without its checksum, its
   certificate-table directory entry and the certificate table) is not listed in dbx;
2. the digest is listed in db as an ``EFI_CERT_SHA256`` entry, or one of the PE's
   WIN_CERTIFICATE PKCS#7 SignedData blobs carries an SpcIndirectDataContent with that
   digest, a messageDigest signed attribute equal to the hash of that content, and a
   signature over the signed attributes that verifies with the signer's certificate;
3. that certificate is a db X.509 certificate or is directly issued by one (the fleet signs
   with its db key itself: one level is all this design uses).

Not covered: longer certificate chains and dbx certificate entries (only dbx hashes).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from channels.efisig import (  # noqa: F401 - re-exported: the names importers use
    EFI_CERT_SHA256,
    EFI_CERT_X509,
    EFI_GLOBAL_GUID,
    EFI_IMAGE_SECURITY_GUID,
    cert_sha256,
    db_certificates,
    efivar_data,
    signature_lists,
)
from channels.errors import ImageSignatureError

# efivarfs names: db and dbx live under the image-security GUID, SecureBoot under the global one

_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_SPC_INDIRECT = "1.3.6.1.4.1.311.2.1.4"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_DIGESTS = {"2.16.840.1.101.3.4.2.1": "sha256", "2.16.840.1.101.3.4.2.2": "sha384",
            "2.16.840.1.101.3.4.2.3": "sha512", "1.3.14.3.2.26": "sha1"}  # fmt: skip
_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512,
           "sha1": hashes.SHA1}  # fmt: skip


class _Malformed(ValueError):
    """A PE header, certificate table, DER element or signature list cannot be parsed."""


# ---- DER, just enough: (tag, whole element, content) ---------------------------------------


@dataclass(frozen=True)
class _TLV:
    tag: int
    raw: bytes  # the whole element, tag and length included
    content: bytes

    def children(self) -> list[_TLV]:
        out, pos = [], 0
        while pos < len(self.content):
            t = _read_tlv(self.content, pos)
            out.append(t)
            pos += len(t.raw)
        return out

    def child(self, i: int) -> _TLV:
        kids = self.children()
        if i >= len(kids):
            raise _Malformed("DER element has too few parts")
        return kids[i]


def _read_tlv(buf: bytes, pos: int = 0) -> _TLV:
    if pos + 2 > len(buf):
        raise _Malformed("DER element runs past its buffer")
    tag, n = buf[pos], buf[pos + 1]
    if tag & 0x1F == 0x1F:
        raise _Malformed("multi-byte DER tag")
    hdr = 2
    if n & 0x80:
        k = n & 0x7F
        if not 1 <= k <= 4:
            raise _Malformed("bad DER length")
        n = int.from_bytes(buf[pos + 2:pos + 2 + k], "big")
        hdr += k
    end = pos + hdr + n
    if end > len(buf):
        raise _Malformed("DER element runs past its buffer")
    return _TLV(tag, buf[pos:end], buf[pos + hdr:end])


def _oid(t: _TLV) -> str:
    if t.tag != 0x06 or not t.content:
        raise _Malformed("expected an OID")
    b = t.content
    parts, v = [b[0] // 40, b[0] % 40], 0
    for c in b[1:]:
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            parts.append(v)
            v = 0
    return ".".join(map(str, parts))


# ---- PE/COFF: the Authenticode digest and the certificate table ------------------------------


@dataclass(frozen=True)
class _PE:
    checksum_off: int
    certdir_off: int
    size_of_headers: int
    sections: tuple[tuple[int, int], ...]  # (PointerToRawData, SizeOfRawData), by file offset
    cert_off: int
    cert_size: int


def _pe(data: bytes) -> _PE:
    try:
        if data[:2] != b"MZ":
            raise _Malformed("not a PE file (no MZ header)")
        pe = struct.unpack_from("<I", data, 0x3C)[0]
        if data[pe:pe + 4] != b"PE\0\0":
            raise _Malformed("not a PE file (no PE signature)")
        nsect, = struct.unpack_from("<H", data, pe + 6)
        opt_size, = struct.unpack_from("<H", data, pe + 20)
        opt = pe + 24
        magic, = struct.unpack_from("<H", data, opt)
        if magic not in (0x10B, 0x20B):
            raise _Malformed(f"unknown optional-header magic {magic:#x}")
        dirs = opt + (96 if magic == 0x10B else 112)
        ndirs, = struct.unpack_from("<I", data, dirs - 4)
        if ndirs < 5:
            raise _Malformed("PE has no certificate-table directory")
        certdir = dirs + 4 * 8
        cert_off, cert_size = struct.unpack_from("<II", data, certdir)
        soh, = struct.unpack_from("<I", data, opt + 60)
        table = opt + opt_size
        secs = []
        for i in range(nsect):
            size, ptr = struct.unpack_from("<II", data, table + 40 * i + 16)
            if size:
                if ptr + size > len(data):
                    raise _Malformed("a section runs past the end of the file")
                secs.append((ptr, size))
    except struct.error:
        raise _Malformed("truncated PE header") from None
    if soh > len(data) or (cert_size and cert_off + cert_size > len(data)):
        raise _Malformed("PE header points past the end of the file")
    return _PE(opt + 64, certdir, soh, tuple(sorted(secs)), cert_off, cert_size)


def authenticode_digest(data: bytes, algo: str = "sha256") -> bytes:
    """The PE's Authenticode digest (what a signature over it signs, and what db/dbx list)."""
    pe = _pe(data)
    h = hashlib.new(algo)
    h.update(data[:pe.checksum_off])
    h.update(data[pe.checksum_off + 4:pe.certdir_off])
    h.update(data[pe.certdir_off + 8:pe.size_of_headers])
    end = pe.size_of_headers
    for ptr, size in pe.sections:
        h.update(data[ptr:ptr + size])
        end = max(end, ptr + size)
    tail_end = pe.cert_off if pe.cert_size else len(data)
    if tail_end > end:
        h.update(data[end:tail_end])
    return h.digest()


def pe_sections(data: bytes) -> dict[str, bytes]:
    """The PE's sections by name, each cut to its VirtualSize (a UKI's ``.cmdline``,
    ``.osrel``, ``.linux``, ``.pcrsig``, ...).

    Raises:
        ImageSignatureError: ``data`` is not a well-formed PE file.
    """
    try:
        pe = struct.unpack_from("<I", data, 0x3C)[0]
        if data[:2] != b"MZ" or data[pe:pe + 4] != b"PE\0\0":
            raise _Malformed("not a PE file")
        nsect, = struct.unpack_from("<H", data, pe + 6)
        opt_size, = struct.unpack_from("<H", data, pe + 20)
        table = pe + 24 + opt_size
        out = {}
        for i in range(nsect):
            raw_name, vsize, _, size, ptr = struct.unpack_from("<8sIIII", data, table + 40 * i)
            name = raw_name.rstrip(b"\0").decode("ascii", errors="replace")
            out[name] = data[ptr:ptr + min(vsize, size) if vsize else ptr + size]
        return out
    except (struct.error, _Malformed) as e:
        raise ImageSignatureError(f"not a well-formed PE file ({e})") from None


def _signed_data_blobs(data: bytes) -> list[bytes]:
    """The PKCS#7 SignedData blobs (WIN_CERT_TYPE_PKCS_SIGNED_DATA) of the certificate table."""
    pe = _pe(data)
    if not pe.cert_size:
        return []
    out, pos, end = [], pe.cert_off, pe.cert_off + pe.cert_size
    if end != len(data):
        raise _Malformed("the certificate table is not at the end of the file")
    while pos + 8 <= end:
        length, rev, ctype = struct.unpack_from("<IHH", data, pos)
        if length < 8 or pos + length > end:
            raise _Malformed("bad WIN_CERTIFICATE length")
        if rev == 0x0200 and ctype == 0x0002:
            out.append(data[pos + 8:pos + length])
        pos += (length + 7) & ~7
    return out


# ---- the check ----------------------------------------------------------------------------------


def _trusted(cert: x509.Certificate, trusted: list[x509.Certificate]) -> bool:
    for t in trusted:
        if cert == t:
            return True
        try:
            cert.verify_directly_issued_by(t)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def _verify(cert: x509.Certificate, sig: bytes, data: bytes, algo: str) -> None:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(sig, data, padding.PKCS1v15(), _HASHES[algo]())
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(sig, data, ec.ECDSA(_HASHES[algo]()))
    else:
        raise InvalidSignature("unsupported signer key type")


def _check_signed_data(blob: bytes, data: bytes, trusted: list[x509.Certificate]) -> str:
    """The signer's subject if this SignedData signs ``data`` with a trusted key.

    Raises:
        ImageSignatureError: why not (one phrase).
    """
    ci = _read_tlv(blob)
    if _oid(ci.child(0)) != _OID_SIGNED_DATA:
        raise ImageSignatureError("not PKCS#7 SignedData")
    sd = ci.child(1).child(0).children()  # [0] EXPLICIT SignedData
    if len(sd) < 4:
        raise _Malformed("SignedData has too few parts")
    encap = sd[2]
    if _oid(encap.child(0)) != _OID_SPC_INDIRECT:
        raise ImageSignatureError("not an Authenticode signature (no SpcIndirectDataContent)")
    spc = encap.child(1).child(0)  # [0] EXPLICIT SpcIndirectDataContent
    digest_info = spc.child(1)
    algo = _DIGESTS.get(_oid(digest_info.child(0).child(0)))
    if algo is None:
        raise ImageSignatureError("unknown Authenticode digest algorithm")
    if digest_info.child(1).content != authenticode_digest(data, algo):
        raise ImageSignatureError(f"the image's {algo} digest does not match its signature "
                                  "(modified after signing?)")  # fmt: skip
    rest = sd[3:]
    certs: list[x509.Certificate] = []
    if rest and rest[0].tag == 0xA0:
        certs = [x509.load_der_x509_certificate(c.raw) for c in rest[0].children()]
        rest = rest[1:]
    if rest and rest[0].tag == 0xA1:  # CRLs
        rest = rest[1:]
    if not rest or not rest[0].children():
        raise ImageSignatureError("the signature has no signer")
    si = rest[0].child(0).children()
    if len(si) < 6 or si[3].tag != 0xA0:
        raise ImageSignatureError("the signature has no signed attributes")
    issuer_serial = si[1].children()
    serial = int.from_bytes(issuer_serial[1].content, "big", signed=True)
    signer = next((c for c in certs if c.serial_number == serial
                   and c.issuer.public_bytes() == issuer_serial[0].raw), None)  # fmt: skip
    if signer is None:
        raise ImageSignatureError("the signer's certificate is not in the signature")
    si_algo = _DIGESTS.get(_oid(si[2].child(0)))
    if si_algo is None:
        raise ImageSignatureError("unknown signer digest algorithm")
    md = None
    for attr in si[3].children():
        if _oid(attr.child(0)) == _OID_MESSAGE_DIGEST:
            md = attr.child(1).child(0).content
    if md != hashlib.new(si_algo, spc.content).digest():
        raise ImageSignatureError("the signed attributes do not cover this image's digest")
    try:  # the signature covers the attributes DER-encoded as a SET, not as [0] IMPLICIT
        _verify(signer, si[5].content, b"\x31" + si[3].raw[1:], si_algo)
    except InvalidSignature:
        raise ImageSignatureError("the signer's signature does not verify") from None
    who = signer.subject.rfc4514_string()
    if not _trusted(signer, trusted):
        raise ImageSignatureError(f"signed by {who}, which is not (issued by) a certificate "
                                  "in db")  # fmt: skip
    return who


def _embedded_certificates(data: bytes) -> list[x509.Certificate]:
    """The certificates carried inside the PE's signatures (no trust decision)."""
    out = []
    for blob in _signed_data_blobs(data):
        sd = _read_tlv(blob).child(1).child(0).children()
        for part in sd[3:]:
            if part.tag == 0xA0:
                out += [x509.load_der_x509_certificate(c.raw) for c in part.children()]
    return out


def verify_signed_by(data: bytes, fingerprint: str, *, name: str = "image") -> str:
    """Check that ``data`` is signed, unmodified, by the certificate whose fingerprint is
    ``fingerprint`` (what a format-2 manifest names as ``db_sha256``), without the db itself:
    the certificate is taken from the signature and must have that fingerprint.

    Raises:
        ImageSignatureError: it is not; one line that starts with ``name``.
    """
    try:
        certs = [c for c in _embedded_certificates(data) if cert_sha256(c) == fingerprint]
    except (_Malformed, ValueError, IndexError, struct.error):
        certs = []
    if not certs:
        raise ImageSignatureError(f"{name}: not signed by the db certificate {fingerprint[:12]}…")
    return _check(data, certs, name)


def verify_image(data: bytes, db: bytes, dbx: bytes = b"", *, name: str = "image") -> str:
    """Check that firmware with this ``db`` and ``dbx`` (signature lists) would run ``data``;
    return who signed it (or "listed in db").

    Raises:
        ImageSignatureError: it would be refused; one line that starts with ``name``.
    """
    try:
        digest = authenticode_digest(data)
        if digest in {d for t, d in signature_lists(dbx) if t == EFI_CERT_SHA256}:
            raise ImageSignatureError("its digest is revoked in dbx")
        if digest in {d for t, d in signature_lists(db) if t == EFI_CERT_SHA256}:
            return "listed in db"
    except ImageSignatureError as e:
        raise ImageSignatureError(f"{name}: Secure Boot would refuse it: {e}") from None
    except (_Malformed, ValueError, IndexError, struct.error) as e:
        raise ImageSignatureError(f"{name}: Secure Boot would refuse it: malformed PE or "
                                  f"signature ({e})") from None  # fmt: skip
    return _check(data, db_certificates(db), name)


def _check(data: bytes, trusted: list[x509.Certificate], name: str) -> str:
    """Who signed ``data`` with a key of ``trusted`` (dbx already checked)."""
    try:
        blobs = _signed_data_blobs(data)
        if not blobs:
            raise ImageSignatureError("not signed")
        why = []
        for blob in blobs:
            try:
                return _check_signed_data(blob, data, trusted)
            except ImageSignatureError as e:
                why.append(str(e))
        raise ImageSignatureError("; ".join(why))
    except ImageSignatureError as e:
        raise ImageSignatureError(f"{name}: Secure Boot would refuse it: {e}") from None
    except (_Malformed, ValueError, IndexError, struct.error) as e:
        raise ImageSignatureError(f"{name}: Secure Boot would refuse it: malformed PE or "
                                  f"signature ({e})") from None  # fmt: skip
