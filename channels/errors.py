"""The one error hierarchy of the ``channels`` package.

Every error's text is one line for the user and names the file, field or role at fault.
The client side has two roots, as python-tuf does: ``VerificationError`` (the repository
served something that must not be trusted) and ``TransportError`` (the bytes did not arrive:
HTTP status, timeout, connection, a response of the wrong size).
"""

from __future__ import annotations


class ChannelError(Exception):
    """Base of every error raised by ``channels``; its text is one line for the user."""


class BundleError(ChannelError):
    """A release bundle is malformed or its files do not match its manifest."""


# --- the release engineer's side -------------------------------------------------------


class NotARepositoryError(ChannelError):
    """A directory is not a channel repository (or is a damaged one)."""


class UnknownChannelError(ChannelError):
    """A channel name is not one of alpha, beta, stable."""


class ReleaseError(ChannelError):
    """A publish, promote, rollout, pause, resume or pull the channel refuses."""


class SigningKeyError(ChannelError):
    """A private key is missing, unreadable or not the key the metadata names."""


class PassphraseError(SigningKeyError):
    """An encrypted key needs a passphrase and none, or a wrong one, was given."""


class StateError(ChannelError):
    """A client's local state (trusted metadata, cache) cannot be read or written."""


# --- the client's side: root 1, trust ---------------------------------------------------


class VerificationError(ChannelError):
    """The repository served metadata, an index or a file that fails verification."""


class MetadataVerificationError(VerificationError):
    """TUF metadata failed verification (signature, expiry, version, hash, delegation)."""


class SignatureError(MetadataVerificationError):
    """Metadata is not signed by the threshold of keys its delegating role names."""


class ExpiredMetadataError(MetadataVerificationError):
    """Metadata has expired (a freeze attack, or a repository nobody refreshed)."""


class RollbackError(MetadataVerificationError):
    """Metadata is older than what this client already trusts (a rollback/replay)."""


class TargetVerificationError(VerificationError):
    """A downloaded file's length or hashes differ from the signed target metadata."""


class ChannelIndexError(VerificationError):
    """A channel index is malformed or lists something its channel may not list."""


# --- the client's side: root 2, transport -----------------------------------------------


class TransportError(ChannelError):
    """A download failed: connection, timeout, HTTP status or response size."""


class HTTPStatusError(TransportError):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class DownloadSizeError(TransportError):
    """A response was longer than allowed (endless data) or shorter than announced."""


class SlowRetrievalError(TransportError):
    """A response did not arrive within its whole-file deadline (floor + length / min rate)."""


class VerityError(BundleError):
    """A dm-verity hash tree is malformed, or does not match its data or its root hash."""


class ImageSignatureError(BundleError):
    """A boot artifact (UKI, systemd-boot) would not pass Secure Boot against a db/dbx."""


# --- delta updates (channels.casync): every failure there means "use the full download" --


class DeltaError(ChannelError):
    """The casync delta path cannot be used; the caller falls back to the full download."""


class ChunkParamsError(DeltaError):
    """Chunk sizes (min/avg/max) the chunker cannot use."""


class CasyncIndexError(DeltaError, VerificationError):
    """A ``.caibx`` index is malformed, truncated, oversized or disagrees with its target."""


class ChunkVerificationError(DeltaError, VerificationError):
    """A chunk does not hash to its id, does not decompress, or is bigger than allowed."""


class ChunkMissingError(DeltaError, TransportError):
    """A chunk (or the whole chunk store) is not where the store layout says it is."""


class SeedError(DeltaError, TransportError):
    """A seed file or device cannot be read."""


class ChunkCacheError(DeltaError, StateError):
    """The local chunk cache directory cannot be read or written."""


class AssembleOutputError(DeltaError):
    """The output file or device of an assembly cannot be opened or written."""


# --- etcd's v3 JSON gateway (channels.etcd): the fleet's reports and the reboot lock ------


class EtcdError(ChannelError):
    """etcd is unreachable, refused a request or answered something that is not its API."""


class EtcdUnavailable(EtcdError):
    """No endpoint of etcd answered (connection refused, timeout, no leader)."""
