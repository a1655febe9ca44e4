"""The client side of a channel: what the on-host updater (and ``channel check``) uses.

``ChannelClient`` refreshes TUF metadata from the repository (root -> timestamp -> snapshot
-> targets -> the channel's role), reads the channel index through it, decides with
``channels.policy`` what this host is offered, and downloads a release into a cache under
the state directory with HTTP Range resume. Files are checked against the signed length and
hashes before a single byte of them is placed in the caller's directory.

Imports only the stdlib, requests, tuf, securesystemslib (and cryptography, yaml through them):
this module runs on the host image.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from channels.bundle import MANIFEST, Manifest, load_bundle
from channels.errors import (
    BundleError,
    ChannelError,
    ChannelIndexError,
    DownloadSizeError,
    ExpiredMetadataError,
    HTTPStatusError,
    MetadataVerificationError,
    RollbackError,
    SignatureError,
    SlowRetrievalError,
    StateError,
    TargetVerificationError,
    TransportError,
)
from channels.fetch import DEFAULT_MIN_RATE, RequestsFetcher, download_resumable, new_session
from channels.index import (
    ChannelIndex,
    Release,
    bundle_files,
    check_channel,
    index_path,
)
from channels.layout import target_url_path
from channels.offer import (  # noqa: F401 - re-exported: the names importers use
    Offer,
    OfferedFile,
)
from channels.policy import Decision, decide
from channels.version import Version

log = logging.getLogger(__name__)
R = TypeVar("R")
_INDEX_MAX = 16 << 20
_HAS_BOOTSTRAP = "bootstrap" in inspect.signature(Updater.__init__).parameters


def _translate(what: str, e: Exception) -> ChannelError:
    msg = f"{what}: {e}"
    if isinstance(e, tuf_exc.ExpiredMetadataError):
        return ExpiredMetadataError(msg + " (stale repository or freeze attack)")
    if isinstance(e, tuf_exc.BadVersionNumberError):
        return RollbackError(msg + " (older than what this host already trusts: rollback)")
    if isinstance(e, tuf_exc.UnsignedMetadataError):
        return SignatureError(msg + " (not signed by the role's trusted key)")
    if isinstance(e, tuf_exc.RepositoryError):
        return MetadataVerificationError(msg)
    if isinstance(e, tuf_exc.DownloadLengthMismatchError):
        return DownloadSizeError(msg + " (longer than allowed)")
    if isinstance(e, tuf_exc.SlowRetrievalError):
        return SlowRetrievalError(msg)
    if isinstance(e, tuf_exc.DownloadHTTPError):
        return HTTPStatusError(msg, e.status_code)
    if isinstance(e, tuf_exc.DownloadError):
        return TransportError(msg)
    if isinstance(e, OSError):
        return StateError(f"{what}: {e.filename or ''} {e.strerror or e}".strip())
    if isinstance(e, ChannelError):
        return e
    return MetadataVerificationError(msg)


class ChannelClient:
    """A host's view of one channel of one repository.

    ``state_dir`` holds ``metadata/`` (the trusted TUF metadata, so a later replay of older
    metadata is caught) and ``cache/`` (verified and partial downloads).

    ``timeout`` bounds every read and is the floor of every file's whole-file deadline,
    ``timeout + length / min_rate`` seconds (``length``: the signed length, or the client's
    maximum for timestamp.json and N.root.json); past it the fetch fails with
    ``SlowRetrievalError`` (a partial target is kept and resumed next time).
    """

    def __init__(self, base_url: str, channel: str, state_dir: Path, root_json: Path | bytes,
                 *, timeout: float = 30.0, min_rate: float = DEFAULT_MIN_RATE) -> None:
        self.channel = check_channel(channel)
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.state_dir = Path(state_dir)
        if not timeout > 0 or not min_rate > 0:
            raise ChannelError(f"timeout {timeout!r} and min_rate {min_rate!r} must be > 0")
        self.timeout = timeout
        self.min_rate = min_rate
        self.session = new_session()
        self._fetcher = RequestsFetcher(self.session, self.timeout, self.min_rate)
        self.last_decision: Decision | None = None
        self._updater: Updater | None = None
        self._index: ChannelIndex | None = None
        self._metadata = self.state_dir / "metadata"
        self.cache = self.state_dir / "cache"
        try:
            self._metadata.mkdir(parents=True, exist_ok=True)
            self.cache.mkdir(exist_ok=True)
            trusted = self._metadata / "root.json"
            if not trusted.exists():
                data = root_json if isinstance(root_json, bytes) else Path(root_json).read_bytes()
                tmp = trusted.with_suffix(".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, trusted)
        except OSError as e:
            raise StateError(f"{e.filename}: {e.strerror}") from None

    # --- metadata ---------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., R], *args: Any) -> R:
        self._fetcher.last_url = None
        try:
            return fn(*args)
        except tuf_exc.RepositoryError as e:  # name the file: tuf's text may not
            last = self._fetcher.last_url
            name = last.rsplit("/", 1)[-1] if last else None
            raise _translate(f"{what}: {name}" if name and name not in str(e) else what,
                             e) from None
        except (tuf_exc.DownloadError, OSError) as e:
            raise _translate(what, e) from None
        except ValueError as e:  # malformed local root or metadata
            raise MetadataVerificationError(f"{what}: {e}") from None

    def _new_updater(self) -> Updater:
        kwargs: dict[str, Any] = {}
        if _HAS_BOOTSTRAP:  # tuf >= 6
            kwargs["bootstrap"] = (self._metadata / "root.json").read_bytes()
        return Updater(
            str(self._metadata), self.base_url + "metadata/", str(self.cache),
            self.base_url + "targets/", self._fetcher,
            UpdaterConfig(), **kwargs,
        )

    def refresh(self) -> ChannelIndex:
        """Refresh trusted metadata and return the verified channel index.

        Raises:
            VerificationError: (subclasses) bad signature, expiry, rollback, hash, index.
            TransportError: (subclasses) the repository could not be reached or misbehaved.
        """
        where = f"channel {self.channel} at {self.base_url}"
        updater = self._call(where, self._new_updater)
        self._call(where, updater.refresh)
        self._updater = updater
        path = index_path(self.channel)
        tf = self._call(where, updater.get_targetinfo, path)
        if tf is None:
            log.info("%s: role %s lists no index yet (empty channel)", where, self.channel)
            index = ChannelIndex(self.channel)
        else:
            if tf.length > _INDEX_MAX:
                raise ChannelIndexError(f"{path}: {tf.length} bytes is too large for an index")
            cached = self.fetch_target(tf)
            index = ChannelIndex.from_bytes(cached.read_bytes(), self.channel)
            self._prune("*.index.json", keep={cached.name})
        self._index = index
        return index

    def _prune(self, pattern: str, keep: set[str]) -> None:
        for p in self.cache.glob(pattern):
            if p.name not in keep:
                p.unlink(missing_ok=True)

    def target(self, path: str) -> TargetFile:
        """The signed target info of ``path`` (ChannelIndexError if the role does not sign it)."""
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        tf = self._call(f"target {path}", self._updater.get_targetinfo, path)
        if tf is None:
            raise ChannelIndexError(
                f"{index_path(self.channel)} lists {path}, which role {self.channel} does not sign"
            )
        return tf

    # --- deciding ---------------------------------------------------------------------

    def offer(self, machine_id: str, current_version: str, now: datetime | None = None,
              ) -> Offer | None:
        """Refresh; the newest release this host may take now, or None (see ``last_decision``).

        Raises:
            ChannelError: as ``refresh``; ``ChannelIndexError`` for a release whose files are
                not signed by this channel's role or disagree with its manifest.
        """
        try:
            Version.parse(current_version)
        except ValueError as e:
            raise ChannelError(f"current version: {e}") from None
        index = self.refresh()
        decision = decide(index, machine_id, current_version, now or datetime.now(UTC))
        self.last_decision = decision
        log.info("channel %s: %s", self.channel, decision.reason)
        if decision.release is None:
            return None
        return self._offer(decision.release, decision)

    def _offer(self, rel: Release, d: Decision) -> Offer:
        files = []
        for fname in bundle_files(rel.manifest.format):
            tf = self.target(rel.files[fname])
            if "sha256" not in tf.hashes:
                raise ChannelIndexError(f"target {tf.path}: signed without a sha256")
            info = rel.manifest.files.get(fname)
            if info is not None and (info.sha256 != tf.hashes["sha256"] or info.size != tf.length):
                raise ChannelIndexError(
                    f"{index_path(self.channel)}: release {rel.version} manifest says {fname} is "
                    f"{info.size} bytes {info.sha256[:12]}, role {self.channel} signed "
                    f"{tf.length} bytes {tf.hashes['sha256'][:12]}"
                )
            files.append(OfferedFile(fname, tf.path, tf.length, dict(tf.hashes)))
        assert d.position is not None and d.open_percent is not None
        return Offer(
            version=rel.version, manifest=rel.manifest, channel=self.channel,
            files=tuple(files), reason=d.reason, position=d.position,
            open_percent=d.open_percent, barrier=d.barrier, min_version=rel.min_version,
            published=rel.published, indexes=dict(rel.indexes), verity=rel.verity,
        )

    # --- downloading ------------------------------------------------------------------

    def _cached(self, sha256: str, target: str) -> Path:
        return self.cache / f"{sha256}.{target.rsplit('/', 1)[-1]}"

    def cached_path(self, tf: TargetFile) -> Path:
        """Where a verified target is kept in the cache (``fetch_target`` finds it there)."""
        return self._cached(tf.hashes["sha256"], tf.path)

    def offered_target(self, f: OfferedFile) -> TargetFile:
        """``f``'s signed target info, which must still be what the offer said."""
        tf = self.target(f.target)
        if tf.length != f.length or dict(tf.hashes) != dict(f.hashes):
            raise ChannelIndexError(f"target {f.target}: changed since the offer; re-check")
        return tf

    def fetch_target(self, tf: TargetFile, progress: Callable[[int], None] | None = None,
                        ) -> Path:
        """Download (resuming) and verify one target into the cache; return its path."""
        sha = tf.hashes.get("sha256")
        if sha is None:
            raise ChannelIndexError(f"target {tf.path}: signed without a sha256")
        done = self._cached(sha, tf.path)
        if done.exists():
            if self.verifies(tf, done):
                if progress:
                    progress(tf.length)
                return done
            done.unlink()
        part = done.with_name(done.name + ".part")
        # TUF's consistent-snapshot layout: targets/<dir>/<sha256>.<name>; a repository not
        # yet migrated by `channel refresh` has only the flat targets/<sha256>.<name>
        url = f"{self.base_url}targets/{target_url_path(sha, tf.path)}"
        flat = f"{self.base_url}targets/{sha}.{tf.path.rsplit('/', 1)[-1]}"
        try:
            try:
                download_resumable(self.session, url, part, tf.length, self.timeout, progress,
                                   label=f"target {tf.path} from {url}", min_rate=self.min_rate)
            except HTTPStatusError as e:
                if e.status_code != 404 or flat == url:
                    raise
                url = flat
                download_resumable(self.session, url, part, tf.length, self.timeout, progress,
                                   label=f"target {tf.path} from {url}", min_rate=self.min_rate)
        except OSError as e:
            raise StateError(f"{part}: {e.strerror}") from None
        if not self.verifies(tf, part):
            part.unlink(missing_ok=True)
            raise TargetVerificationError(
                f"target {tf.path} from {url}: length or sha256 differs from what role "
                f"{tf.path.split('/')[0]} signed (tampered?); discarded"
            )
        os.replace(part, done)
        return done

    @staticmethod
    def verifies(tf: TargetFile, path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                tf.verify_length_and_hashes(f)
        except tuf_exc.LengthOrHashMismatchError:
            return False
        return True

    def download(self, offer: Offer, dest_dir: Path,
                 progress: Callable[[int, int], None] | None = None) -> Path:
        """Fetch and verify every file of ``offer``; return ``dest_dir/<name>-<version>.release``.

        ``progress(done, total)`` is called as bytes arrive. Interrupted downloads resume on
        the next call. Nothing unverified is ever placed under ``dest_dir``.

        Raises:
            TargetVerificationError: a file does not match the signed length/hashes.
            ChannelIndexError: the manifest file differs from the index's manifest.
            TransportError: a download failed (call again to resume).
        """
        if self._updater is None:
            self.refresh()
        total = offer.size
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total)

        self.prune_partials(offer)
        verified = {f.name: self.fetch_target(self.offered_target(f), step) for f in offer.files}
        return self.finish(offer, verified, Path(dest_dir))

    def prune_partials(self, offer: Offer) -> None:
        """Drop partial downloads of any other release (pulled or superseded)."""
        mine = {self._cached(f.sha256, f.target).name for f in offer.files}
        self._prune("*.part", keep={n + ".part" for n in mine})

    def finish(self, offer: Offer, verified: dict[str, Path], dest_dir: Path) -> Path:
        """Check the verified files' manifest against the offer and move them into
        ``dest_dir/<name>-<version>.release`` (the last step of ``download``)."""
        try:
            got = Manifest.from_json(verified[MANIFEST].read_bytes())
        except BundleError as e:
            raise ChannelIndexError(f"target {offer.files[0].target}: {e}") from None
        if got.to_dict() != offer.manifest.to_dict():
            raise ChannelIndexError(
                f"{offer.channel} {offer.version}: manifest.json differs from the index's manifest"
            )
        return self._assemble(offer, verified, Path(dest_dir))

    def _assemble(self, offer: Offer, verified: dict[str, Path], dest_dir: Path) -> Path:
        final = dest_dir / offer.manifest.bundle_name
        staging = dest_dir / f".{final.name}.partial-{os.getpid()}"
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            for name, src in verified.items():
                try:
                    os.link(src, staging / name)
                except OSError:
                    shutil.copyfile(src, staging / name)
            if final.exists():
                old = dest_dir / f".{final.name}.old-{os.getpid()}"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging, final)
            for src in verified.values():
                src.unlink(missing_ok=True)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise StateError(f"{dest_dir}: cannot assemble {final.name} ({e.strerror})") from None
        load_bundle(final, verify=False)
        log.info("downloaded and verified %s into %s", offer.version, final)
        return final
