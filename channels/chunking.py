"""Publishing a release's chunks: usr.img, vmlinuz and initrd cut into casync chunks.

``chunk_bundle`` runs inside ``ChannelRepository.publish``: each chunked file
(``index.chunked_files``) is cut with casync's chunker (``channels.casync``), its chunks go
once into the repository's one store ``published/chunks.castr/`` (``<4 hex>/<id>.cacnk``,
zstd; a chunk already there is not written again, so a release that differs from the last
one by a version string adds a few hundred KB), and its ``.caibx`` index becomes a target
of the channel's role, ``<channel>/<name>-<version>.<file>.caibx``: its length and hash are
signed like every other file's. The full files stay targets: the fallback of every host,
and what a client that predates chunks fetches.

``tree_params`` reads the release's verity superblock (salt, uuid, algorithm, block size):
published in the channel index, it lets a host rebuild usr.verity from the assembled
usr.img instead of fetching it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import TargetFile

from channels import verity
from channels.bundle import Manifest
from channels.casync.chunker import DEFAULT_PARAMS, ChunkerParams, Cutter
from channels.casync.make import make_blob
from channels.casync.store import ChunkStore
from channels.errors import BundleError, VerityError
from channels.index import INDEX_SUFFIX, TreeParams, chunked_files, target_path
from channels.layout import Layout, atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkStats:
    """What publishing the chunks of one release did."""

    chunks: int = 0  # in the release's indexes
    total_bytes: int = 0  # of the chunked files
    new_chunks: int = 0  # not in the store before
    new_bytes: int = 0  # their bytes, uncompressed
    stored_bytes: int = 0  # their bytes as written (zstd)
    seconds: float = 0.0

    @property
    def reused_bytes(self) -> int:
        """Bytes of the chunked files whose chunks the store already held."""
        return self.total_bytes - self.new_bytes

    def summary(self) -> str:
        return (f"chunks: {self.new_bytes} bytes new ({self.new_chunks} of {self.chunks} "
                f"chunks, {self.stored_bytes} bytes stored), {self.reused_bytes} already "
                f"stored, in {self.seconds:.1f} s")


def index_target(channel: str, manifest: Manifest, fname: str) -> str:
    """The target path of ``fname``'s index in ``channel``."""
    return target_path(channel, manifest, fname + INDEX_SUFFIX)


def chunk_bundle(layout: Layout, bundle: Path, manifest: Manifest, channel: str, *,
                 params: ChunkerParams = DEFAULT_PARAMS, cutter: Cutter | None = None,
                 ) -> tuple[dict[str, TargetFile], ChunkStats]:
    """Store the chunks of the bundle's chunked files and write their indexes as targets.

    Returns each file's index target (to be listed by the channel's role) and the figures.
    Chunks are committed to the store before this returns; the caller signs afterwards, so
    a crash leaves at worst unlisted chunks, which ``channels.gc`` removes.

    Raises:
        BundleError: a file's index does not cover its manifest size (it changed meanwhile).
    """
    started = time.monotonic()
    store = ChunkStore(layout.chunks)
    targets: dict[str, TargetFile] = {}
    n = total = new = new_bytes = stored = 0
    for fname in chunked_files(manifest.format):
        path = Path(bundle) / fname
        index, st = make_blob(path, store, params, cutter=cutter)
        if index.total_size != manifest.files[fname].size:
            raise BundleError(f"{path}: {index.total_size} bytes chunked, the manifest says "
                              f"{manifest.files[fname].size} (changed while publishing?)")
        data = index.to_bytes()
        sha = hashlib.sha256(data).hexdigest()
        tpath = index_target(channel, manifest, fname)
        dest = layout.target(sha, tpath)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.is_file():
            atomic_write(dest, data)
        targets[fname] = TargetFile(len(data), {"sha256": sha}, tpath)
        n, total = n + st.chunks, total + st.total_bytes
        new, new_bytes, stored = new + st.new_chunks, new_bytes + st.new_chunk_bytes, \
            stored + st.stored_bytes
    stats = ChunkStats(n, total, new, new_bytes, stored, time.monotonic() - started)
    log.info("%s %s: %s", channel, manifest.version, stats.summary())
    return targets, stats


def rebuild_tree(data: Path, params: TreeParams, length: int) -> tuple[bytes, str]:
    """usr.verity rebuilt from ``data`` (usr.img) with ``params``, zero-padded to the signed
    ``length`` (a bundle's hash file may be longer than its tree), and its root hash.

    Raises:
        VerityError: unreadable data, not whole blocks, or a tree longer than ``length``.
    """
    b = verity.TreeBuilder(params.salt, uuid=params.uuid, algorithm=params.algorithm,
                           block=params.block)
    try:
        with open(data, "rb") as f:
            while block := f.read(4 << 20):
                b.update(block)
    except OSError as e:
        raise VerityError(f"{data}: cannot read ({e.strerror})") from None
    raw, root = b.finish()
    if len(raw) > length:
        raise VerityError(f"{data}: rebuilt tree is {len(raw)} bytes, more than {length}")
    return raw.ljust(length, b"\0"), root


def tree_params(bundle: Path, roothash: str) -> TreeParams | None:
    """The parameters that rebuild the bundle's usr.verity byte for byte from its usr.img,
    or None (then hosts fetch it): read from its superblock, and proven by a rebuild here."""
    tree_file = Path(bundle) / "usr.verity"
    try:
        with open(tree_file, "rb") as f:
            sb = verity.Superblock.parse(f.read(verity.SUPERBLOCK_SIZE), str(tree_file))
        if sb.data_block_size != sb.hash_block_size:
            raise VerityError("data and hash blocks differ in size")
        params = TreeParams(sb.salt, sb.uuid, sb.algorithm, sb.data_block_size)
        raw, root = rebuild_tree(Path(bundle) / "usr.img", params, tree_file.stat().st_size)
        if root != roothash or raw != tree_file.read_bytes():
            raise VerityError("a rebuild gives other bytes")
    except (OSError, ValueError, VerityError) as e:
        log.warning("%s: hosts cannot rebuild it (%s); they fetch it", tree_file, e)
        return None
    return params
