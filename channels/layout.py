"""Where things live in a channel repository directory, and atomic file writes.

::

    repo/
      tidehost-channels.json   marker and settings (expiry per role); not secret
      keys/                    private keys, 0700: root.pem targets.pem snapshot.pem
                               timestamp.pem alpha.pem beta.pem stable.pem; retired/ after rotation
      published/               the tree a web server, object store or CDN serves, and nothing else
        metadata/              TUF metadata: N.root.json (and root.json, the newest root: the
                               file hosts bootstrap trust from), timestamp.json,
                               N.snapshot.json, N.targets.json, N.alpha.json, ...
        targets/               TUF's consistent-snapshot layout: target path <dir>/<name>
                               is stored as <dir>/<sha256>.<name> (alpha/<sha256>.x, ...),
                               and also as <sha256>.<name> (the layout of clients before
                               it); all of them hard links to one copy of the bytes
        chunks.castr/          the casync chunk store of every release and channel:
                               <first 4 hex>/<chunk id>.cacnk, each chunk once (``STORE``)
      .lock                    serialises writers

Publication is atomic: every file is written to a temporary name beside its final one and
renamed into place; new metadata gets new versioned names, and ``timestamp.json`` is switched
last, so a client sees either the old repository or the new one, never a mixture.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from channels.errors import NotARepositoryError

CONFIG_NAME = "tidehost-channels.json"
CONFIG_KIND = "tidehost-channel-repository"
CONFIG_FORMAT = 1
MIRROR_CONFIG = "tidehost-mirror.json"  # marks a mirror (channels.mirror), served like a repo
STORE = "chunks.castr"
"""The chunk store's directory under ``published/``, and its URL below a repository's base."""


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def retired_keys(self) -> Path:
        return self.keys / "retired"

    @property
    def published(self) -> Path:
        return self.root / "published"

    @property
    def metadata(self) -> Path:
        return self.published / "metadata"

    @property
    def targets(self) -> Path:
        return self.published / "targets"

    @property
    def chunks(self) -> Path:
        return self.published / STORE

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def key(self, role: str) -> Path:
        return self.keys / f"{role}.pem"

    def target(self, sha256: str, target_path: str) -> Path:
        """Where TUF's consistent snapshots put ``target_path``: ``<dir>/<sha256>.<name>``."""
        return self.targets / target_url_path(sha256, target_path)

    def legacy_target(self, sha256: str, target_path: str) -> Path:
        """The flat ``<sha256>.<name>`` that clients before the spec layout fetch."""
        return self.targets / f"{sha256}.{target_path.rsplit('/', 1)[-1]}"

    def stored_target(self, sha256: str, target_path: str) -> Path:
        """A target's stored bytes: its spec-layout path (the flat one before migration)."""
        path = self.target(sha256, target_path)
        if not path.exists():
            legacy = self.legacy_target(sha256, target_path)
            if legacy.exists():
                return legacy
        return path

    def link_both(self, sha256: str, target_path: str) -> int | None:
        """Hard-link a stored target at both its paths (spec layout and flat): the links
        made, or None when neither path holds it."""
        new, old = self.target(sha256, target_path), self.legacy_target(sha256, target_path)
        src = new if new.exists() else old if old.exists() else None
        if src is None:
            return None
        return sum(1 for dest in (new, old) if dest != src and link(src, dest))

    def read_config(self) -> dict[str, Any]:
        """Raises NotARepositoryError unless ``root`` holds a channel repository."""
        if not self.root.is_dir():
            raise NotARepositoryError(f"{self.root}: no such directory")
        try:
            cfg = json.loads(self.config.read_bytes())
        except FileNotFoundError:
            raise NotARepositoryError(
                f"{self.root}: not a channel repository (no {CONFIG_NAME}; "
                "create one with 'tidehost channel init')"
            ) from None
        except UnicodeDecodeError as e:
            raise NotARepositoryError(f"{self.config}: not UTF-8 ({e.reason} at byte "
                                      f"{e.start})") from None
        except (OSError, ValueError) as e:
            raise NotARepositoryError(f"{self.config}: unreadable ({e})") from None
        if not isinstance(cfg, dict) or cfg.get("kind") != CONFIG_KIND:
            raise NotARepositoryError(f"{self.config}: not a {CONFIG_KIND} file")
        if cfg.get("format") != CONFIG_FORMAT:
            raise NotARepositoryError(f"{self.config}: format {cfg.get('format')!r} unknown")
        if not (self.metadata / "timestamp.json").is_file():
            raise NotARepositoryError(f"{self.root}: published/metadata/timestamp.json is missing")
        return cfg


def target_url_path(sha256: str, target_path: str) -> str:
    """``beta/x.img`` -> ``beta/<sha256>.x.img``: the target's path under ``targets/``."""
    head, _, name = target_path.rpartition("/")
    return f"{head}/{sha256}.{name}" if head else f"{sha256}.{name}"


def link(src: Path, dest: Path) -> bool:
    """Make ``dest`` a hard link to ``src`` (atomically: a temporary name, then rename).

    Returns False when ``dest`` already holds the same file. Falls back to a copy where the
    filesystem has no hard links (then the bytes are stored twice).
    """
    if dest.exists() and os.path.samefile(src, dest):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory + rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
