"""The fleet's own boot keys: a Secure Boot set (PK, KEK, db) and a PCR-signing key.

``tidehost keys init DIR`` makes them with openssl and efitools; the image build signs with
them (``keys: DIR`` under ``secure_boot`` in the image file). A key directory holds::

    PK.key PK.crt PK.cer PK.esl PK.auth      platform key (self-signed); PK.auth enrols it
    KEK.key KEK.crt KEK.cer KEK.esl KEK.auth key-exchange key, signed by PK
    db.key db.crt db.cer db.esl db.auth      signature database key, signed by KEK: it signs
                                             systemd-boot and every UKI (sbsign)
    pcr.key pcr.pub.pem                      signs each UKI's PCR 11 policy (systemd-measure)
    owner-guid.txt                           the signature owner GUID of the .esl/.auth files

``*.cer`` is the DER certificate (what EC2 and GCE take as UEFI data), ``*.esl`` the
EFI_SIGNATURE_LIST and ``*.auth`` the time-based authenticated variable that firmware in
Setup Mode accepts (systemd-boot enrols ``loader/keys/auto/*.auth``). Every file is 0600 in a
0700 directory. With ``TIDEHOST_KEYS_PASSPHRASE`` set, the private keys are encrypted with
it (PKCS#8, AES-256) and the build needs the same variable to sign.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from imagebuild.core.errors import ConfigError
from imagebuild.core.run import require, run

PASSPHRASE_ENV = "TIDEHOST_KEYS_PASSPHRASE"
SECURE_BOOT_KEYS = ("PK", "KEK", "db")
# who signs each authenticated variable: PK itself and KEK with PK, db with KEK
_SIGNER = {"PK": "PK", "KEK": "PK", "db": "KEK"}
PRIVATE_KEYS = (*(f"{n}.key" for n in SECURE_BOOT_KEYS), "pcr.key")
FILES = (*(f"{n}.{ext}" for n in SECURE_BOOT_KEYS for ext in ("key", "crt", "cer", "esl",
                                                               "auth")),
         "pcr.key", "pcr.pub.pem", "owner-guid.txt")  # fmt: skip
# what a build needs from a key directory (PK.key and KEK.key may live offline)
BUILD_FILES = ("db.key", "db.crt", "db.cer", "db.esl", "PK.auth", "KEK.auth", "db.auth",
               "PK.crt", "KEK.crt", "pcr.key", "pcr.pub.pem")  # fmt: skip


@dataclass(frozen=True)
class SigningKeys:
    """The files a build signs and enrols with; private keys decrypted into a private folder."""

    source: Path  # the key directory named by the image file
    db_key: Path
    db_crt: Path
    db_cer: Path
    db_esl: Path
    pcr_key: Path
    pcr_public: Path
    auth: tuple[Path, Path, Path]  # PK.auth, KEK.auth, db.auth

    @property
    def db_sha256(self) -> str:
        """The db certificate's fingerprint (sha256 of its DER), as the manifest carries it."""
        return x509.load_pem_x509_certificate(self.db_crt.read_bytes()).fingerprint(
            hashes.SHA256()).hex()  # fmt: skip

    @property
    def pcr_public_sha256(self) -> str:
        """The PCR-signing public key's fingerprint (sha256 of its PEM file)."""
        return hashlib.sha256(self.pcr_public.read_bytes()).hexdigest()


def _passphrase_env() -> dict[str, str] | None:
    if os.environ.get(PASSPHRASE_ENV):
        return dict(os.environ)
    return None


def init_keys(directory: Path, *, name: str = "Tidehost fleet", days: int = 3650) -> list[Path]:
    """Make a new key set in ``directory`` (absent or empty); return the files made.

    Everything is made in a private folder beside it and moved into place at the end, so a
    failure leaves no half-made key set.

    Raises:
        ConfigError: ``directory`` already holds files, or its parent is not writable.
        ToolMissingError: openssl or efitools are not installed.
        StageError: openssl or efitools failed.
    """
    require("openssl", "cert-to-efi-sig-list", "sign-efi-sig-list")
    directory = Path(directory).absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"{directory}: already exists and is not an empty directory "
                          "(refusing to overwrite keys)")  # fmt: skip
    if "/" in name or not name.strip():
        raise ConfigError(f"--name: {name!r} is not a usable certificate name")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.partial-"))
    except OSError as e:
        raise ConfigError(f"{directory.parent}: cannot make the key directory ({e.strerror})") \
            from None
    umask = os.umask(0o077)  # the keys are never readable by anyone else, not even briefly
    try:
        _make(tmp, name, days)
        for f in tmp.iterdir():
            f.chmod(0o600)
        tmp.chmod(0o700)
        if directory.exists():
            directory.rmdir()
        os.replace(tmp, directory)
    finally:
        os.umask(umask)
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(directory / f for f in FILES)


def _make(d: Path, name: str, days: int) -> None:
    guid = str(uuid.uuid4())
    (d / "owner-guid.txt").write_text(guid + "\n")
    for n in SECURE_BOOT_KEYS:
        run(["openssl", "req", "-quiet", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-sha256", "-days", str(days), "-subj", f"/CN={name} {n}/",
             "-keyout", d / f"{n}.key", "-out", d / f"{n}.crt"], capture=True)  # fmt: skip
        run(["openssl", "x509", "-in", d / f"{n}.crt", "-outform", "DER", "-out",
             d / f"{n}.cer"], capture=True)  # fmt: skip
        run(["cert-to-efi-sig-list", "-g", guid, d / f"{n}.crt", d / f"{n}.esl"], capture=True)
    for n in SECURE_BOOT_KEYS:
        s = _SIGNER[n]
        run(["sign-efi-sig-list", "-g", guid, "-k", d / f"{s}.key", "-c", d / f"{s}.crt", n,
             d / f"{n}.esl", d / f"{n}.auth"], capture=True)  # fmt: skip
    run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
         "-out", d / "pcr.key"], capture=True)  # fmt: skip
    run(["openssl", "pkey", "-in", d / "pcr.key", "-pubout", "-out", d / "pcr.pub.pem"],
        capture=True)  # fmt: skip
    if env := _passphrase_env():
        for key in PRIVATE_KEYS:
            run(["openssl", "pkey", "-in", d / key, "-aes-256-cbc", "-passout",
                 f"env:{PASSPHRASE_ENV}", "-out", d / f"{key}.enc"], capture=True, env=env)
            os.replace(d / f"{key}.enc", d / key)


def check_key_dir(directory: Path, where: str) -> Path:
    """``directory`` as a key directory the build can use (pure reads, no decryption).

    Raises:
        ConfigError: it is missing or lacks a file the build needs; names ``where``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{where}: {directory} is not a directory")
    missing = [f for f in BUILD_FILES if not (directory / f).is_file()]
    if missing:
        raise ConfigError(f"{where}: {directory} lacks {', '.join(missing)} (make a key set "
                          "with `tidehost keys init DIR`)")  # fmt: skip
    return directory


def _load_private(path: Path, where: str) -> bytes:
    """The key at ``path``, as unencrypted PKCS#8 PEM (decrypted with the passphrase)."""
    data = path.read_bytes()
    secret = os.environ.get(PASSPHRASE_ENV)
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not secret:
        raise ConfigError(f"{where}: {path} is encrypted: set {PASSPHRASE_ENV} to its "
                          "passphrase")  # fmt: skip
    try:
        key = serialization.load_pem_private_key(data, secret.encode() if encrypted and secret
                                                 else None)  # fmt: skip
    except ValueError:
        if encrypted:
            raise ConfigError(f"{where}: {path}: wrong passphrase (from {PASSPHRASE_ENV})") \
                from None
        raise ConfigError(f"{where}: {path} is not a PEM private key") from None
    except TypeError:
        raise ConfigError(f"{where}: {path} is not a PEM private key") from None
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def unlock(directory: Path, dest: Path, where: str) -> SigningKeys:
    """The build's signing keys: ``directory`` checked, its db and PCR private keys decrypted
    into ``dest`` (made 0700; the caller removes it), the db key matched with its certificate.

    Raises:
        ConfigError: a file is missing, a key is encrypted without a passphrase or with a
            wrong one, or db.key is not the key of db.crt; the text names ``where``.
    """
    src = check_key_dir(directory, where)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = {}
    for name in ("db.key", "pcr.key"):
        pem = _load_private(src / name, where)
        fd = os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        keys[name] = dest / name
    try:
        cert = x509.load_pem_x509_certificate((src / "db.crt").read_bytes())
    except ValueError:
        raise ConfigError(f"{where}: {src / 'db.crt'} is not a PEM certificate") from None
    db_key = serialization.load_pem_private_key((dest / "db.key").read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (cert.public_key().public_bytes(serialization.Encoding.DER, spki)
            != db_key.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise ConfigError(f"{where}: {src / 'db.key'} is not the key of {src / 'db.crt'}")
    return SigningKeys(source=src, db_key=keys["db.key"], db_crt=src / "db.crt",
                       db_cer=src / "db.cer", db_esl=src / "db.esl", pcr_key=keys["pcr.key"],
                       pcr_public=src / "pcr.pub.pem",
                       auth=(src / "PK.auth", src / "KEK.auth", src / "db.auth"))  # fmt: skip
