"""Release bundles that differ a little, for the delta update tests of channels and updater.

Random bytes (a content-defined chunker finds its boundaries in them), whole 4 KiB blocks of
usr.img, and a real dm-verity tree made with a fixed salt and uuid, so that a host can
rebuild it from usr.img (``channels.chunking.rebuild_tree``).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from channels import verity
from channels.bundle import FILES, FileInfo, Manifest


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
