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

    ``durable`` fsyncs each new chunk before its rename (publishing); a cache whose chunks are
    verified again when used does without.
    """

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable

    def path(self, cid: str) -> Path:
        return self.root / chunk_relpath(cid)

    def has(self, cid: str) -> bool:
        p = self.path(cid)
        return p.is_file() or p.with_suffix("").is_file()

    def put(self, cid: str, data: bytes | memoryview, *, level: int = ZSTD_LEVEL) -> int:
        """Store a chunk (``cid`` must be its id) unless stored; the bytes written or 0."""
        if self.path(cid).is_file():
            return 0
        return self.put_encoded(cid, encode_chunk(data, level))

    def put_encoded(self, cid: str, raw: bytes) -> int:
        """Store an already compressed chunk (e.g. as fetched and verified); bytes or 0."""
        final = self.path(cid)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{cid}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            try:
                os.link(tmp, final)  # rename without replacing: a stored chunk never changes
            except FileExistsError:
                return 0
            return len(raw)
        finally:
            tmp.unlink(missing_ok=True)

    def read_raw(self, cid: str) -> tuple[bytes, bool]:
        """The stored file's bytes and whether they are compressed (the ``.cacnk`` file).

        Raises:
            ChunkMissingError: the store or the chunk is missing or unreadable.
        """
        p = self.path(cid)
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
