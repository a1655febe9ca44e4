"""Vagrant box catalogs, one per channel: pure logic, no I/O.

A catalog is the JSON that ``vagrant box add URL`` and ``vagrant box update`` read
(``hashicorp/vagrant:website/content/docs/boxes/format.mdx``)::

    {"name": "tidehost-stable", "description": "...",
     "versions": [{"version": "1.2.0",
                   "providers": [{"name": "libvirt", "url": "http://.../x.box",
                                  "checksum_type": "sha256", "checksum": "<64 hex>",
                                  "architecture": "amd64"}]}]}

One catalog per channel, named ``<image>-<channel>``, so a Vagrant box follows alpha, beta
or stable the way hosts do. A catalog only moves forward: adding a version lower than its
newest is refused, and a version already listed may only be added again with the very
same bits (publishing twice is idempotent; promotion copies the entries of the source
channel, no bytes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from channels.version import Version
from imagebuild.core.errors import ConfigError
from imagebuild.core.platforms import BoxProvider

CHECKSUM_TYPE = "sha256"
ARCHITECTURE = "amd64"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def catalog_name(image: str, channel: str) -> str:
    """The box name a channel's catalog carries (and a Vagrantfile's ``config.vm.box``)."""
    return f"{image}-{channel}"


def catalog_path(channel: str) -> str:
    """Where a channel's catalog lives, relative to the served tree (``published/``)."""
    return f"vagrant/{channel}.json"


def box_path(image: str, version: str, provider: BoxProvider) -> str:
    """Where a published box lives, relative to the served tree."""
    return f"vagrant/boxes/{image}-{version}-{provider.value}.box"


@dataclass(frozen=True)
class ProviderEntry:
    name: BoxProvider
    url: str
    checksum: str
    checksum_type: str = CHECKSUM_TYPE
    architecture: str = ARCHITECTURE

    def __post_init__(self) -> None:
        if not re.match(r"^(https?|file)://", self.url):
            raise ConfigError(f"box URL {self.url!r} is not an http(s):// or file:// URL")
        if self.checksum_type != CHECKSUM_TYPE or not _HEX64.match(self.checksum):
            raise ConfigError(f"box {self.name.value}: checksum must be a sha256 (64 hex)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name.value,
            "url": self.url,
            "checksum_type": self.checksum_type,
            "checksum": self.checksum,
            "architecture": self.architecture,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ProviderEntry:
        try:
            return cls(
                name=BoxProvider(d["name"]),
                url=str(d["url"]),
                checksum=str(d["checksum"]),
                checksum_type=str(d.get("checksum_type", CHECKSUM_TYPE)),
                architecture=str(d.get("architecture", ARCHITECTURE)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: not a box provider entry ({e})") from None


@dataclass(frozen=True)
class CatalogVersion:
    version: str
    providers: tuple[ProviderEntry, ...]

    @property
    def parsed(self) -> Version:
        return Version.parse(self.version)

    def to_dict(self) -> dict[str, Any]:
        providers = sorted(self.providers, key=lambda p: p.name.value)
        return {"version": self.version, "providers": [p.to_dict() for p in providers]}


@dataclass(frozen=True)
class BoxCatalog:
    name: str
    description: str
    versions: tuple[CatalogVersion, ...] = ()

    @property
    def latest(self) -> Version | None:
        return max((v.parsed for v in self.versions), default=None)

    def version(self, version: str) -> CatalogVersion | None:
        return next((v for v in self.versions if v.version == version), None)

    def to_dict(self) -> dict[str, Any]:
        versions = sorted(self.versions, key=lambda v: v.parsed)
        return {
            "name": self.name,
            "description": self.description,
            "versions": [v.to_dict() for v in versions],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> BoxCatalog:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ConfigError(f"{where}: not a Vagrant box catalog (no name)")
        versions = []
        for i, v in enumerate(d.get("versions") or []):
            vw = f"{where}: versions[{i}]"
            if not isinstance(v, dict):
                raise ConfigError(f"{vw}: not an object")
            version = _version(vw, v.get("version"))
            providers = tuple(
                ProviderEntry.from_dict(p, f"{vw}.providers[{j}]")
                for j, p in enumerate(v.get("providers") or [])
            )
            versions.append(CatalogVersion(version, providers))
        return cls(d["name"], str(d.get("description", "")), tuple(versions))


def _version(where: str, raw: Any) -> str:
    try:
        return str(Version.parse(str(raw)))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def empty_catalog(image: str, channel: str) -> BoxCatalog:
    return BoxCatalog(
        name=catalog_name(image, channel),
        description=f"Tidehost {image} on the {channel} channel",
    )


def add_version(
    catalog: BoxCatalog, version: str, providers: Iterable[ProviderEntry]
) -> BoxCatalog:
    """The catalog with ``version`` listing ``providers``.

    Raises:
        ConfigError: the version is lower than the catalog's newest (it would go backwards),
            or it is already listed with other bits for a provider.
    """
    version = _version("version", version)
    new = {p.name: p for p in providers}
    if not new:
        raise ConfigError(f"{catalog.name} {version}: no box to list")
    existing = catalog.version(version)
    latest = catalog.latest
    if existing is None and latest is not None and Version.parse(version) < latest:
        raise ConfigError(
            f"{catalog.name}: {version} is older than {latest}, the catalog's newest "
            "(a box catalog never goes backwards)"
        )
    merged = {p.name: p for p in existing.providers} if existing else {}
    for name, entry in new.items():
        old = merged.get(name)
        if old is not None and old.checksum != entry.checksum:
            raise ConfigError(
                f"{catalog.name} {version}: the {name.value} box is already listed with "
                "other bits (sha256 differs); publish a new version instead"
            )
        merged[name] = entry
    entry_v = CatalogVersion(version, tuple(merged[k] for k in sorted(merged)))
    others = tuple(v for v in catalog.versions if v.version != version)
    return replace(catalog, versions=(*others, entry_v))


def catalog_problem(catalog: BoxCatalog, box_name: str, provider: BoxProvider) -> str | None:
    """Why ``vagrant up`` of box ``box_name`` from ``catalog`` cannot work, or None (pure)."""
    if catalog.name != box_name:
        return f"the catalog of {catalog.name!r}, not {box_name!r}"
    if not any(p.name is provider for v in catalog.versions for p in v.providers):
        return f"no {provider.value} box listed (publish one: --box {provider.value}=FILE)"
    return None
