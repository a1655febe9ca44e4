"""Signing keys: ed25519, generated with ``cryptography``, stored as PKCS#8 PEM files.

Private keys live in the repository's ``keys/`` directory (mode 0700, files 0600), never in
the published tree. With a passphrase they are encrypted (``BestAvailableEncryption``); the
passphrase comes from ``--passphrase-file`` or the ``TIDEHOST_KEY_PASSPHRASE`` variable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from channels.errors import PassphraseError, SigningKeyError

log = logging.getLogger(__name__)
PASSPHRASE_ENV = "TIDEHOST_KEY_PASSPHRASE"


def read_passphrase(passphrase_file: Path | None = None) -> bytes | None:
    """The passphrase from ``passphrase_file`` (first line) or the environment, else None."""
    if passphrase_file is not None:
        try:
            text = Path(passphrase_file).read_bytes().decode("utf-8").splitlines()
        except OSError as e:
            raise PassphraseError(f"{passphrase_file}: cannot read ({e.strerror})") from None
        except UnicodeDecodeError as e:
            raise PassphraseError(f"{passphrase_file}: not UTF-8 ({e.reason} at byte "
                                  f"{e.start})") from None
        if not text or not text[0]:
            raise PassphraseError(f"{passphrase_file}: the passphrase file is empty")
        return text[0].encode()
    env = os.environ.get(PASSPHRASE_ENV)
    return env.encode() if env else None


def public_key(private: Ed25519PrivateKey) -> SSlibKey:
    return SSlibKey.from_crypto(private.public_key())


def generate(path: Path, passphrase: bytes | None) -> SSlibKey:
    """Write a fresh ed25519 key to ``path`` (0600) and return its public key."""
    private = Ed25519PrivateKey.generate()
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return public_key(private)


def load(path: Path, passphrase: bytes | None) -> CryptoSigner:
    """Load the private key at ``path`` as a signer.

    Raises:
        SigningKeyError: the file is missing or not an ed25519 private key.
        PassphraseError: it is encrypted and the passphrase is missing or wrong.
    """
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"{path}: cannot read the private key ({e.strerror})") from None
    encrypted = b"ENCRYPTED" in pem.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise PassphraseError(
            f"{path} is encrypted: set {PASSPHRASE_ENV} or pass --passphrase-file"
        )
    try:
        private = serialization.load_pem_private_key(pem, passphrase if encrypted else None)
    except ValueError:
        if encrypted:
            raise PassphraseError(f"{path}: wrong passphrase") from None
        raise SigningKeyError(f"{path}: not a PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an ed25519 key")
    if passphrase and not encrypted:
        log.debug("%s is not encrypted; ignoring the passphrase", path)
    return CryptoSigner(private, public_key(private))
