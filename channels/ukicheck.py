"""Publish-time checks of a format-2 release's UKIs (pure reads of the bundle, no subprocess).

A release signed for Secure Boot names its db certificate (``db_sha256``): each UKI must be
signed by it, unmodified since. And once a channel carries signed releases, every host that
took one may enforce Secure Boot with that db: an unsigned release, or one signed with
another db, would be refused by each of them (the agent checks before staging), so publishing
it is refused here, in one line, before any byte is copied.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from channels.authenticode import verify_signed_by
from channels.bundle import Manifest
from channels.errors import ImageSignatureError, ReleaseError


def check_ukis(bundle: Path, manifest: Manifest, earlier: Iterable[Manifest],
               channel: str) -> None:  # fmt: skip
    """Raise unless ``bundle``'s UKIs may join ``channel`` after ``earlier`` releases.

    Raises:
        ImageSignatureError: a UKI is not signed by the db certificate the manifest names.
        ReleaseError: the channel's releases are signed with a db this one is not.
    """
    if not manifest.uki:
        return
    if manifest.db_sha256:
        for name in manifest.uki_files:
            path = Path(bundle) / name
            try:
                verify_signed_by(path.read_bytes(), manifest.db_sha256, name=str(path))
            except OSError as e:
                raise ImageSignatureError(f"{path}: cannot read ({e.strerror})") from None
    signers = {m.db_sha256 for m in earlier if m.uki and m.db_sha256}
    if signers and manifest.db_sha256 not in signers:
        mine = f"signed by db {manifest.db_sha256[:12]}…" if manifest.db_sha256 else "unsigned"
        theirs = ", ".join(sorted(f"{s[:12]}…" for s in signers))
        raise ReleaseError(f"{bundle}: its UKIs are {mine}, but channel {channel}'s releases "
                           f"are signed by db {theirs}: hosts that enforce Secure Boot would "
                           "refuse it")  # fmt: skip
