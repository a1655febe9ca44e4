"""dm-verity's on-disk format (pure): the superblock (veritysetup's format 1, sha256 and
friends) and the tree's geometry (levels, their offsets in hash blocks)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from channels.errors import VerityError

MAGIC = b"verity\x00\x00"
SUPERBLOCK_SIZE = 512
BLOCK = 4096
MAX_SALT = 256
MAX_LEVELS = 63

def _bits_down(n: int) -> int:
    return max(n.bit_length() - 1, 0)


@dataclass(frozen=True)
class Superblock:
    data_blocks: int
    salt: bytes
    algorithm: str = "sha256"
    data_block_size: int = BLOCK
    hash_block_size: int = BLOCK
    uuid: bytes = bytes(16)
    hash_type: int = 1

    @classmethod
    def parse(cls, head: bytes, where: str = "hash tree") -> Superblock:
        """Raises: VerityError (no superblock, or one this module does not handle)."""
        if len(head) < SUPERBLOCK_SIZE or head[:8] != MAGIC:
            raise VerityError(f"{where}: no dm-verity superblock")
        version, hash_type = struct.unpack_from("<II", head, 8)
        algorithm = head[32:64].split(b"\0", 1)[0].decode(errors="replace")
        dbs, hbs, blocks, salt_size = struct.unpack_from("<IIQH", head, 64)
        if version != 1 or hash_type != 1:
            raise VerityError(f"{where}: unsupported verity superblock (version {version}, "
                              f"hash type {hash_type})")
        for name, size in (("data", dbs), ("hash", hbs)):
            if size < 512 or size > (512 << 10) or size & (size - 1):
                raise VerityError(f"{where}: {name} block size {size} is not a power of two "
                                  "from 512 bytes to 512 KiB")
        if salt_size > MAX_SALT:
            raise VerityError(f"{where}: salt of {salt_size} bytes (at most {MAX_SALT})")
        if blocks < 1:
            raise VerityError(f"{where}: the superblock covers no data blocks")
        sb = cls(blocks, head[88:88 + salt_size], algorithm, dbs, hbs, head[16:32], hash_type)
        sb.new_hash()  # an unknown algorithm fails here
        return sb

    def to_bytes(self) -> bytes:
        head = bytearray(SUPERBLOCK_SIZE)
        head[:8] = MAGIC
        struct.pack_into("<II", head, 8, 1, self.hash_type)
        head[16:32] = self.uuid
        head[32:32 + len(self.algorithm)] = self.algorithm.encode()
        struct.pack_into("<IIQH", head, 64, self.data_block_size, self.hash_block_size,
                         self.data_blocks, len(self.salt))
        head[88:88 + len(self.salt)] = self.salt
        return bytes(head)

    def new_hash(self) -> Any:
        """A hash object already fed the salt: ``.copy()`` it per block."""
        try:
            h = hashlib.new(self.algorithm)
        except ValueError:
            raise VerityError(f"unknown verity hash algorithm {self.algorithm!r}") from None
        h.update(self.salt)
        return h

    @property
    def data_size(self) -> int:
        return self.data_blocks * self.data_block_size


@dataclass(frozen=True)
class Geometry:
    digest_size: int
    slot: int  # bytes per digest in a hash block (digest size rounded up to a power of 2)
    per_block: int  # digests per hash block
    levels: tuple[tuple[int, int], ...]  # (byte offset in the file, blocks); [0] = lowest
    size: int  # bytes of the whole hash file

    @classmethod
    def of(cls, sb: Superblock) -> Geometry:
        digest = sb.new_hash().digest_size
        slot = 1 << (digest - 1).bit_length()
        bits = _bits_down(sb.hash_block_size // slot)
        if bits == 0:
            raise VerityError(f"hash block of {sb.hash_block_size} bytes is too small")
        n = 0
        while bits * n < 64 and (sb.data_blocks - 1) >> (bits * n):
            n += 1
        if n > MAX_LEVELS:
            raise VerityError(f"{sb.data_blocks} data blocks need too many levels")
        hbs = sb.hash_block_size
        pos = -(-SUPERBLOCK_SIZE // hbs)  # in hash blocks: the tree starts after the superblock
        levels: list[tuple[int, int]] = [(0, 0)] * n
        for i in range(n - 1, -1, -1):  # the top level first
            count = -(-sb.data_blocks // (1 << ((i + 1) * bits)))
            levels[i] = (pos * hbs, count)
            pos += count
        return cls(digest, slot, 1 << bits, tuple(levels), pos * hbs)
