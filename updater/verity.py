"""Writing a payload onto a partition, checking it against its hash tree, reading it back.

``source_tree`` reads the release's usr.verity and checks it against the signed root hash
(``channels.verity``: only the tree is hashed, 1/128 of the data).  ``check_data`` hashes
every block of usr.img against that tree in a thread *while* ``write_through`` writes the
same file to the slot (both map the same pages; hashlib releases the GIL), so a usr.img that
does not match its own tree is never staged, and the check adds no read.  ``read_back`` then
reads the partitions back and compares them with the release's files: the bytes on the
device are the bytes that were checked.  ``veritysetup verify`` (``slots.verify_verity``)
stays available as the optional full check.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from channels import verity as tree
from channels.errors import VerityError
from updater.errors import BadRelease, SlotError, VerificationError

CHUNK = 4 << 20


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


def source_tree(tree_file: Path, data_size: int, roothash: str) -> tree.HashTree:
    """The release's hash tree, checked against its signed ``roothash``; it must cover
    exactly ``data_size`` bytes (usr.img).

    Raises:
        BadRelease: unreadable, another data size, or another root hash.
    """
    try:
        t = tree.HashTree.read(tree_file, data_size=data_size)
        t.check(roothash)
    except VerityError as e:
        raise BadRelease(str(e)) from None
    return t


def check_data(data: Path, t: tree.HashTree, roothash: str, *,
               stop: threading.Event | None = None) -> None:
    """Every block of ``data`` matches the checked tree ``t``.  Meant to run in a thread
    while ``write_through`` writes the same file: both map it, so the pages the writer
    reads are the ones hashed here (hashlib releases the GIL while it hashes).

    Raises:
        BadRelease: the first block that differs, or a size the tree does not cover.
    """
    check = t.checker(roothash, str(data))
    bad = ""
    try:
        with open(data, "rb") as f, _mapped(f) as view:
            try:
                for off in range(0, len(view), CHUNK):
                    if stop is not None and stop.is_set():
                        return
                    check.update(view[off:off + CHUNK])
                check.done()
            except VerityError as e:  # its traceback would pin the mapping: keep the text
                bad = str(e)
    except OSError as e:
        raise VerificationError(f"{data}: cannot read: {e.strerror}") from None
    if bad:
        raise BadRelease(bad)


@contextlib.contextmanager
def _mapped(f: BinaryIO) -> Iterator[memoryview]:
    size = os.fstat(f.fileno()).st_size
    if not size:
        yield memoryview(b"")
        return
    with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
        mm.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(mm)
        try:
            yield view
        finally:
            view.release()


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
