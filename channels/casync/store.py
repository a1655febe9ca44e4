"""The casync chunk store (``.castr``) layout, and verified chunk decoding (SPECS §9.2).

A chunk with id ``ID`` (64 hex digits, the digest of its uncompressed bytes) is
``<store>/<ID[:4]>/<ID>.cacnk``, one zstd frame (what casync writes by default and the only
compression desync reads). casync writes ``<ID>.<random hex>.tmp`` and renames it without
replacing, mode 0444; so do we, so a chunk is stored once and never changes.

Reading is always verified: ``decode_chunk`` decompresses with a bound (a chunk larger than
the index's maximum is an error after at most max+1 bytes, never a memory blow-up) and checks
the id before returning a byte. It reads zstd, and xz or gzip (casync's other compressions,
detected by magic as ``src/compressor.c`` does); the suffix-less file is an uncompressed chunk.
"""

from __future__ import annotations

import lzma
import os
import re
import secrets
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zstandard

from channels.casync.index import chunk_id
from channels.errors import ChunkMissingError, ChunkVerificationError

SUFFIX = ".cacnk"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_LEVEL = 3  # zstd's own default, as casync's; usr.img is mostly compressed already
_ID = re.compile(r"[0-9a-f]{64}")


def check_id(cid: str) -> str:
    if not _ID.fullmatch(cid):
        raise ValueError(f"not a chunk id (64 lowercase hex digits): {cid!r}")
    return cid


def chunk_relpath(cid: str) -> str:
    """The chunk's path inside a store, also its URL below the store's base URL."""
    return f"{check_id(cid)[:4]}/{cid}{SUFFIX}"


def encoded_size_bound(size: int) -> int:
    """The most bytes a zstd frame of ``size`` bytes can take (``ZSTD_COMPRESSBOUND``): the
    cap for downloading a chunk of an index whose maximum chunk size is ``size``."""
    return size + (size >> 8) + ((128 * 1024 - size) >> 11 if size < 128 * 1024 else 0)


def encode_chunk(data: bytes | memoryview, level: int = ZSTD_LEVEL) -> bytes:
    """One zstd frame (with its content size) holding ``data``."""
    return zstandard.ZstdCompressor(level=level).compress(data)


def decode_chunk(
    raw: bytes,
    cid: str,
    *,
    max_size: int,
    size: int | None = None,
    digest: str = "sha512-256",
    name: str = "",
    compressed: bool = True,
) -> bytes:
    """The chunk's bytes, only if they hash to ``cid`` (and are ``size`` long, if given).

    ``max_size`` bounds decompression (the index's maximum chunk size). ``name`` says where
    ``raw`` came from (a file or URL) for the error.

    Raises:
        ChunkVerificationError: undecodable, larger than allowed, wrong size or wrong id.
    """
    where = name or f"chunk {cid}"
    bound = max_size if size is None else min(size, max_size)
    data = _decompress(raw, bound, where) if compressed else raw
    if len(data) > bound:
        raise ChunkVerificationError(f"{where}: chunk larger than {bound} bytes")
    if size is not None and len(data) != size:
        raise ChunkVerificationError(f"{where}: chunk is {len(data)} bytes, the index says {size}")
    if chunk_id(data, digest) != cid:
        raise ChunkVerificationError(f"{where}: chunk does not hash to its id {cid}")
    return data


def _decompress(raw: bytes, bound: int, where: str) -> bytes:
    """At most ``bound + 1`` bytes of the decompressed chunk (one more means too large)."""
    try:
        if raw.startswith(ZSTD_MAGIC):
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            parts, got = [], 0
            while got <= bound and (part := reader.read(bound + 1 - got)):
                parts.append(part)
                got += len(part)
            return b"".join(parts)
        if raw.startswith(XZ_MAGIC):
            return lzma.LZMADecompressor().decompress(raw, max_length=bound + 1)
        if raw.startswith(GZIP_MAGIC):
            return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(raw, bound + 1)
    except (zstandard.ZstdError, lzma.LZMAError, zlib.error) as e:
        raise ChunkVerificationError(f"{where}: chunk does not decompress ({e})") from None
    raise ChunkVerificationError(f"{where}: chunk is not zstd, xz or gzip compressed")


class ChunkStore:
    """A local ``.castr`` directory: the repository's store, a mirror, or a host's cache.

    ``durable`` (publishing): a new chunk is written to its temporary name and becomes
    visible only at ``commit()``, which fsyncs the batch (in parallel: one fsync per chunk in
    turn costs ~4 ms, 45 s for a 200 MB image at 16 KiB chunks) and then links each to its
    final name. So a final name always holds a whole chunk, even after a crash, which
    matters because a stored chunk is never written again. Without ``durable`` (a host's
    cache, verified again when used) a chunk is visible at once and never fsynced.
    """

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        self._pending: dict[str, Path] = {}

    def path(self, cid: str) -> Path:
        return self.root / chunk_relpath(cid)

    def has(self, cid: str) -> bool:
        p = self.path(cid)
        return cid in self._pending or p.is_file() or p.with_suffix("").is_file()

    def put(self, cid: str, data: bytes | memoryview, *, level: int = ZSTD_LEVEL) -> int:
        """Store a chunk (``cid`` must be its id) unless stored; the bytes written or 0."""
        if cid in self._pending or self.path(cid).is_file():
            return 0
        return self.put_encoded(cid, encode_chunk(data, level))

    def put_encoded(self, cid: str, raw: bytes) -> int:
        """Store an already compressed chunk (e.g. as fetched and verified); bytes or 0."""
        final = self.path(cid)
        if cid in self._pending or final.is_file():
            return 0
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{cid}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.durable:
            self._pending[cid] = tmp
            return len(raw)
        return len(raw) if _link_once(tmp, final) else 0

    def commit(self) -> None:
        """Make the chunks put since the last commit durable, then visible (durable store)."""
        pending, self._pending = self._pending, {}
        try:
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(_fsync_path, pending.values()))
            for cid, tmp in pending.items():
                _link_once(tmp, self.path(cid))
            for d in {tmp.parent for tmp in pending.values()} | ({self.root} if pending else set()):
                _fsync_path(d)
        finally:
            for tmp in pending.values():
                tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        """Drop the chunks put since the last commit (a failed publish)."""
        pending, self._pending = self._pending, {}
        for tmp in pending.values():
            tmp.unlink(missing_ok=True)

    def read_raw(self, cid: str) -> tuple[bytes, bool]:
        """The stored file's bytes and whether they are compressed (the ``.cacnk`` file).

        Raises:
            ChunkMissingError: the store or the chunk is missing or unreadable.
        """
        p = self.path(cid)
        if cid in self._pending:
            return self._pending[cid].read_bytes(), True
        for path, compressed in ((p, True), (p.with_suffix(""), False)):
            try:
                return path.read_bytes(), compressed
            except FileNotFoundError:
                continue
            except OSError as e:
                raise ChunkMissingError(f"{path}: cannot read the chunk ({e.strerror})") from None
        if not self.root.is_dir():
            raise ChunkMissingError(f"{self.root}: no chunk store there")
        raise ChunkMissingError(f"{p}: chunk missing from the store")

    def get(
        self, cid: str, *, max_size: int, size: int | None = None, digest: str = "sha512-256"
    ) -> bytes:
        """The chunk's verified bytes (see ``decode_chunk``).

        Raises:
            ChunkMissingError: not in the store. ChunkVerificationError: corrupt.
        """
        raw, compressed = self.read_raw(cid)
        return decode_chunk(
            raw,
            cid,
            max_size=max_size,
            size=size,
            digest=digest,
            name=str(self.path(cid)),
            compressed=compressed,
        )

    def remove(self, cid: str) -> None:
        p = self.path(cid)
        p.unlink(missing_ok=True)
        p.with_suffix("").unlink(missing_ok=True)

    def ids(self) -> Iterator[str]:
        """Every chunk id stored (compressed or not), e.g. for garbage collection."""
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) != 4 or not sub.is_dir():
                continue
            found = {f.name.removesuffix(SUFFIX) for f in sub.iterdir()}
            yield from sorted(c for c in found if _ID.fullmatch(c) and c.startswith(sub.name))


def _link_once(tmp: Path, final: Path) -> bool:
    """Give ``tmp`` its final name unless it has one (casync's rename without replacing)."""
    try:
        os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
