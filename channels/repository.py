"""The signed TUF metadata of a channel repository: create, load, edit, sign, publish.

Roles: root, targets, snapshot, timestamp, and one delegated targets role per channel
(``alpha``, ``beta``, ``stable``), each trusted only for ``<channel>/*`` (terminating) and
signed by its own ed25519 key. Consistent snapshots: metadata is published under versioned
names, targets under ``<sha256>.<name>``.

``TufRepository`` keeps the current metadata in memory; edits mark roles dirty and
``commit()`` bumps, signs and writes them, then snapshot, then timestamp last (see
``channels.layout``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from channels import keys
from channels.bundle import CHANNELS
from channels.errors import NotARepositoryError, SigningKeyError, UnknownChannelError
from channels.layout import Layout, atomic_write, fsync_dir

log = logging.getLogger(__name__)
TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
ROLES = (*TOP_ROLES, *CHANNELS)
DEFAULT_EXPIRY_DAYS = {
    "root": 365.0, "targets": 90.0, "snapshot": 7.0, "timestamp": 1.0,
    "alpha": 30.0, "beta": 30.0, "stable": 30.0,
}
_SERIALIZER = JSONSerializer(compact=True)
T = TypeVar("T", bound=Signed)
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _meta_file(md: Metadata[Any], data: bytes) -> MetaFile:
    return MetaFile(md.signed.version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})


class TufRepository:
    """One repository's metadata, open for editing under the repository lock."""

    def __init__(self, path: Path, passphrase: bytes | None = None, clock: Clock = _utcnow):
        self.layout = Layout(Path(path))
        self.config = self.layout.read_config()
        self.passphrase = passphrase
        self.clock = clock
        self._signers: dict[str, Signer] = {}
        self._dirty: set[str] = set()
        self.root: Metadata[Root]
        self.targets: Metadata[Targets]
        self.channels: dict[str, Metadata[Targets]] = {}
        self.snapshot: Metadata[Snapshot]
        self.timestamp: Metadata[Timestamp]
        self._load()

    # --- loading ----------------------------------------------------------------------

    def _read(self, name: str, cls: type[T]) -> Metadata[T]:
        path = self.layout.metadata / name
        try:
            md = Metadata[cls].from_bytes(path.read_bytes())  # type: ignore[valid-type]
        except FileNotFoundError:
            raise NotARepositoryError(f"{path}: missing from the published tree") from None
        except (OSError, DeserializationError) as e:
            raise NotARepositoryError(f"{path}: unreadable metadata ({e})") from None
        if not isinstance(md.signed, cls):
            raise NotARepositoryError(f"{path}: is {md.signed.type}, not {cls.type}")
        return md

    def _load(self) -> None:
        self.timestamp = self._read("timestamp.json", Timestamp)
        snap_v = self.timestamp.signed.snapshot_meta.version
        self.snapshot = self._read(f"{snap_v}.snapshot.json", Snapshot)
        # The newest N.root.json, not the root.json copy: clients probe N+1.root.json, so a
        # root written just before a crash is already published and must never be rewritten.
        roots = [int(p.name.split(".")[0]) for p in self.layout.metadata.glob("*.root.json")
                 if p.name.split(".")[0].isdigit()]
        if not roots:
            raise NotARepositoryError(f"{self.layout.metadata}: no N.root.json")
        self.root = self._read(f"{max(roots)}.root.json", Root)
        meta = self.snapshot.signed.meta
        if "targets.json" not in meta:
            raise NotARepositoryError(f"{snap_v}.snapshot.json: does not list targets.json")
        self.targets = self._read(f"{meta['targets.json'].version}.targets.json", Targets)
        for chan in CHANNELS:
            mf = meta.get(f"{chan}.json")
            if mf is None:
                raise NotARepositoryError(f"{snap_v}.snapshot.json: does not list {chan}.json")
            self.channels[chan] = self._read(f"{mf.version}.{chan}.json", Targets)

    # --- keys ------------------------------------------------------------------------

    def role_keyids(self, role: str) -> list[str]:
        if role in TOP_ROLES:
            return list(self.root.signed.roles[role].keyids)
        delegations = self.targets.signed.delegations
        assert delegations is not None and delegations.roles is not None
        return list(delegations.roles[role].keyids)

    def role_key(self, role: str) -> Key:
        """The (first) public key the metadata names for ``role``."""
        keyid = self.role_keyids(role)[0]
        if role in TOP_ROLES:
            return self.root.signed.keys[keyid]
        assert self.targets.signed.delegations is not None
        assert self.targets.signed.delegations.keys is not None
        return self.targets.signed.delegations.keys[keyid]

    def signer_uri(self, role: str) -> str:
        """Where ``role``'s private key lives (``tidehost-channels.json`` "signers")."""
        uri = (self.config.get("signers") or {}).get(role)
        return uri if isinstance(uri, str) else keys.file_uri(role)

    def key_available(self, role: str) -> bool:
        """Whether ``role`` can sign now; a file key must be there, other signers must load."""
        path = keys.signer_file(self.signer_uri(role), self.layout.root)
        if path is not None:
            return path.exists()
        try:
            self.signer(role)
        except SigningKeyError as e:
            log.warning("role %s: %s", role, e)
            return False
        return True

    def signer(self, role: str) -> Signer:
        """The signer of ``role``, loaded once and checked against the metadata's key."""
        if role not in self._signers:
            uri = self.signer_uri(role)
            path = keys.signer_file(uri, self.layout.root)
            if path is not None:  # the message names the file, as it always has
                signer: Signer = keys.load(path, self.passphrase)
                if signer.public_key.keyid not in self.role_keyids(role):
                    raise SigningKeyError(
                        f"{path}: key {signer.public_key.keyid[:12]} is not a key of role {role}"
                    )
            else:
                signer = keys.signer_for(uri, self.role_key(role), self.layout.root,
                                         self.passphrase)
            self._signers[role] = signer
        return self._signers[role]

    def _sign_as(self, role: str, md: Metadata[Any], signer: Signer) -> None:
        try:
            md.sign(signer, append=True)
        except UnsignedMetadataError as e:  # an HSM or KMS failing mid-way
            cause = e.__cause__ or e
            raise SigningKeyError(f"role {role}: signing with {self.signer_uri(role)} failed "
                                  f"({str(cause).splitlines()[0] if str(cause) else cause!r})"
                                  ) from None

    def _write_config(self, **changes: Any) -> None:
        self.config = {**self.config, **changes}
        atomic_write(self.layout.config,
                     (json.dumps(self.config, indent=2, sort_keys=True) + "\n").encode())

    # --- editing -----------------------------------------------------------------------

    def channel(self, chan: str) -> Targets:
        """The channel's delegated targets role, marked for re-signing at commit."""
        if chan not in CHANNELS:
            raise UnknownChannelError(f"unknown channel {chan!r}: use one of {', '.join(CHANNELS)}")
        self.signer(chan)  # fail before any file is written if the key cannot be used
        self._dirty.add(chan)
        return self.channels[chan].signed

    def mark(self, role: str) -> None:
        self.signer(role)
        self._dirty.add(role)

    def expiry(self, role: str) -> datetime:
        days = float(self.config.get("expiry_days", {}).get(role, DEFAULT_EXPIRY_DAYS[role]))
        return self.clock() + timedelta(days=days)

    def _sign(self, role: str, md: Metadata[Any], *, bump: bool = True) -> bytes:
        if bump:
            md.signed.version += 1
        md.signed.expires = self.expiry(role)
        md.signatures.clear()
        self._sign_as(role, md, self.signer(role))
        return md.to_bytes(_SERIALIZER)

    def commit(self, *, extra_root_signers: tuple[Signer, ...] = ()) -> None:
        """Sign and publish every dirty role, then snapshot, then timestamp (last).

        Every listed target is first linked at both its paths (``link_targets``).
        """
        md_dir = self.layout.metadata
        self.link_targets()
        if "root" in self._dirty:
            root = self.root
            root.signed.version += 1
            root.signed.expires = self.expiry("root")
            root.signatures.clear()
            for s in (*extra_root_signers, self.signer("root")):
                self._sign_as("root", root, s)
            data = root.to_bytes(_SERIALIZER)
            atomic_write(md_dir / f"{root.signed.version}.root.json", data)
        meta = self.snapshot.signed.meta
        for role in (*CHANNELS, "targets"):
            if role not in self._dirty:
                continue
            md = self.targets if role == "targets" else self.channels[role]
            data = self._sign(role, md)
            atomic_write(md_dir / f"{md.signed.version}.{role}.json", data)
            meta[f"{role}.json"] = _meta_file(md, data)
        data = self._sign("snapshot", self.snapshot)
        atomic_write(md_dir / f"{self.snapshot.signed.version}.snapshot.json", data)
        self.timestamp.signed.snapshot_meta = _meta_file(self.snapshot, data)
        fsync_dir(md_dir)
        if "root" in self._dirty:  # the convenience copy for bootstrapping hosts
            atomic_write(md_dir / "root.json", self.root.to_bytes(_SERIALIZER))
        atomic_write(md_dir / "timestamp.json", self._sign("timestamp", self.timestamp))
        fsync_dir(md_dir)
        log.info(
            "published snapshot %d, timestamp %d (re-signed: %s)",
            self.snapshot.signed.version, self.timestamp.signed.version,
            ", ".join(sorted(self._dirty)) or "snapshot, timestamp",
        )
        self._dirty.clear()

    # --- key rotation ------------------------------------------------------------------

    def rotate_key(self, role: str, key_uri: str | None = None) -> str:
        """Replace ``role``'s key and publish; returns the new keyid.

        Without ``key_uri`` a fresh file key is written as ``keys/<role>.pem.new`` and moved
        into place only once the metadata naming it is published. With one (``hsm:...``,
        ``awskms:...``), the role moves onto that key. A retired file key is kept in
        ``keys/retired/``; ``tidehost-channels.json`` records the new signer URI.
        """
        if role not in ROLES:
            raise UnknownChannelError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        old = self.signer(role)
        old_file = keys.signer_file(self.signer_uri(role), self.layout.root)
        self.signer("root" if role in TOP_ROLES else "targets")
        for r in ("snapshot", "timestamp"):
            self.signer(r)  # every key the commit needs, before anything changes
        path = self.layout.key(role)
        fresh = path.with_name(path.name + ".new")
        if key_uri is None:
            new_uri = keys.file_uri(role)
            new_key: Key = keys.generate(fresh, self.passphrase)
            new_signer: Signer = keys.load(fresh, self.passphrase)
        else:
            new_uri, new_key = keys.import_uri(key_uri, self.passphrase)
            new_signer = keys.signer_for(new_uri, new_key, self.layout.root, self.passphrase)
        if new_key.keyid == old.public_key.keyid:
            fresh.unlink(missing_ok=True)
            raise SigningKeyError(f"role {role}: {new_uri} is the role's current key")
        self._replace_key(role, old.public_key, new_key)
        self._signers[role] = new_signer
        self.commit(extra_root_signers=(old,) if role == "root" else ())
        if old_file is not None and old_file.exists():
            self.layout.retired_keys.mkdir(mode=0o700, exist_ok=True)
            retired = self.layout.retired_keys / f"{role}-{old.public_key.keyid[:16]}.pem"
            shutil.copy2(old_file, retired)
            if key_uri is not None:
                old_file.unlink()  # the role's key is elsewhere now
        if key_uri is None:
            os.replace(fresh, path)
        self._write_config(signers={**(self.config.get("signers") or {}), role: new_uri})
        log.info("role %s: key %s replaced by %s (%s)", role, old.public_key.keyid[:16],
                 new_key.keyid[:16], new_uri)
        return new_key.keyid

    def _replace_key(self, role: str, old: Key, new: Key) -> None:
        if role in TOP_ROLES:
            self.root.signed.revoke_key(old.keyid, role)
            self.root.signed.add_key(new, role)
            self._dirty.add("root")
            if role in ("targets", "snapshot"):
                self._dirty.add(role)  # re-sign now with the new key
            # timestamp and snapshot are re-signed by every commit
        else:
            self.targets.signed.revoke_key(old.keyid, role)
            self.targets.signed.add_key(new, role)
            self._dirty.update(("targets", role))

    # --- refresh ------------------------------------------------------------------------

    def refresh(self, *, all_roles: bool = False) -> list[str]:
        """Re-sign snapshot and timestamp; also any role past half its lifetime.

        A role whose key is not in ``keys/`` (an offline root key, say) is skipped with a
        warning unless ``all_roles`` asks for every role. Returns the roles re-signed besides
        snapshot and timestamp.
        """
        now = self.clock()
        self.signer("snapshot")
        self.signer("timestamp")
        for role in ("root", "targets", *CHANNELS):
            md: Metadata[Any] = (
                self.root if role == "root" else
                self.targets if role == "targets" else self.channels[role]
            )
            life = self.expiry(role) - now
            if all_roles or md.signed.expires - now < life / 2:
                if not all_roles and not self.key_available(role):
                    log.warning("role %s expires %s but its key (%s) is not at hand: not "
                                "re-signed", role, md.signed.expires.strftime("%Y-%m-%d"),
                                self.signer_uri(role))
                    continue
                self.mark(role)
        extra = sorted(self._dirty)
        self.commit()
        return extra

    # --- reading ------------------------------------------------------------------------

    def target_file(self, target: TargetFile) -> Path:
        """The stored bytes of ``target``: its spec-layout path (the flat one before migration)."""
        return self.layout.stored_target(target.hashes["sha256"], target.path)

    def link_targets(self) -> int:
        """Give every listed target both its paths (spec layout and flat); returns links made.

        A repository written before the consistent-snapshot layout stores only the flat
        ``targets/<sha256>.<name>``; this hard-links each file into ``targets/<channel>/``
        (no bytes copied), and keeps the flat name for hosts whose client still fetches it.
        """
        made = 0
        for chan in CHANNELS:
            for tf in self.channels[chan].signed.targets.values():
                sha = tf.hashes.get("sha256")
                if sha is None:
                    continue
                linked = self.layout.link_both(sha, tf.path)
                if linked is None:
                    log.warning("target %s (%s) is missing from %s", tf.path, sha[:12],
                                self.layout.targets)
                    continue
                made += linked
        if made:
            fsync_dir(self.layout.targets)
            log.debug("linked %d target file(s) at both their paths", made)
        return made

    def describe(self) -> dict[str, Any]:
        def info(md: Metadata[Any]) -> dict[str, Any]:
            return {
                "version": md.signed.version,
                "expires": md.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }

        roles = {
            "root": info(self.root), "targets": info(self.targets),
            "snapshot": info(self.snapshot), "timestamp": info(self.timestamp),
        }
        for chan in CHANNELS:
            roles[chan] = info(self.channels[chan])
        for role, d in roles.items():
            d["keyids"] = [k[:16] for k in self.role_keyids(role)]
            d["signer"] = self.signer_uri(role)
        return roles


@contextmanager
def open_repository(path: Path, passphrase: bytes | None = None,
                    clock: Clock = _utcnow) -> Iterator[TufRepository]:
    """Open ``path`` under an exclusive lock (one writer at a time)."""
    layout = Layout(Path(path))
    layout.read_config()
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield TufRepository(layout.root, passphrase, clock)
    finally:
        os.close(fd)
