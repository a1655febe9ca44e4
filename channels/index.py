"""The channel index: ``<channel>/index.json``, a target signed by that channel's role.

It lists the channel's releases, oldest first::

    {"format": 1, "channel": "stable", "releases": [
      {"version": "1.2.0", "published": "2026-11-22T03:00:00Z",
       "manifest": {...the bundle's manifest...},
       "files": {"manifest.json": "stable/tidehost-1.2.0.manifest.json",
                 "usr.img": "stable/tidehost-1.2.0.usr.img", ...},
       "indexes": {"usr.img": "stable/tidehost-1.2.0.usr.img.caibx", ...},
       "verity": {"salt": "<hex>", "uuid": "<hex>", "algorithm": "sha256", "block": 4096},
       "rollout": {"start": "...", "waves": [[1, 0], [100, 259200]],
                   "paused_at": null, "paused_seconds": 0},
       "min_version": "1.1.0", "pulled": false}]}

``files`` maps each bundle file to a TUF target path *inside this channel* (``<channel>/``):
length and hashes come from the signed targets metadata, never from the index. ``indexes``
(optional) maps the chunked files (usr.img, vmlinuz, initrd) to their casync ``.caibx``
index, a target of the same role; the chunks are in the repository's one store
(``channels.layout.STORE``). ``verity`` (optional) is what a host needs to rebuild usr.verity
from usr.img instead of fetching it: the tree's superblock parameters. A client that predates
them ignores both keys. Pure, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from channels.bundle import CHANNELS, FILES, MANIFEST, Manifest, files_for
from channels.errors import BundleError, ChannelIndexError, UnknownChannelError
from channels.rollout import RolloutPlan, iso_time, parse_time
from channels.version import Version

FORMAT = 1
INDEX_NAME = "index.json"
BUNDLE_FILES = (MANIFEST, *FILES)  # a format-1 release's targets
CHUNKED_FILES = ("usr.img", "vmlinuz", "initrd")  # cut into chunks at publish (format 1)
CHUNKED_FILES_V2 = ("usr.img", "uki-a.efi", "uki-b.efi")  # format 2: the UKIs instead
CHUNKED_FILES_V3 = ("usr.img", "uki.efi")  # format 3: one UKI
INDEX_SUFFIX = ".caibx"


def bundle_files(fmt: int) -> tuple[str, ...]:
    """The targets of a release whose manifest has format ``fmt``: its bundle's files."""
    return (MANIFEST, *files_for(fmt))


def chunked_files(fmt: int) -> tuple[str, ...]:
    """The files of a format-``fmt`` release that publish cuts into chunks."""
    return CHUNKED_FILES_V3 if fmt >= 3 else CHUNKED_FILES_V2 if fmt == 2 else CHUNKED_FILES


def check_channel(channel: str) -> str:
    if channel not in CHANNELS:
        raise UnknownChannelError(f"unknown channel {channel!r}: use one of {', '.join(CHANNELS)}")
    return channel


def index_path(channel: str) -> str:
    return f"{check_channel(channel)}/{INDEX_NAME}"


def target_path(channel: str, manifest: Manifest, fname: str) -> str:
    """The TUF target path of one bundle file in ``channel`` (``*`` in ``<chan>/*`` has no /)."""
    return f"{channel}/{manifest.name}-{manifest.version}.{fname}"


@dataclass(frozen=True)
class TreeParams:
    """What rebuilds a release's dm-verity tree from its usr.img, byte for byte: the
    superblock's salt, uuid, hash algorithm and block size (data and hash blocks alike)."""

    salt: bytes
    uuid: bytes
    algorithm: str = "sha256"
    block: int = 4096

    def __post_init__(self) -> None:
        if len(self.salt) > 256 or len(self.uuid) != 16:
            raise ValueError("verity: salt longer than 256 bytes or uuid not 16 bytes")
        if self.algorithm not in ("sha256", "sha512", "sha1") or not isinstance(self.block, int) \
                or isinstance(self.block, bool) or self.block not in (512 << i for i in range(11)):
            raise ValueError(f"verity: algorithm {self.algorithm!r} / block {self.block!r} unknown")

    def to_dict(self) -> dict[str, Any]:
        return {"salt": self.salt.hex(), "uuid": self.uuid.hex(), "algorithm": self.algorithm,
                "block": self.block}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TreeParams:
        return cls(bytes.fromhex(str(d["salt"])), bytes.fromhex(str(d["uuid"])),
                   str(d["algorithm"]), d["block"])


@dataclass(frozen=True)
class Release:
    version: str
    manifest: Manifest
    files: Mapping[str, str]  # bundle file name -> target path
    rollout: RolloutPlan
    published: datetime
    min_version: str | None = None
    pulled: bool = False
    indexes: Mapping[str, str] = field(default_factory=dict)  # chunked file -> .caibx target
    verity: TreeParams | None = None

    def __post_init__(self) -> None:
        Version.parse(self.version)
        if self.min_version is not None:
            Version.parse(self.min_version)
        if self.manifest.version != self.version:
            raise ValueError(f"manifest version {self.manifest.version} is not {self.version}")
        names = bundle_files(self.manifest.format)
        if set(self.files) != set(names):
            raise ValueError(f"files must list exactly {', '.join(names)}")
        chunked = chunked_files(self.manifest.format)
        if set(self.indexes) - set(chunked):
            raise ValueError(f"indexes may list only {', '.join(chunked)}")

    @property
    def parsed_version(self) -> Version:
        return Version.parse(self.version)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "version": self.version,
            "published": iso_time(self.published),
            "manifest": self.manifest.to_dict(),
            "files": dict(sorted(self.files.items())),
            "rollout": self.rollout.to_dict(),
            "min_version": self.min_version,
            "pulled": self.pulled,
        }
        if self.indexes:
            d["indexes"] = dict(sorted(self.indexes.items()))
        if self.verity is not None:
            d["verity"] = self.verity.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Release:
        return cls(
            version=str(d["version"]),
            manifest=Manifest.from_dict(d["manifest"]),
            files={str(k): str(v) for k, v in dict(d["files"]).items()},
            rollout=RolloutPlan.from_dict(d["rollout"]),
            published=parse_time(d["published"]),
            min_version=d.get("min_version"),
            pulled=_flag(d.get("pulled", False), "pulled"),
            indexes={str(k): str(v) for k, v in dict(d.get("indexes") or {}).items()},
            verity=TreeParams.from_dict(d["verity"]) if d.get("verity") is not None else None,
        )


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"field '{name}': {value!r} is not true or false")
    return value


@dataclass(frozen=True)
class ChannelIndex:
    channel: str
    releases: tuple[Release, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_channel(self.channel)
        seen: set[str] = set()
        for r in self.releases:
            if r.version in seen:
                raise ChannelIndexError(f"{self.where}: release {r.version} is listed twice")
            seen.add(r.version)
            for fname, path in (*r.files.items(), *r.indexes.items()):
                if not path.startswith(f"{self.channel}/") or path.count("/") != 1:
                    raise ChannelIndexError(
                        f"{self.where}: release {r.version} file {fname} is target {path!r}, "
                        f"outside channel {self.channel}"
                    )
        ordered = sorted(self.releases, key=lambda r: r.parsed_version)
        if list(ordered) != list(self.releases):
            raise ChannelIndexError(f"{self.where}: releases are not in version order")

    @property
    def where(self) -> str:
        return f"{self.channel}/{INDEX_NAME}"

    def get(self, version: str) -> Release | None:
        return next((r for r in self.releases if r.version == version), None)

    @property
    def current(self) -> Release | None:
        """The newest release that is not pulled."""
        live = [r for r in self.releases if not r.pulled]
        return live[-1] if live else None

    def with_release(self, release: Release) -> ChannelIndex:
        """Replace the release of that version, or add it, keeping version order."""
        others = [r for r in self.releases if r.version != release.version]
        return replace(
            self, releases=tuple(sorted([*others, release], key=lambda r: r.parsed_version))
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "channel": self.channel,
            "releases": [r.to_dict() for r in self.releases],
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, channel: str) -> ChannelIndex:
        """Parse an index and check it is ``channel``'s own.

        Raises:
            ChannelIndexError: malformed, of another channel, or listing foreign targets.
        """
        where = f"{channel}/{INDEX_NAME}"
        try:
            d = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ChannelIndexError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
        except (json.JSONDecodeError, RecursionError) as e:
            raise ChannelIndexError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ChannelIndexError(f"{where}: field 'format' is not {FORMAT}")
        if d.get("channel") != channel:
            raise ChannelIndexError(
                f"{where}: is the index of channel {d.get('channel')!r}, not {channel!r}"
            )
        releases = []
        for i, r in enumerate(d.get("releases") or []):
            try:
                releases.append(Release.from_dict(r))
            except (KeyError, TypeError, ValueError, AttributeError, BundleError) as e:
                raise ChannelIndexError(f"{where}: releases[{i}]: {e}") from None
        return cls(channel=channel, releases=tuple(releases))
