"""Release bundles that differ a little, for the delta update tests of channels and updater.

Random bytes (a content-defined chunker finds its boundaries in them), whole 4 KiB blocks of
usr.img, and a real dm-verity tree made with a fixed salt and uuid, so that a host can
rebuild it from usr.img (``channels.chunking.rebuild_tree``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

from channels import verity
from channels.bundle import FILES, FileInfo, Manifest
from channels.casync.index import BlobIndex
from channels.casync.store import chunk_relpath


def write_release(parent: Path, version: str, usr: bytes, kernel: bytes, initrd: bytes,
                  channel: str = "alpha") -> Path:
    """A bundle of the given payloads (usr.img padded to whole blocks) and its verity tree."""
    bundle = parent / f"tidehost-{version}.release"
    bundle.mkdir(parents=True)
    usr += bytes(-len(usr) % verity.BLOCK)
    tree = verity.TreeBuilder(b"tidehost-salt", uuid=bytes(range(16)))
    tree.update(usr)
    hashes, roothash = tree.finish()
    data = {"usr.img": usr, "usr.verity": hashes, "vmlinuz": kernel, "initrd": initrd}
    files = {}
    for fname in FILES:
        (bundle / fname).write_bytes(data[fname])
        files[fname] = FileInfo(len(data[fname]), hashlib.sha256(data[fname]).hexdigest())
    m = Manifest(name="tidehost", version=version, channel=channel, build_id=f"t-{version}",
                 arch="x86-64", suite="trixie", usr_filesystem="erofs", roothash=roothash,
                 kernel_cmdline="", boot_tries=3, files=files)
    (bundle / "manifest.json").write_text(m.to_json())
    return bundle


def release_pair(parent: Path, usr_size: int = 6 << 20, channel: str = "alpha",
                 ) -> tuple[Path, Path]:
    """1.0.0 and 1.1.0: a usr.img with two small edits, the same kernel, an initrd with a
    byte inserted."""
    rng = random.Random(5)
    usr = bytearray(rng.randbytes(usr_size))
    kernel, initrd = rng.randbytes(300_000), rng.randbytes(600_000)
    v1 = write_release(parent, "1.0.0", bytes(usr), kernel, initrd, channel)
    usr[1_000_000:1_000_008] = b"v=1.1.0\n"
    usr[usr_size * 3 // 4:usr_size * 3 // 4 + 4] = b"edit"
    v2 = write_release(parent, "1.1.0", bytes(usr), kernel,
                       initrd[:70_000] + b"+" + initrd[70_000:], channel)
    return v1, v2


def corrupt_a_chunk(repo: Path, old: str, new: str) -> tuple[str, str, Callable[[], None]]:
    """Flip a byte of the stored copy of a chunk that ``new``'s boot file for slot B (its
    UKI, or with format 1 its initrd) needs and ``old``'s lacks, so a host seeded with ``old``
    must fetch it (usr.img's if those files are equal).
    Returns the file, the chunk id and how to put the good chunk back."""
    targets = repo / "published/targets/alpha"

    def ids(version: str, fname: str) -> list[str]:
        index = next(targets.glob(f"*-{version}.{fname}.caibx"))
        return [c.id for c in BlobIndex.read(index).chunks]

    names = {p.name.split(f"-{new}.", 1)[1].removesuffix(".caibx")
             for p in targets.glob(f"*-{new}.*.caibx")}  # fmt: skip
    boot = next(n for n in ("uki.efi", "uki-b.efi", "initrd") if n in names)  # slot B's
    for fname in (boot, "usr.img"):
        old_ids = set(ids(old, fname))
        missing = [c for c in ids(new, fname) if c not in old_ids]
        if missing:
            break
    assert missing, f"{new} shares every chunk with {old}: nothing to fetch"
    cid = missing[len(missing) // 2]
    path = repo / "published/chunks.castr" / chunk_relpath(cid)
    good = path.read_bytes()
    path.chmod(0o644)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    path.write_bytes(bytes(bad))

    def restore() -> None:
        path.write_bytes(good)
        path.chmod(0o444)

    return fname, cid, restore
