"""What a channel offers a host (pure values): the release chosen for it, its files as the
signed targets metadata lists them, and the delta indexes and verity parameters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from channels.bundle import Manifest
from channels.index import TreeParams


@dataclass(frozen=True)
class OfferedFile:
    name: str  # the bundle file name: manifest.json, usr.img, ...
    target: str  # the TUF target path, <channel>/<name>-<version>.<file>
    length: int
    hashes: Mapping[str, str]  # from the signed targets metadata

    @property
    def sha256(self) -> str:
        return self.hashes["sha256"]


@dataclass(frozen=True)
class Offer:
    version: str
    manifest: Manifest
    channel: str
    files: tuple[OfferedFile, ...]
    reason: str  # one line: why this version, for the journal
    position: float  # this host's place in [0, 100) for this release
    open_percent: float  # how far the release's rollout has opened
    barrier: bool  # a newer release exists but needs this one first (min_version)
    min_version: str | None  # the release's own barrier
    published: datetime
    indexes: Mapping[str, str] = field(default_factory=dict)  # file -> .caibx target path
    verity: TreeParams | None = None  # rebuilds usr.verity from usr.img (channels.delta)

    @property
    def size(self) -> int:
        return sum(f.length for f in self.files)
