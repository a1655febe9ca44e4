"""Write the per-channel Vagrant box catalogs into a channel repository's served tree.

::

    published/
      vagrant/
        alpha.json  beta.json  stable.json          one catalog per channel
        boxes/<image>-<version>-<provider>.box      each box once, shared by the channels

``write_box_catalog`` runs with ``channel publish`` (copies the boxes in, lists the version
in that channel's catalog); ``promote_box_catalog`` runs with ``channel promote`` (lists the
same entries, same URLs and checksums, in the target channel: no bytes are copied). Every
file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from channels.bundle import CHANNELS, sha256_file
from channels.serve import published_root
from imagebuild.core.errors import ConfigError
from imagebuild.core.files import copy_atomic, write_atomic
from imagebuild.core.platforms import BoxProvider
from imagebuild.vagrant.catalog import (
    BoxCatalog,
    ProviderEntry,
    add_version,
    box_path,
    catalog_path,
    empty_catalog,
)


def _channel(name: str) -> str:
    if name not in CHANNELS:
        raise ConfigError(f"--channel: {name!r} is not one of {', '.join(CHANNELS)}")
    return name


def read_catalog(published: Path, channel: str, image: str) -> BoxCatalog:
    path = published / catalog_path(channel)
    if not path.exists():
        return empty_catalog(image, channel)
    catalog = BoxCatalog.from_json(path.read_text(), str(path))
    expected = empty_catalog(image, channel).name
    if catalog.name != expected:
        raise ConfigError(f"{path}: catalog of {catalog.name!r}, not {expected!r}")
    return catalog


def _copy_box(src: Path, dest: Path, sha: str) -> None:
    if dest.exists():
        if sha256_file(dest) != sha:
            raise ConfigError(f"{dest}: already published with other bits")
        return
    copy_atomic(src, dest)


def find_boxes(build_dir: Path, image: str, version: str) -> dict[BoxProvider, Path]:
    """The boxes ``tidehost build`` left in ``build_dir`` for ``image`` ``version``
    (``<image>-<version>-vagrant-<provider>.box``); a bundle's folder is its build dir."""
    found = {}
    for provider in BoxProvider:
        path = Path(build_dir) / f"{image}-{version}-{provider.output_format.value}.box"
        if path.is_file():
            found[provider] = path
    return found


def write_box_catalog(
    repo: Path,
    *,
    channel: str,
    version: str,
    boxes: Mapping[BoxProvider, Path],
    box_url_base: str,
    image: str = "tidehost",
    copy: bool = True,
) -> Path:
    """List ``version``'s boxes in ``channel``'s catalog; return the catalog's path.

    ``box_url_base`` is the URL the repository's ``published/`` tree is served at (the
    channel URL hosts use); the boxes are copied to ``published/vagrant/boxes/`` unless
    ``copy`` is false (then they must already be at that URL).

    Raises:
        ConfigError: bad channel or URL, a missing box, a catalog that would go backwards.
    """
    channel = _channel(channel)
    if not re.match(r"^(https?|file)://", box_url_base):
        raise ConfigError(f"--box-url-base: {box_url_base!r} is not an http(s):// URL")
    if not boxes:
        raise ConfigError("name at least one box (--box PROVIDER=FILE)")
    published = published_root(Path(repo))
    if not published.is_dir():
        raise ConfigError(f"{repo}: no such channel repository or directory")
    catalog = read_catalog(published, channel, image)
    entries = []
    for provider, src in sorted(boxes.items()):
        if not Path(src).is_file():
            raise ConfigError(f"--box {provider.value}={src}: no such file")
        sha = sha256_file(Path(src))
        rel = box_path(image, version, provider)
        entries.append(ProviderEntry(provider, f"{box_url_base.rstrip('/')}/{rel}", sha))
    updated = add_version(catalog, version, entries)  # checks before anything is written
    if copy:
        for provider, src in sorted(boxes.items()):
            entry = next(e for e in entries if e.name == provider)
            _copy_box(Path(src), published / box_path(image, version, provider), entry.checksum)
    dest = published / catalog_path(channel)
    write_atomic(dest, updated.to_json())
    return dest


def promote_box_catalog(
    repo: Path, *, version: str, src: str, dst: str, image: str = "tidehost"
) -> Path:
    """List ``version``'s boxes from ``src``'s catalog in ``dst``'s; return its path.

    Raises:
        ConfigError: bad channels, the version is not in ``src``'s catalog, or ``dst``'s
            catalog would go backwards.
    """
    src, dst = _channel(src), _channel(dst)
    if src == dst:
        raise ConfigError(f"--from and --to are both {src!r}")
    published = published_root(Path(repo))
    source = read_catalog(published, src, image)
    found = source.version(version)
    if found is None:
        raise ConfigError(f"{version} is not in the {src} box catalog ({catalog_path(src)})")
    updated = add_version(read_catalog(published, dst, image), version, found.providers)
    dest = published / catalog_path(dst)
    write_atomic(dest, updated.to_json())
    return dest
