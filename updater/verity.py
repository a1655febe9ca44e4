"""Writing a payload onto a partition, reading it back, and dm-verity's root block.

``write_through`` writes a file onto a device, fsyncs it and drops it from the page cache;
``read_back`` then reads it from the device and compares it with the file (whose signed
sha256 was checked just before): the bytes on the partition are the bytes of the release.
``verity_root`` recomputes the root hash from the hash device's superblock and top-level
block, so the signed root hash is checked against the written tree too; ``veritysetup
verify`` (every block) stays available for a full check.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from updater.errors import SlotError, VerificationError

CHUNK = 4 << 20
_MAGIC = b"verity\x00\x00"


def verity_root(head: bytes) -> str:
    """The root hash named by a verity hash device that starts with ``head``.

    ``head`` holds at least the superblock and the first (top-level) hash block.

    Raises:
        VerificationError: not a version-1 verity superblock.
    """
    if len(head) < 512 or head[:8] != _MAGIC:
        raise VerificationError("hash device has no verity superblock")
    version, hash_type = struct.unpack_from("<II", head, 8)
    algorithm = head[32:64].rstrip(b"\0").decode(errors="replace")
    _, hash_block, _, salt_size = struct.unpack_from("<IIQH", head, 64)
    if version != 1 or hash_type != 1 or salt_size > 256 or len(head) < 2 * hash_block:
        raise VerificationError(f"unsupported verity superblock (version {version}, "
                                f"type {hash_type})")
    try:
        h = hashlib.new(algorithm)
    except ValueError:
        raise VerificationError(f"unknown verity hash algorithm {algorithm!r}") from None
    h.update(head[88:88 + salt_size])
    h.update(head[hash_block:2 * hash_block])
    return h.hexdigest()


def read_head(dev: Path, size: int = 64 << 10) -> bytes:
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def write_through(src: Path, dest: Path) -> int:
    """Write ``src`` onto the start of ``dest``, fsync, and drop it from the page cache (so
    a read-back comes from the device).

    Raises:
        SlotError: ``dest`` cannot be opened or written, or is too small.
    """
    size = src.stat().st_size
    try:
        fd = os.open(dest, os.O_WRONLY)
    except OSError as e:
        raise SlotError(f"{dest}: cannot open for writing: {e.strerror}") from None
    try:
        room = os.lseek(fd, 0, os.SEEK_END)
        if os.path.isfile(dest):
            room = max(room, size)
        if room < size:
            raise SlotError(f"{dest}: {room} bytes, too small for {src.name} ({size} bytes)")
        os.lseek(fd, 0, os.SEEK_SET)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with open(src, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                off = 0
                while off < n:
                    off += os.write(fd, view[off:n])
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as e:
        raise SlotError(f"{dest}: write failed: {e.strerror}") from None
    finally:
        os.close(fd)
    return size


def read_back(dev: Path, src: Path) -> None:
    """Read ``src``'s length back from ``dev`` and compare it with ``src``, byte for byte.

    ``src`` is the release file whose sha256 was checked just before it was written, so equal
    bytes on the device are the release's bytes.

    Raises:
        VerificationError: unreadable, short, or different.
    """
    size = src.stat().st_size
    pos = 0
    try:
        with open(dev, "rb", buffering=0) as d, open(src, "rb", buffering=0) as s:
            while pos < size:
                want = min(CHUNK, size - pos)
                got, ref = d.read(want), s.read(want)
                if len(got) != want:
                    raise VerificationError(f"{dev}: read-back of {src.name} ended at {pos}")
                if got != ref:
                    at = pos + next(i for i in range(want) if got[i] != ref[i])
                    raise VerificationError(f"{dev}: read-back of {src.name} differs from the "
                                            f"release at byte {at}")
                pos += want
    except OSError as e:
        raise VerificationError(f"{dev}: read-back of {src.name} failed: {e.strerror}") from None


def stream_verified(src: Path, dest: Path) -> int:
    """``write_through`` then ``read_back``: the bytes on ``dest`` are those of ``src``."""
    size = write_through(src, dest)
    read_back(dest, src)
    return size
