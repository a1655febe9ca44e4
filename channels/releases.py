"""Release operations on a channel repository: publish, promote, rollout, pause, resume, pull.

Each operation reads the channel index (a target of the channel's role), changes it, writes
the new index and any new payload targets, and commits the signed metadata (timestamp last).
Payload targets are stored in TUF's consistent-snapshot layout (``targets/<channel>/<sha256>.
<name>``), one copy of the bytes per hash: promotion re-lists the same hashes under the next
channel's role and hard-links the file into that channel's directory, so it copies no bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import TargetFile

from channels import verity
from channels.bundle import CHANNELS, MANIFEST, load_bundle
from channels.casync.chunker import Cutter
from channels.chunking import ChunkStats, chunk_bundle, index_target, tree_params
from channels.errors import BundleError, NotARepositoryError, ReleaseError
from channels.index import (
    ChannelIndex,
    Release,
    bundle_files,
    check_channel,
    index_path,
    target_path,
)
from channels.layout import atomic_write, fsync_dir, link
from channels.repository import TufRepository
from channels.rollout import IMMEDIATE, RolloutPlan, Wave, iso_time
from channels.ukicheck import check_ukis
from channels.version import Version

log = logging.getLogger(__name__)
_CHUNK = 4 << 20


@dataclass(frozen=True)
class CopyStats:
    bytes_copied: int = 0  # payload bytes written into the published tree
    bytes_reused: int = 0  # payload bytes already there (same hash)
    chunks: ChunkStats | None = None  # publish: what the chunk store gained


def _store(src: Path, dest: Path, sha256: str, size: int) -> int:
    """Copy ``src`` to ``dest`` while hashing it; refuse it unless it matches. Returns bytes."""
    if dest.is_file() and dest.stat().st_size == size:
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    h = hashlib.sha256()
    n = 0
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while block := fin.read(_CHUNK):
                h.update(block)
                fout.write(block)
                n += len(block)
            fout.flush()
            os.fsync(fout.fileno())
        if n != size:
            raise BundleError(f"{src}: size {n} does not match the manifest's {size}")
        if h.hexdigest() != sha256:
            raise BundleError(f"{src}: sha256 does not match the manifest")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


class ChannelRepository:
    """The release engineer's operations; wraps an open ``TufRepository``."""

    def __init__(self, tuf: TufRepository) -> None:
        self.tuf = tuf

    @property
    def now(self) -> datetime:
        return self.tuf.clock()

    # --- reading ----------------------------------------------------------------------

    def index(self, channel: str) -> ChannelIndex:
        check_channel(channel)
        role = self.tuf.channels[channel].signed
        tf = role.targets.get(index_path(channel))
        if tf is None:
            return ChannelIndex(channel)
        path = self.tuf.target_file(tf)
        try:
            with open(path, "rb") as f:
                tf.verify_length_and_hashes(f)
                f.seek(0)
                data = f.read()
        except OSError as e:
            raise NotARepositoryError(f"{path}: channel index unreadable ({e})") from None
        except LengthOrHashMismatchError as e:
            raise NotARepositoryError(f"{path}: channel index damaged ({e})") from None
        return ChannelIndex.from_bytes(data, channel)

    def release(self, channel: str, version: str) -> Release:
        _check_version(version)
        r = self.index(channel).get(version)
        if r is None:
            raise ReleaseError(f"channel {channel} has no release {version}")
        return r

    # --- writing ----------------------------------------------------------------------

    def _check_newer(self, index: ChannelIndex, version: str) -> None:
        if index.get(version) is not None:
            raise ReleaseError(f"channel {index.channel} already has release {version}")
        cur = index.current
        if cur is not None and Version.parse(version) <= cur.parsed_version:
            raise ReleaseError(
                f"version {version} is not newer than channel {index.channel}'s current "
                f"{cur.version}; versions only go forward (pull {cur.version} to withdraw it)"
            )

    def _write_index(self, index: ChannelIndex) -> None:
        data = index.to_bytes()
        sha = hashlib.sha256(data).hexdigest()
        path = index_path(index.channel)
        dest = self.tuf.layout.target(sha, path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, data)
        self.tuf.channel(index.channel).targets[path] = TargetFile(
            len(data), {"sha256": sha}, path
        )

    def _save(self, index: ChannelIndex) -> None:
        self.tuf.channel(index.channel)  # key check before writing anything
        self._write_index(index)
        fsync_dir(self.tuf.layout.targets)
        self.tuf.commit()

    def publish(self, bundle: Path, channel: str, *, waves: tuple[Wave, ...] = IMMEDIATE,
                min_version: str | None = None, cutter: Cutter | None = None,
                ) -> tuple[Release, CopyStats]:
        """Add the bundle at ``bundle`` to ``channel`` as its newest release: its files, and
        the chunks and ``.caibx`` indexes of usr.img, vmlinuz, initrd (``channels.chunking``;
        ``cutter``: the chunker's scanner, by default ``chunker.default_cutter()``).

        Raises:
            BundleError: the bundle is malformed or a file does not match its manifest.
            ReleaseError: the version is not newer than the channel's current release.
        """
        check_channel(channel)
        manifest = load_bundle(Path(bundle), verify=False)
        if min_version is not None:
            _check_version(min_version)
        index = self.index(channel)
        self._check_newer(index, manifest.version)
        role = self.tuf.channel(channel)  # fails early on a missing key or passphrase
        if manifest.channel != channel:
            log.info("bundle was built for %s, publishing to %s", manifest.channel, channel)
        mbytes = (Path(bundle) / MANIFEST).read_bytes()
        sizes = {MANIFEST: (hashlib.sha256(mbytes).hexdigest(), len(mbytes))}
        sizes.update({f: (i.sha256, i.size) for f, i in manifest.files.items()})
        names = bundle_files(manifest.format)
        for fname in names:  # cheap checks first: nothing is written on a bad bundle
            path = Path(bundle) / fname
            if not path.is_file():
                raise BundleError(f"{path}: missing from the bundle")
            if path.stat().st_size != sizes[fname][1]:
                raise BundleError(f"{path}: size {path.stat().st_size} does not match the "
                                  f"manifest's {sizes[fname][1]}")
        verity.check_bundle(Path(bundle), manifest.roothash)  # the tree matches the data
        check_ukis(Path(bundle), manifest, (r.manifest for r in index.releases), channel)
        copied = reused = 0
        files: dict[str, str] = {}
        for fname in names:
            sha, size = sizes[fname]
            tpath = target_path(channel, manifest, fname)
            n = _store(Path(bundle) / fname, self.tuf.layout.target(sha, tpath), sha, size)
            copied += n
            reused += size - n
            files[fname] = tpath
            role.targets[tpath] = TargetFile(size, {"sha256": sha}, tpath)
        indexes, chunks = chunk_bundle(self.tuf.layout, Path(bundle), manifest, channel,
                                       cutter=cutter)
        for tf in indexes.values():
            role.targets[tf.path] = tf
        release = Release(
            version=manifest.version, manifest=manifest, files=files,
            rollout=RolloutPlan(self.now, waves), published=self.now, min_version=min_version,
            indexes={f: tf.path for f, tf in indexes.items()},
            verity=tree_params(Path(bundle), manifest.roothash),
        )
        self._save(index.with_release(release))
        log.info("published %s to %s (%d bytes copied)", manifest.version, channel, copied)
        return release, CopyStats(copied, reused, chunks)

    def promote(self, version: str, src: str, dst: str, *,
                waves: tuple[Wave, ...] = IMMEDIATE) -> tuple[Release, CopyStats]:
        """List ``src``'s release ``version`` in ``dst`` too: the same target hashes.

        Raises:
            ReleaseError: no such release, it is pulled, the order is not forward, or it is
                not newer than ``dst``'s current release.
        """
        check_channel(src)
        check_channel(dst)
        if CHANNELS.index(dst) <= CHANNELS.index(src):
            raise ReleaseError(f"promotion goes {' -> '.join(CHANNELS)}; not {src} -> {dst}")
        rel = self.release(src, version)
        if rel.pulled:
            raise ReleaseError(f"release {version} was pulled from {src}; not promoting it")
        dindex = self.index(dst)
        self._check_newer(dindex, version)
        src_targets = self.tuf.channels[src].signed.targets
        role = self.tuf.channel(dst)
        files: dict[str, str] = {}
        indexes: dict[str, str] = {}
        reused = copied = 0
        listed = [(files, f, p, target_path(dst, rel.manifest, f)) for f, p in rel.files.items()]
        listed += [(indexes, f, p, index_target(dst, rel.manifest, f))
                   for f, p in rel.indexes.items()]  # the chunks are shared: nothing to copy
        for out, fname, spath, dpath in listed:
            tf = src_targets.get(spath)
            if tf is None:
                raise NotARepositoryError(f"role {src} does not list {spath} (index says so)")
            stored = self.tuf.target_file(tf)
            if not stored.is_file():
                raise NotARepositoryError(f"{stored}: target of {spath} is missing")
            dest = self.tuf.layout.target(tf.hashes["sha256"], dpath)
            link(stored, dest)  # the same bytes under the next channel's directory
            if os.path.samefile(stored, dest):
                reused += tf.length
            else:  # a filesystem without hard links
                copied += tf.length
            role.targets[dpath] = TargetFile(tf.length, dict(tf.hashes), dpath)
            out[fname] = dpath
        promoted = replace(
            rel, files=files, indexes=indexes, rollout=RolloutPlan(self.now, waves),
            published=self.now, pulled=False,
        )
        self._save(dindex.with_release(promoted))
        log.info("promoted %s from %s to %s", version, src, dst)
        return promoted, CopyStats(copied, reused)

    def _update(self, channel: str, version: str, change: str) -> Release:
        rel = self.release(channel, version)
        plan = rel.rollout
        if rel.pulled and change != "pull":
            raise ReleaseError(f"{channel} {version}: was pulled; publish a newer version")
        if change == "pause":
            if plan.paused:
                raise ReleaseError(f"{channel} {version}: rollout is already paused")
            new = replace(rel, rollout=plan.pause(self.now))
        elif change == "resume":
            if not plan.paused:
                raise ReleaseError(f"{channel} {version}: rollout is not paused")
            new = replace(rel, rollout=plan.resume(self.now))
        else:
            if rel.pulled:
                raise ReleaseError(f"{channel} {version}: already pulled")
            new = replace(rel, pulled=True)
        self._save(self.index(channel).with_release(new))
        return new

    def pause(self, channel: str, version: str) -> Release:
        return self._update(channel, version, "pause")

    def resume(self, channel: str, version: str) -> Release:
        return self._update(channel, version, "resume")

    def pull(self, channel: str, version: str) -> Release:
        return self._update(channel, version, "pull")

    def rollout(self, channel: str, version: str, waves: tuple[Wave, ...],
                start: datetime | None = None) -> Release:
        """Give ``version`` a new plan starting at ``start`` (now by default), unpaused."""
        rel = self.release(channel, version)
        if rel.pulled:
            raise ReleaseError(f"{channel} {version}: was pulled; publish a newer version")
        new = replace(rel, rollout=RolloutPlan(start or self.now, waves))
        self._save(self.index(channel).with_release(new))
        return new

    def status(self) -> dict[str, Any]:
        now = self.now
        out: dict[str, Any] = {"repository": str(self.tuf.layout.root), "now": iso_time(now),
                               "roles": self.tuf.describe(), "channels": {}}
        for chan in CHANNELS:
            rels = []
            for r in self.index(chan).releases:
                d = {
                    "version": r.version, "pulled": r.pulled, "paused": r.rollout.paused,
                    "min_version": r.min_version, "published": iso_time(r.published),
                    "waves": ",".join(str(w) for w in r.rollout.waves),
                    "rollout_start": iso_time(r.rollout.start),
                    "open_percent": r.rollout.open_percent(now),
                    "size": sum(i.size for i in r.manifest.files.values()),
                }
                rels.append(d)
            cur = self.index(chan).current
            out["channels"][chan] = {"current": cur.version if cur else None, "releases": rels}
        return out


def _check_version(text: str) -> None:
    try:
        Version.parse(text)
    except ValueError as e:
        raise ReleaseError(str(e)) from None
