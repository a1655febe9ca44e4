"""dm-verity hash trees in pure Python, in the format ``veritysetup format`` writes.

The hash file (cryptsetup ``lib/verity/verity.c``, ``verity_hash.c``; format version 1)::

    offset 0          superblock, 512 bytes, zero-padded to one hash block:
                      "verity\\0\\0", version u32 = 1, hash_type u32 = 1, uuid[16],
                      algorithm[32] ("sha256"), data_block_size u32, hash_block_size u32,
                      data_blocks u64, salt_size u16, pad[6], salt[256], pad[168]
    hash block 1 on   the levels, the top level first; level 0 holds one digest per data
                      block, level i+1 one digest per hash block of level i; each digest is
                      H(salt || block) in a slot of the digest size rounded up to a power
                      of two, ``hash_block_size // slot`` slots per block, the rest zero
    root hash         H(salt || the top level's one block); with one data block there are
                      no levels and the root hash is that block's digest

Levels: the fewest L with ``(data_blocks - 1) >> (L * log2(slots per block)) == 0``;
level i has ``ceil(data_blocks / slots**(i + 1))`` blocks.  Only whole data blocks are
covered, so a data file must be a whole number of blocks.

``HashTree.read(...).check(roothash)`` proves a tree is consistent with a root hash (it
hashes only the tree: 1/128 of the data); its ``checker()`` then checks data blocks as they
stream by (``verify`` does both for a data file); ``TreeBuilder`` / ``build`` make a tree
from data with a given salt, byte for byte what ``veritysetup format --salt --uuid`` writes.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from channels.errors import VerityError
from channels.veritysb import (  # noqa: F401 - re-exported: the names importers use
    BLOCK,
    MAGIC,
    MAX_LEVELS,
    MAX_SALT,
    SUPERBLOCK_SIZE,
    Geometry,
    Superblock,
    _bits_down,
)

_READ = 4 << 20


def _digests(base: Any, data: memoryview, block: int) -> Iterator[bytes]:
    for off in range(0, len(data), block):
        h = base.copy()
        h.update(data[off:off + block])
        yield h.digest()


def _whole_blocks(partial: bytearray, chunk: bytes | bytearray | memoryview,
                  block: int) -> Iterator[memoryview]:
    """Whole blocks of ``partial`` + ``chunk`` (at most two views); the rest stays in
    ``partial`` (changed in place), so chunks of any size stream through."""
    view = memoryview(chunk).cast("B")
    if partial:
        take = min(len(view), block - len(partial))
        partial += view[:take]
        view = view[take:]
        if len(partial) < block:
            return
        yield memoryview(bytes(partial))
        del partial[:]
    whole = len(view) - len(view) % block
    if whole:
        yield view[:whole]
    partial += view[whole:]


def _pack(geo: Geometry, digests: list[bytes], hbs: int) -> bytes:
    """Hash blocks holding ``digests``, each in its slot, zero-padded."""
    pad = bytes(geo.slot - geo.digest_size)
    out = bytearray()
    for i in range(0, len(digests), geo.per_block):
        chunk = (pad.join(digests[i:i + geo.per_block]) + pad) if pad else \
            b"".join(digests[i:i + geo.per_block])
        out += chunk + bytes(hbs - len(chunk))
    return bytes(out)


class HashTree:
    """A hash file held in memory (about 1/128 of its data)."""

    def __init__(self, raw: bytes, where: str = "hash tree") -> None:
        self.where = where
        self.sb = Superblock.parse(raw, where)
        self.geometry = Geometry.of(self.sb)
        if len(raw) < self.geometry.size:
            raise VerityError(f"{where}: {len(raw)} bytes, the tree of "
                              f"{self.sb.data_blocks} data blocks needs {self.geometry.size}")
        self.raw = memoryview(raw)[:self.geometry.size]
        self._checked = ""

    @classmethod
    def read(cls, path: Path, where: str | None = None, *,
             data_size: int | None = None) -> HashTree:
        """The tree at the start of ``path`` (a file, or a partition longer than the tree);
        with ``data_size``, only a tree of exactly that much data is read.

        Raises: VerityError (unreadable, not a tree, or a tree of other data).
        """
        where = where or str(path)
        try:
            with open(path, "rb") as f:
                head = f.read(SUPERBLOCK_SIZE)
                sb = Superblock.parse(head, where)
                if data_size is not None and sb.data_size != data_size:
                    raise VerityError(f"{where}: hash tree of {sb.data_size} bytes of data, "
                                      f"not {data_size}")
                raw = head + f.read(Geometry.of(sb).size - len(head))
        except OSError as e:
            raise VerityError(f"{where}: cannot read the hash tree: {e.strerror}") from None
        return cls(raw, where)

    def _level(self, i: int) -> memoryview:
        off, count = self.geometry.levels[i]
        return self.raw[off:off + count * self.sb.hash_block_size]

    def _expect(self, level: memoryview, count: int, what: str) -> bytes:
        """The ``count`` digests held in ``level``; the spare bytes must be zero."""
        geo, hbs = self.geometry, self.sb.hash_block_size
        out = bytearray()
        for b in range(-(-count // geo.per_block)):
            block = level[b * hbs:(b + 1) * hbs]
            n = min(geo.per_block, count - b * geo.per_block)
            if geo.slot == geo.digest_size:
                out += block[:n * geo.slot]
                spare = block[n * geo.slot:]
            else:
                for k in range(n):
                    s = block[k * geo.slot:(k + 1) * geo.slot]
                    out += s[:geo.digest_size]
                    if any(s[geo.digest_size:]):
                        raise VerityError(f"{self.where}: {what}: digest padding is not zero")
                spare = block[n * geo.slot:]
            if any(spare):
                raise VerityError(f"{self.where}: {what}: the spare area of hash block {b} "
                                  "is not zero")
        return bytes(out)

    def check(self, roothash: str) -> None:
        """The tree's levels hash up to ``roothash`` (data blocks are not read).

        Raises: VerityError naming the level that differs.
        """
        if self._checked == roothash:
            return
        try:
            want = bytes.fromhex(roothash)
        except ValueError:
            raise VerityError(f"root hash {roothash[:16]!r}… is not hex") from None
        levels = self.geometry.levels
        if len(want) != self.geometry.digest_size:
            raise VerityError(f"root hash has {len(want)} bytes, {self.sb.algorithm} gives "
                              f"{self.geometry.digest_size}")
        base, hbs = self.sb.new_hash(), self.sb.hash_block_size
        if levels:
            top = base.copy()
            top.update(self._level(len(levels) - 1))
            if top.digest() != want:
                raise VerityError(f"{self.where}: hash tree gives root hash "
                                  f"{top.hexdigest()[:12]}…, not {roothash[:12]}…")
        for i in range(len(levels) - 1, 0, -1):
            expect = self._expect(self._level(i), levels[i - 1][1], f"level {i}")
            got = b"".join(_digests(base, self._level(i - 1), hbs))
            if got != expect:
                raise VerityError(f"{self.where}: level {i - 1} of the hash tree does not "
                                  f"match level {i}")
        self._checked = roothash

    def data_digests(self, roothash: str) -> bytes:
        """The digest of every data block, after ``check(roothash)``."""
        self.check(roothash)
        if not self.geometry.levels:
            return bytes.fromhex(roothash)
        return self._expect(self._level(0), self.sb.data_blocks, "level 0")

    def checker(self, roothash: str, where: str = "data", *, first: int = 0,
                last: int | None = None) -> BlockChecker:
        return BlockChecker(self, roothash, where, first=first, last=last)


class BlockChecker:
    """Checks data as it streams by against a checked tree: ``update()`` chunks in order,
    then ``done()``.  Each whole block is hashed when it arrives, so a bad block fails at
    once; ``update`` keeps no reference to the chunk once it returns.  ``first``/``last``:
    the checker sees only data blocks ``first`` to ``last - 1`` (a part, for threads)."""

    def __init__(self, tree: HashTree, roothash: str, where: str = "data", *, first: int = 0,
                 last: int | None = None) -> None:
        self.where = where
        self.expect = memoryview(tree.data_digests(roothash))
        self.base = tree.sb.new_hash()
        self.block = tree.sb.data_block_size
        self.digest = tree.geometry.digest_size
        self.blocks = tree.sb.data_blocks if last is None else last
        if not 0 <= first <= self.blocks <= tree.sb.data_blocks:
            raise VerityError(f"{where}: blocks {first} to {self.blocks} are not in the tree")
        self.against = "its hash tree" if tree.geometry.levels else "the root hash"
        self.seen = first  # the next block to check
        self.first = first
        self.partial = bytearray()

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Raises: VerityError at the first block that differs, or past the tree's end."""
        for whole in _whole_blocks(self.partial, chunk, self.block):
            self._check(whole)

    def _check(self, data: memoryview) -> None:
        n = len(data) // self.block
        if self.seen + n > self.blocks:
            raise VerityError(f"{self.where}: longer than the {self.blocks} blocks its hash "
                              "tree covers")
        d = self.digest
        got = b"".join(_digests(self.base, data, self.block))
        want = self.expect[self.seen * d:(self.seen + n) * d]
        if got != want:
            bad = next(i for i in range(n) if got[i * d:(i + 1) * d] != want[i * d:(i + 1) * d])
            at = (self.seen + bad) * self.block
            raise VerityError(f"{self.where}: block {self.seen + bad} (byte {at}) does not "
                              f"match {self.against}")
        self.seen += n

    def done(self) -> None:
        """Raises: VerityError when the data is shorter than the tree, or not whole blocks."""
        if self.partial or self.seen != self.blocks:
            size = (self.seen - self.first) * self.block + len(self.partial)
            raise VerityError(f"{self.where}: {size} bytes, its hash tree covers "
                              f"{self.blocks} blocks of {self.block} ({self.blocks * self.block}"
                              " bytes)")


def _read_chunks(path: Path, where: str) -> Iterator[memoryview]:
    buf = bytearray(_READ)
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                yield memoryview(buf)[:n]
    except OSError as e:
        raise VerityError(f"{where}: cannot read: {e.strerror}") from None


def verify(data: Path, tree: Path, roothash: str) -> None:
    """``data`` and the hash file ``tree`` match each other and ``roothash``, every block
    (what ``veritysetup verify`` checks).

    Raises: VerityError, one line naming the file and the block that differs.
    """
    t = HashTree.read(tree)
    t.check(roothash)
    check = t.checker(roothash, str(data))
    for chunk in _read_chunks(data, str(data)):
        check.update(chunk)
    check.done()


class TreeBuilder:
    """Builds the hash file of data streamed through ``update()``; ``finish()`` returns it
    and the root hash.  The data's length must be a whole number of blocks."""

    def __init__(self, salt: bytes, *, uuid: bytes | None = None, algorithm: str = "sha256",
                 block: int = BLOCK) -> None:
        if len(salt) > MAX_SALT:
            raise VerityError(f"salt of {len(salt)} bytes (at most {MAX_SALT})")
        self.template = Superblock(1, bytes(salt), algorithm, block, block,
                                   uuid if uuid is not None else uuidlib.uuid4().bytes)
        self.base = self.template.new_hash()
        self.block = block
        self.digests: list[bytes] = []
        self.partial = bytearray()

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        for whole in _whole_blocks(self.partial, chunk, self.block):
            self.digests.extend(_digests(self.base, whole, self.block))

    def finish(self) -> tuple[bytes, str]:
        """The hash file's bytes and the root hash (hex).

        Raises: VerityError when the data was empty or not a whole number of blocks.
        """
        if self.partial:
            raise VerityError(f"data is not a whole number of {self.block}-byte blocks")
        if not self.digests:
            raise VerityError("no data to build a hash tree of")
        sb = Superblock(len(self.digests), self.template.salt, self.template.algorithm,
                        self.block, self.block, self.template.uuid)
        geo = Geometry.of(sb)
        out = bytearray(geo.size)
        out[:SUPERBLOCK_SIZE] = sb.to_bytes()
        digests = self.digests
        for off, count in geo.levels:  # the lowest level first; each from the one below
            packed = _pack(geo, digests, self.block)
            assert len(packed) == count * self.block
            out[off:off + len(packed)] = packed
            digests = list(_digests(self.base, memoryview(packed), self.block))
        root = digests[0]
        return bytes(out), root.hex()


def build(data: Path, tree: Path, salt: bytes, *, uuid: bytes | None = None,
          algorithm: str = "sha256") -> str:
    """Write the hash file of ``data`` to ``tree`` (temp file, fsync, rename); its root hash.

    Raises: VerityError (unreadable data, not whole blocks); OSError writing ``tree``.
    """
    b = TreeBuilder(salt, uuid=uuid, algorithm=algorithm)
    for chunk in _read_chunks(data, str(data)):
        b.update(chunk)
    raw, root = b.finish()
    tmp = tree.with_name(f".{tree.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, tree)
    return root


def check_bundle(bundle: Path, roothash: str) -> None:
    """A release bundle's ``usr.img`` matches its ``usr.verity`` and ``roothash``, every block.

    Raises: VerityError, one line naming the file and what differs.
    """
    bundle = Path(bundle)
    verify(bundle / "usr.img", bundle / "usr.verity", roothash)
