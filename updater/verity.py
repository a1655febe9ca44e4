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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from channels import verity as tree
from channels.errors import VerityError
from updater.errors import BadRelease, SlotError, VerificationError

CHUNK = 4 << 20
HASH_THREADS = 2  # usr.img is hashed in this many parts at once (the host has the cores)
DIRECT_ALIGN = 4096  # O_DIRECT: offsets, lengths and memory in whole 4 KiB blocks


def write_through(src: Path, dest: Path) -> int:
    """Write ``src`` onto the start of ``dest``, fsync, and drop it from the page cache (so
    a read-back comes from the device).

    ``src`` is mapped and written from the mapping; onto a block device with O_DIRECT where
    the device takes it (whole 4 KiB blocks from page-aligned memory: no copy through the
    page cache, the bulk of what ``dd`` spends), the rest (a tail, a regular file) buffered.

    Raises:
        SlotError: ``dest`` cannot be opened or written, or is too small.
    """
    size = src.stat().st_size
    try:
        fd = os.open(dest, os.O_WRONLY)
    except OSError as e:
        raise SlotError(f"{dest}: cannot open for writing: {e.strerror}") from None
    direct = -1
    try:
        room = os.lseek(fd, 0, os.SEEK_END)
        if os.path.isfile(dest):
            room = max(room, size)
        if room < size:
            raise SlotError(f"{dest}: {room} bytes, too small for {src.name} ({size} bytes)")
        if not os.path.isfile(dest):
            with contextlib.suppress(OSError):
                direct = os.open(dest, os.O_WRONLY | os.O_DIRECT)
        aligned = size - size % DIRECT_ALIGN if direct >= 0 else 0
        with open(src, "rb") as f, _mapped(f) as view:
            for pos in range(0, size, CHUNK):
                end = min(pos + CHUNK, size)
                if pos < aligned:
                    _write_all(direct, view, pos, min(end, aligned))
                if end > aligned:
                    _write_all(fd, view, max(pos, aligned), end)
        for d in (direct, fd):
            if d >= 0:
                os.fsync(d)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as e:
        raise SlotError(f"{dest}: write failed: {e.strerror}") from None
    finally:
        os.close(fd)
        if direct >= 0:
            os.close(direct)
    return size


def _write_all(fd: int, view: memoryview, start: int, end: int) -> None:
    pos = start
    while pos < end:
        chunk = view[pos:end]
        try:
            pos += os.pwrite(fd, chunk, pos)
        finally:
            chunk.release()


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
               stop: threading.Event | None = None, threads: int = HASH_THREADS) -> None:
    """Every block of ``data`` matches the checked tree ``t``.  Meant to run while
    ``write_through`` writes the same file: both map it, so the pages the writer sends are
    the ones hashed here, by ``threads`` threads on parts of the file (hashlib releases the
    GIL while it hashes).

    Raises:
        BadRelease: the first block that differs, or a size the tree does not cover.
    """
    block = t.sb.data_block_size
    try:
        size = data.stat().st_size
    except OSError as e:
        raise VerificationError(f"{data}: cannot read: {e.strerror}") from None
    if size != t.sb.data_size:
        raise BadRelease(f"{data}: {size} bytes, its hash tree covers {t.sb.data_blocks} "
                         f"blocks of {block} ({t.sb.data_size} bytes)")
    per = -(-t.sb.data_blocks // max(threads, 1))
    per = -(-per * block // CHUNK) * CHUNK // block  # parts start on chunk boundaries
    parts = [(b, min(b + per, t.sb.data_blocks)) for b in range(0, t.sb.data_blocks, per)]
    if len(parts) == 1:
        bad = _check_part(data, t, roothash, *parts[0], stop)
    else:
        with ThreadPoolExecutor(len(parts), thread_name_prefix="verity") as pool:
            found = list(pool.map(lambda p: _check_part(data, t, roothash, *p, stop), parts))
        bad = next((b for b in found if b), "")
    if bad:
        raise BadRelease(bad)


def _check_part(data: Path, t: tree.HashTree, roothash: str, first: int, last: int,
                stop: threading.Event | None) -> str:
    """Blocks ``first`` to ``last - 1`` of ``data`` against ``t``: "" or what differs."""
    block = t.sb.data_block_size
    check = t.checker(roothash, str(data), first=first, last=last)
    try:
        with open(data, "rb") as f, _mapped(f) as view:
            try:
                for off in range(first * block, last * block, CHUNK):
                    if stop is not None and stop.is_set():
                        return ""
                    check.update(view[off:min(off + CHUNK, last * block)])
                check.done()
            except VerityError as e:  # its traceback would pin the mapping: keep the text
                return str(e)
    except OSError as e:
        return f"{data}: cannot read: {e.strerror}"
    return ""


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

    ``src`` is the release file whose sha256 was checked before it was written (and usr.img
    against its hash tree while it was), so equal bytes on the device are the release's.

    Raises:
        VerificationError: unreadable, short, or different.
    """
    bad = ""
    try:
        with open(dev, "rb", buffering=0) as d, open(src, "rb") as s, _mapped(s) as ref:
            buf = bytearray(CHUNK)
            size = len(ref)
            for pos in range(0, size, CHUNK):
                want = min(CHUNK, size - pos)
                n = d.readinto(buf) or 0
                if n < want:
                    bad = f"{dev}: read-back of {src.name} ended at {pos + n}"
                    break
                if buf[:want] != ref[pos:pos + want]:
                    at = pos + next(i for i in range(want) if buf[i] != ref[pos + i])
                    bad = f"{dev}: read-back of {src.name} differs from the release at byte {at}"
                    break
    except OSError as e:
        raise VerificationError(f"{dev}: read-back of {src.name} failed: {e.strerror}") from None
    if bad:
        raise VerificationError(bad)
