"""``channel init``: a new repository's keys and its first signed, empty metadata.

Every role gets a fresh ed25519 file key in ``keys/`` unless ``signers`` names a signer URI
for it (an HSM or KMS key; see ``channels.keys``): then its key never touches this disk.
The repository's ``tidehost-channels.json`` records each role's signer URI.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)

from channels import keys
from channels.bundle import CHANNELS
from channels.errors import NotARepositoryError, SigningKeyError, UnknownChannelError
from channels.layout import CONFIG_FORMAT, CONFIG_KIND, Layout, atomic_write, fsync_dir
from channels.repository import (
    _SERIALIZER,
    DEFAULT_EXPIRY_DAYS,
    ROLES,
    TOP_ROLES,
    Clock,
    _meta_file,
    _utcnow,
)

log = logging.getLogger(__name__)


def _sign_new(md: Metadata[Any], role: str, signer: Signer) -> None:
    try:
        md.sign(signer)
    except UnsignedMetadataError as e:
        raise SigningKeyError(f"role {role}: signing failed ({e.__cause__ or e})") from None


def create(path: Path, passphrase: bytes | None, clock: Clock = _utcnow,
           expiry_days: dict[str, float] | None = None,
           signers: dict[str, str] | None = None) -> None:
    """Create keys and an empty, signed repository at ``path``.

    ``signers`` maps a role to a signer URI (``hsm:2?label=offline``, ``awskms:...``) whose
    key it uses instead of a fresh file key: so the root (and targets) key can stay on an
    HSM, off this machine's disk.

    Raises:
        ChannelError: the directory already holds a repository (or other files), or a
            signer URI is unusable (nothing is written then).
    """
    layout = Layout(Path(path))
    if layout.root.exists() and any(layout.root.iterdir()):
        raise NotARepositoryError(f"{layout.root}: exists and is not empty; not initialising")
    unknown = set(signers or {}) - set(ROLES)
    if unknown:
        raise UnknownChannelError(f"--signer {sorted(unknown)[0]}: role must be one of "
                                  f"{', '.join(ROLES)}")
    pub: dict[str, Key] = {}
    uris = {role: keys.file_uri(role) for role in ROLES}
    signer: dict[str, Signer] = {}
    for role, given in (signers or {}).items():  # before any file is written
        uris[role], pub[role] = keys.import_uri(given, passphrase)
        signer[role] = keys.signer_for(uris[role], pub[role], layout.root, passphrase)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.keys.mkdir(mode=0o700)
    layout.metadata.mkdir(parents=True)
    layout.targets.mkdir()
    for role in ROLES:
        if role not in pub:
            pub[role] = keys.generate(layout.key(role), passphrase)
            signer[role] = keys.load(layout.key(role), passphrase)
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
        _sign_new(md, chan, signer[chan])
        data = md.to_bytes(_SERIALIZER)
        atomic_write(md_dir / f"1.{chan}.json", data)
        snapshot.meta[f"{chan}.json"] = _meta_file(md, data)
    tmd = Metadata(targets)
    _sign_new(tmd, "targets", signer["targets"])
    data = tmd.to_bytes(_SERIALIZER)
    atomic_write(md_dir / "1.targets.json", data)
    snapshot.meta["targets.json"] = _meta_file(tmd, data)
    smd = Metadata(snapshot)
    _sign_new(smd, "snapshot", signer["snapshot"])
    sdata = smd.to_bytes(_SERIALIZER)
    atomic_write(md_dir / "1.snapshot.json", sdata)
    rmd = Metadata(root)
    _sign_new(rmd, "root", signer["root"])
    rdata = rmd.to_bytes(_SERIALIZER)
    atomic_write(md_dir / "1.root.json", rdata)
    atomic_write(md_dir / "root.json", rdata)
    config = {"kind": CONFIG_KIND, "format": CONFIG_FORMAT, "expiry_days": days,
              "signers": uris}
    atomic_write(layout.config, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    tsmd = Metadata(Timestamp(expires=exp("timestamp"), snapshot_meta=_meta_file(smd, sdata)))
    _sign_new(tsmd, "timestamp", signer["timestamp"])
    atomic_write(md_dir / "timestamp.json", tsmd.to_bytes(_SERIALIZER))
    fsync_dir(md_dir)
    log.info("created channel repository %s (keys %sencrypted)", layout.root,
             "" if passphrase else "not ")
