"""A build's epoch and id, from its inputs: the same inputs give the same /usr, byte for byte.

The epoch is ``SOURCE_DATE_EPOCH`` when the environment sets it (reproducible-builds.org:
CI sets it to the commit's time), otherwise the newest modification time among the build's
inputs: the root tree as restored from the cache, the toolkit's own sources (whose code
writes much of the image), the overlay and the channel root. It stamps /usr (every newer
time in it is clamped to it) and ROOT's ``/etc/.updated``: a release made from newer inputs
has a newer /usr, so ``ConditionNeedsUpdate=`` units (the factory /etc copy, ldconfig) run on
its first boot, and a rebuild of the same inputs is the same image.

The build id is the epoch as a UTC time plus a digest of the inputs (every path, size, mode
and time of the tree and sources, and the image file's settings), so it names a build's
inputs rather than the moment it ran.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from imagebuild.core.errors import ConfigError
from imagebuild.core.files import package_dir
from imagebuild.image.config import ImageConfig

TOOLKIT = ("imagebuild", "updater", "channels")  # what writes the image besides Debian
_SKIP = ("__pycache__",)


@dataclass(frozen=True)
class Inputs:
    newest: int  # seconds
    digest: str  # sha256 hex


def scan(roots: Iterable[Path]) -> Inputs:
    """The newest mtime and a digest of every entry's path, size, mode and mtime under
    ``roots`` (files or folders; symlinks are not followed, ``__pycache__`` is skipped)."""
    h = hashlib.sha256()
    newest = 0
    for n, root in enumerate(roots):
        if not os.path.lexists(root):
            continue
        for path in _walk(Path(root)):
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            h.update(f"{n}\0{rel}\0{st.st_size}\0{st.st_mode:o}\0{int(st.st_mtime)}\n".encode())
            newest = max(newest, int(st.st_mtime))
    return Inputs(newest, h.hexdigest())


def _walk(root: Path) -> Iterable[str]:
    """A file root itself; a folder's entries, not the folder (made by the build: its time
    is the build's)."""
    if root.is_symlink() or not root.is_dir():
        yield str(root)
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP)
        for name in sorted(dirnames + [f for f in filenames if not f.endswith(".pyc")]):
            yield os.path.join(dirpath, name)


def env_epoch(raw: str | None) -> int | None:
    """``SOURCE_DATE_EPOCH`` from the environment: None when unset.

    Raises:
        ConfigError: not a whole number of seconds from 0 to 2**32 - 1.
    """
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or int(raw) >= 1 << 32:
        raise ConfigError(f"SOURCE_DATE_EPOCH: {raw!r} is not a whole number of seconds "
                          "since 1970 (0 to 4294967295)")  # fmt: skip
    return int(raw)


def build_inputs(config: ImageConfig, tree: Path) -> list[Path]:
    """What the build reads besides the image file's settings."""
    roots = [tree, *(package_dir(p) for p in TOOLKIT)]
    roots += [p for p in (config.overlay, config.channel_root) if p is not None]
    return roots


def settings_text(config: ImageConfig) -> str:
    """The image file's settings, without where they came from and which disk formats are
    made of the image (pure)."""
    fields = {k: v for k, v in vars(config).items() if k not in ("source", "formats")}
    return repr(sorted(fields.items()))


def epoch_and_build_id(config: ImageConfig, tree: Path, env: str | None) -> tuple[int, str]:
    """The build's epoch and id (see the module's docstring)."""
    inputs = scan(build_inputs(config, tree))
    epoch = env_epoch(env)
    epoch = inputs.newest if epoch is None else epoch
    digest = hashlib.sha256(f"{inputs.digest}\0{epoch}\0{settings_text(config)}".encode())
    stamp = datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%dT%H%M%SZ")
    return epoch, f"{stamp}-{digest.hexdigest()[:8]}"
