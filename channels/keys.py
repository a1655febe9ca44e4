"""Signing keys: where each role's private key lives, and loading it as a signer.

By default a key is ed25519, generated with ``cryptography`` and stored as a PKCS#8 PEM file
in the repository's ``keys/`` directory (mode 0700, files 0600), never in the published
tree. With a passphrase it is encrypted (``BestAvailableEncryption``); the passphrase comes
from ``--passphrase-file`` or the ``TIDEHOST_KEY_PASSPHRASE`` variable. A role's key may
instead be on a PKCS#11 HSM or in a cloud KMS, named by a securesystemslib signer URI (below).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.exceptions import UnsupportedLibraryError
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

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


# --- signer URIs: where a role's private key lives ------------------------------------
#
# A role's key is named by a securesystemslib signer URI, recorded (never a secret) in the
# repository's tidehost-channels.json:
#   pemfile:keys/<role>.pem   a PKCS#8 PEM file (encrypted with a passphrase or not), relative
#                             to the repository; the default
#   hsm:[KEYID][?label=L]     a PKCS#11 token (securesystemslib's HSMSigner; ECDSA P-256/384;
#                             the module from $PYKCS11LIB, the PIN from $TIDEHOST_HSM_PIN)
#   awskms:<key id>, gcpkms:<key resource>, azurekms:<vault>.vault.azure.net/keys/<key>/...
#                             cloud KMS keys (securesystemslib[awskms|gcpkms|azurekms])

PIN_ENV = "TIDEHOST_HSM_PIN"
FILE_SCHEME = "pemfile"
KMS_SCHEMES = ("awskms", "gcpkms", "azurekms")
SCHEMES = (FILE_SCHEME, "hsm", *KMS_SCHEMES)
_EXTRA = {"hsm": "hsm", "awskms": "awskms", "gcpkms": "gcpkms", "azurekms": "azurekms"}


def file_uri(role: str) -> str:
    return f"{FILE_SCHEME}:keys/{role}.pem"


def check_uri(uri: str) -> tuple[str, str, dict[str, str]]:
    """Parse a signer URI into (scheme, path, query); refuse what no signer here takes.

    Raises:
        SigningKeyError: unknown scheme, empty key name, a malformed ``hsm:`` key id.
    """
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme not in SCHEMES:
        raise SigningKeyError(f"signer {uri!r}: use one of "
                              f"{', '.join(s + ':' for s in SCHEMES)}")
    parts = urlsplit(rest)
    path = rest if scheme != "hsm" else parts.path
    query = dict(parse_qsl(parts.query)) if scheme == "hsm" else {}
    if scheme == "hsm":
        if path and not path.isdigit():
            raise SigningKeyError(f"signer {uri!r}: the HSM key id must be a number (hsm:2)")
        if set(query) - {"label"}:
            raise SigningKeyError(f"signer {uri!r}: only ?label=TOKEN is understood")
    elif not path.strip() or any(c in path for c in "\n\r\0"):
        raise SigningKeyError(f"signer {uri!r}: names no key")
    return scheme, path, query


def secrets_handler(passphrase: bytes | None) -> Callable[[str], str]:
    """securesystemslib's secrets handler: the passphrase, or the HSM's PIN.

    The PIN comes from ``$TIDEHOST_HSM_PIN``, else the passphrase (``--passphrase-file`` or
    ``$TIDEHOST_KEY_PASSPHRASE``).
    """
    def handler(name: str) -> str:
        if name.lower() == "pin":
            pin = os.environ.get(PIN_ENV) or (passphrase.decode() if passphrase else "")
            if not pin:
                raise PassphraseError(f"the HSM key needs its PIN: set {PIN_ENV}")
            return pin
        if not passphrase:
            raise PassphraseError(f"a key needs its {name}: set {PASSPHRASE_ENV} or pass "
                                  "--passphrase-file")
        return passphrase.decode()
    return handler


def _unsupported(uri: str, scheme: str, e: Exception) -> SigningKeyError:
    return SigningKeyError(f"signer {uri}: {e} (install tidehost[{_EXTRA.get(scheme, scheme)}]"
                           f" or securesystemslib[{_EXTRA.get(scheme, scheme)}])")


def import_uri(uri: str, passphrase: bytes | None) -> tuple[str, Key]:
    """Look up the public key of a non-file signer URI; returns (canonical URI, key).

    Raises:
        SigningKeyError: the URI is malformed, its library is missing, or its key not found.
    """
    scheme, path, query = check_uri(uri)
    try:
        if scheme == "hsm":
            from securesystemslib.signer import HSMSigner

            return HSMSigner.import_(int(path) if path else None, query.get("label"),
                                     secrets_handler(passphrase))
        if scheme == "awskms":
            from securesystemslib.signer import AWSSigner

            return AWSSigner.import_(path)
        if scheme == "gcpkms":
            from securesystemslib.signer import GCPSigner

            return GCPSigner.import_(path)
        if scheme == "azurekms":
            from securesystemslib.signer import AzureSigner

            vault, _, key = path.removeprefix("https://").partition("/keys/")
            return AzureSigner.import_(vault.split(".")[0], key.split("/")[0])
    except UnsupportedLibraryError as e:
        raise _unsupported(uri, scheme, e) from None
    except PassphraseError:
        raise
    except Exception as e:  # noqa: BLE001 - each backend has its own errors
        raise SigningKeyError(f"signer {uri}: {str(e).splitlines()[0] if str(e) else e!r}"
                              ) from None
    raise SigningKeyError(f"signer {uri}: a file key has no separate public key to import")


def signer_for(uri: str, public_key: Key, base: Path, passphrase: bytes | None) -> Signer:
    """The signer of ``uri`` for ``public_key`` (the key the metadata names), checked.

    ``pemfile:`` paths are relative to ``base`` (the repository). Any other URI goes through
    ``Signer.from_priv_key_uri``; one test signature proves it holds ``public_key``.

    Raises:
        SigningKeyError, PassphraseError: the key cannot be used, or is another key.
    """
    scheme, path, _ = check_uri(uri)
    if scheme == FILE_SCHEME:
        file = Path(path) if Path(path).is_absolute() else base / path
        signer: Signer = load(file, passphrase)
        if signer.public_key.keyid != public_key.keyid:
            raise SigningKeyError(f"{file}: key {signer.public_key.keyid[:12]} is not the "
                                  f"role's key {public_key.keyid[:12]}")
        return signer
    handler = secrets_handler(passphrase)
    if scheme == "hsm":
        handler("pin")  # fail now, not in the middle of signing
    try:
        signer = Signer.from_priv_key_uri(uri, public_key, handler)
        probe = b"tidehost signer probe"
        public_key.verify_signature(signer.sign(probe), probe)
    except UnsupportedLibraryError as e:
        raise _unsupported(uri, scheme, e) from None
    except PassphraseError:
        raise
    except Exception as e:  # noqa: BLE001 - each backend has its own errors
        if type(e).__name__ in ("PinIncorrect", "PinInvalid", "PinLenRange"):
            raise PassphraseError(f"signer {uri}: wrong PIN (from {PIN_ENV})") from None
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SigningKeyError(f"signer {uri}: cannot sign as key {public_key.keyid[:12]} "
                              f"({why})") from None
    return signer


def signer_file(uri: str, base: Path) -> Path | None:
    """The private key file a ``pemfile:`` URI names (None for any other signer)."""
    scheme, path, _ = check_uri(uri)
    if scheme != FILE_SCHEME:
        return None
    return Path(path) if Path(path).is_absolute() else base / path
