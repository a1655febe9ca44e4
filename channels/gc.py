"""``channel gc``: remove the targets and chunks no listed release of any channel uses.

What is kept, under the repository lock (no publish runs meanwhile):

- every target that a channel's role signs now, at both its names: the spec layout's
  ``targets/<channel>/<sha256>.<name>`` and the flat ``targets/<sha256>.<name>`` that
  clients before that layout fetch (a flat name stays exactly as long as a listed target of
  that hash and name does). A role signs the current ``index.json`` and the files and
  ``.caibx`` indexes of every release its index lists, *pulled ones included*: a pulled
  release is never offered again, but it is still listed and signed (nothing un-lists it), so
  its bytes stay and the repository stays whole for any TUF client or mirror that fetches
  every listed target;
- every chunk that one of those ``.caibx`` indexes names; each index is read from the
  repository and checked against its signed length and sha256 first; if one cannot be read
  or checked, nothing at all is removed (gc never guesses what a listed release needs);
- anything younger than ``grace`` seconds (default an hour): a client that refreshed its
  metadata just before a publish may still fetch the ``index.json`` that was just replaced.

What goes: the channel indexes every publish, promote, pause, ... replaced, chunks and files
of publishes that failed before signing, targets no role lists any more, stale temporary
files. ``published/metadata`` and the Vagrant box catalogs are not touched.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tuf.api.exceptions import LengthOrHashMismatchError

from channels.bundle import CHANNELS
from channels.casync.index import BlobIndex
from channels.casync.store import ChunkStore
from channels.errors import CasyncIndexError, NotARepositoryError
from channels.index import INDEX_SUFFIX
from channels.layout import target_url_path
from channels.repository import TufRepository

log = logging.getLogger(__name__)
DEFAULT_GRACE = 3600.0
_TARGET_NAME = re.compile(r"^[0-9a-f]{64}\.")
_TEMP = re.compile(r"^\..+|.+\.tmp$")


@dataclass(frozen=True)
class GcStats:
    kept_targets: int = 0
    removed_targets: int = 0
    removed_target_bytes: int = 0
    kept_chunks: int = 0
    removed_chunks: int = 0
    removed_chunk_bytes: int = 0
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (f"{verb} {self.removed_targets} target files ({self.removed_target_bytes} "
                f"bytes) and {self.removed_chunks} chunks ({self.removed_chunk_bytes} bytes); "
                f"kept {self.kept_targets} target files and {self.kept_chunks} chunks")


def listed(tuf: TufRepository) -> tuple[set[str], set[str]]:
    """The target files (paths under ``targets/``) and chunk ids that listed releases use.

    Raises:
        NotARepositoryError: a listed ``.caibx`` is missing, damaged or unreadable.
    """
    keep: set[str] = set()
    chunks: set[str] = set()
    for chan in CHANNELS:
        for tf in tuf.channels[chan].signed.targets.values():
            sha = tf.hashes.get("sha256")
            if sha is None:
                continue
            keep.add(target_url_path(sha, tf.path))
            keep.add(f"{sha}.{tf.path.rsplit('/', 1)[-1]}")
            if not tf.path.endswith(INDEX_SUFFIX):
                continue
            path = tuf.target_file(tf)
            try:
                with open(path, "rb") as f:
                    tf.verify_length_and_hashes(f)
                index = BlobIndex.read(path, max_bytes=tf.length)
            except (OSError, LengthOrHashMismatchError, CasyncIndexError) as e:
                raise NotARepositoryError(f"{path}: cannot tell which chunks {tf.path} needs "
                                          f"({e}); nothing removed") from None
            chunks.update(c.id for c in index.chunks)
    return keep, chunks


def _old(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _remove(path: Path, dry_run: bool) -> int:
    try:
        size = path.lstat().st_size
        if not dry_run:
            path.unlink()
    except FileNotFoundError:
        return 0
    return size


def collect(tuf: TufRepository, *, grace: float = DEFAULT_GRACE, dry_run: bool = False,
            now: float | None = None) -> GcStats:
    """Remove (or with ``dry_run`` only count) what no listed release uses; see the module.

    Raises:
        NotARepositoryError: as ``listed``; then nothing is removed.
    """
    keep, needed = listed(tuf)
    cutoff = (time.time() if now is None else now) - grace
    targets = tuf.layout.targets
    kept_t = removed_t = removed_tb = 0
    for dirpath, _, names in os.walk(targets):
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(targets).as_posix()
            if rel in keep:
                kept_t += 1
            elif (_TARGET_NAME.match(name) or _TEMP.match(name)) and _old(path, cutoff):
                removed_tb += _remove(path, dry_run)
                removed_t += 1
                log.info("gc: %s targets/%s", "would remove" if dry_run else "removing", rel)
    store = ChunkStore(tuf.layout.chunks)
    kept_c = removed_c = removed_cb = 0
    for cid in store.ids():
        if cid in needed:
            kept_c += 1
            continue
        old = [p for p in (store.path(cid), store.path(cid).with_suffix(""))
               if p.exists() and _old(p, cutoff)]
        removed_cb += sum(_remove(p, dry_run) for p in old)
        removed_c += bool(old)
    if store.root.is_dir():  # interrupted writes: <id>.<random>.tmp
        for path in store.root.glob("????/*.tmp"):
            if _old(path, cutoff):
                removed_cb += _remove(path, dry_run)
        for sub in store.root.iterdir():
            if sub.is_dir() and not dry_run and not any(sub.iterdir()):
                sub.rmdir()
    stats = GcStats(kept_t, removed_t, removed_tb, kept_c, removed_c, removed_cb, dry_run)
    log.info("gc: %s", stats.summary())
    return stats


__all__ = ["DEFAULT_GRACE", "GcStats", "NotARepositoryError", "collect", "listed"]
