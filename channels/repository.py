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

from securesystemslib.signer import CryptoSigner, Key
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
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
from channels.layout import CONFIG_FORMAT, CONFIG_KIND, Layout, atomic_write, fsync_dir, link

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
        self._signers: dict[str, CryptoSigner] = {}
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

    def signer(self, role: str) -> CryptoSigner:
        """The private key of ``role``, loaded once and checked against the metadata."""
        if role not in self._signers:
            path = self.layout.key(role)
            signer = keys.load(path, self.passphrase)
            if signer.public_key.keyid not in self.role_keyids(role):
                raise SigningKeyError(
                    f"{path}: key {signer.public_key.keyid[:12]} is not a key of role {role}"
                )
            self._signers[role] = signer
        return self._signers[role]

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
        md.sign(self.signer(role), append=True)
        return md.to_bytes(_SERIALIZER)

    def commit(self, *, extra_root_signers: tuple[CryptoSigner, ...] = ()) -> None:
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
                root.sign(s, append=True)
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

    def rotate_key(self, role: str) -> str:
        """Replace ``role``'s key with a fresh one and publish; returns the new keyid.

        The new key is written as ``keys/<role>.pem.new`` and moved into place only once the
        metadata naming it is published; the old one is kept in ``keys/retired/``.
        """
        if role not in ROLES:
            raise UnknownChannelError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        old = self.signer(role)
        self.signer("root" if role in TOP_ROLES else "targets")
        for r in ("snapshot", "timestamp"):
            self.signer(r)  # every key the commit needs, before anything changes
        path = self.layout.key(role)
        fresh = path.with_name(path.name + ".new")
        new_key = keys.generate(fresh, self.passphrase)
        self._replace_key(role, old.public_key, new_key)
        self._signers[role] = keys.load(fresh, self.passphrase)
        self.commit(extra_root_signers=(old,) if role == "root" else ())
        self.layout.retired_keys.mkdir(mode=0o700, exist_ok=True)
        shutil.copy2(path, self.layout.retired_keys / f"{role}-{old.public_key.keyid[:16]}.pem")
        os.replace(fresh, path)
        log.info("role %s: key %s replaced by %s", role, old.public_key.keyid[:16],
                 new_key.keyid[:16])
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
                if not all_roles and not self.layout.key(role).exists():
                    log.warning("role %s expires %s but its key is not in %s: not re-signed",
                                role, md.signed.expires.strftime("%Y-%m-%d"), self.layout.keys)
                    continue
                self.mark(role)
        extra = sorted(self._dirty)
        self.commit()
        return extra

    # --- reading ------------------------------------------------------------------------

    def target_file(self, target: TargetFile) -> Path:
        """The stored bytes of ``target``: its spec-layout path (the flat one before migration)."""
        path = self.layout.target(target.hashes["sha256"], target.path)
        if not path.exists():
            legacy = self.layout.legacy_target(target.hashes["sha256"], target.path)
            if legacy.exists():
                return legacy
        return path

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
                new = self.layout.target(sha, tf.path)
                old = self.layout.legacy_target(sha, tf.path)
                src = new if new.exists() else old if old.exists() else None
                if src is None:
                    log.warning("target %s (%s) is missing from %s", tf.path, sha[:12],
                                self.layout.targets)
                    continue
                for dest in (new, old):
                    if dest != src and link(src, dest):
                        made += 1
        if made:
            fsync_dir(self.layout.targets)
            log.info("linked %d target file(s) into the consistent-snapshot layout", made)
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
        return roles


def create(path: Path, passphrase: bytes | None, clock: Clock = _utcnow,
           expiry_days: dict[str, float] | None = None) -> None:
    """Create keys and an empty, signed repository at ``path``.

    Raises:
        ChannelError: the directory already holds a repository (or other files).
    """
    layout = Layout(Path(path))
    if layout.root.exists() and any(layout.root.iterdir()):
        raise NotARepositoryError(f"{layout.root}: exists and is not empty; not initialising")
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.keys.mkdir(mode=0o700)
    layout.metadata.mkdir(parents=True)
    layout.targets.mkdir()
    pub = {role: keys.generate(layout.key(role), passphrase) for role in ROLES}
    signers = {role: keys.load(layout.key(role), passphrase) for role in ROLES}
    days = {**DEFAULT_EXPIRY_DAYS, **(expiry_days or {})}
    now = clock()

    def exp(role: str) -> datetime:
        return now + timedelta(days=days[role])

    root = Root(expires=exp("root"), consistent_snapshot=True)
    for role in TOP_ROLES:
        root.add_key(pub[role], role)
    targets = Targets(expires=exp("targets"))
    targets.delegations = Delegations(keys={}, roles={})
    for chan in CHANNELS:
        assert targets.delegations.roles is not None
        targets.delegations.roles[chan] = DelegatedRole(chan, [], 1, True, [f"{chan}/*"])
        targets.add_key(pub[chan], chan)
    md_dir = layout.metadata
    snapshot = Snapshot(expires=exp("snapshot"))
    for chan in CHANNELS:
        md = Metadata(Targets(expires=exp(chan)))
        md.sign(signers[chan])
        data = md.to_bytes(_SERIALIZER)
        atomic_write(md_dir / f"1.{chan}.json", data)
        snapshot.meta[f"{chan}.json"] = _meta_file(md, data)
    tmd = Metadata(targets)
    tmd.sign(signers["targets"])
    data = tmd.to_bytes(_SERIALIZER)
    atomic_write(md_dir / "1.targets.json", data)
    snapshot.meta["targets.json"] = _meta_file(tmd, data)
    smd = Metadata(snapshot)
    smd.sign(signers["snapshot"])
    sdata = smd.to_bytes(_SERIALIZER)
    atomic_write(md_dir / "1.snapshot.json", sdata)
    rmd = Metadata(root)
    rmd.sign(signers["root"])
    rdata = rmd.to_bytes(_SERIALIZER)
    atomic_write(md_dir / "1.root.json", rdata)
    atomic_write(md_dir / "root.json", rdata)
    config = {"kind": CONFIG_KIND, "format": CONFIG_FORMAT, "expiry_days": days}
    atomic_write(layout.config, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    tsmd = Metadata(Timestamp(expires=exp("timestamp"), snapshot_meta=_meta_file(smd, sdata)))
    tsmd.sign(signers["timestamp"])
    atomic_write(md_dir / "timestamp.json", tsmd.to_bytes(_SERIALIZER))
    fsync_dir(md_dir)
    log.info("created channel repository %s (keys %sencrypted)", layout.root,
             "" if passphrase else "not ")


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
