"""Stage: /usr as a read-only filesystem image, plus its dm-verity hash tree.

Both are reproducible: two builds of the same tree give byte-identical files.

- usr.img: squashfs and erofs sort every directory themselves (squashfs compresses in
  parallel but writes in order); file times newer than the build's epoch
  (``BuildContext.epoch``, also the image's creation time) are clamped to it
  (``clamp_times``), owners and modes are the tree's own (numeric, as restored from the
  cached tree), the filesystem UUID comes from the build id. Times are clamped, not all set
  to one value: Python's bytecode caches record their source's mtime, and a /usr whose .py
  files all had another time would recompile every module in memory on every start.
- usr.verity: the salt is fixed (``VERITY_SALT``), the superblock's UUID derived from the
  image's sha256 (``verity_uuid``). A fixed salt makes a block's hash the same in every
  release, so the hash tree of a release that changed few blocks changes little as well,
  and a host can rebuild the tree of an image it assembled from chunks. The salt's job,
  making precomputed attacks on one tree useless for another, does not apply to SHA-256's
  preimage resistance at this scale; a per-fleet salt can be had by changing the constant.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

from channels.bundle import sha256_file
from imagebuild.core.errors import ConfigError, StageError
from imagebuild.core.run import output, require, run
from imagebuild.image.config import ImageConfig, UsrFilesystem
from imagebuild.image.context import BuildContext

log = logging.getLogger(__name__)
MiB = 1 << 20

VERITY_SALT = hashlib.sha256(b"tidehost dm-verity salt, version 1").hexdigest()


def verity_uuid(image_sha256: str) -> str:
    """The UUID of a hash tree's superblock, from its image's sha256 (pure)."""
    digest = hashlib.sha256(b"tidehost dm-verity uuid\0" + bytes.fromhex(image_sha256)).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def clamp_times(root: Path, epoch: int) -> int:
    """Set every time newer than ``epoch`` under ``root`` (itself included) to ``epoch``,
    without following symlinks; return how many entries were changed."""
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (".", *dirnames, *filenames):
            path = os.path.join(dirpath, name)
            if name == "." and dirpath != str(root):
                continue  # each folder once, as an entry of its parent
            st = os.lstat(path)
            if st.st_mtime > epoch:  # squashfs and erofs keep no atime
                os.utime(path, (epoch, epoch), follow_symlinks=False)
                changed += 1
    return changed


def mksquashfs_args(c: ImageConfig) -> list[str]:
    """mksquashfs's options for the image file's compression settings (pure)."""
    args = ["-noappend", "-quiet", "-no-progress", "-comp", c.compression.value,
            "-b", f"{c.compression_block_size}K"]  # fmt: skip
    if c.compression.value == "zstd":
        args += ["-Xcompression-level", str(c.compression_level)]
    else:  # xz: the x86 branch filter shrinks executables
        args += ["-Xbcj", "x86"]
    if not c.fragments:
        args.append("-no-fragments")
    return args


def make_usr_image(ctx: BuildContext) -> None:
    c = ctx.config
    img = ctx.parts / "usr.img"
    img.unlink(missing_ok=True)
    clamped = clamp_times(ctx.tree / "usr", ctx.epoch)
    log.info("  times clamped to %d for %d entries of /usr", ctx.epoch, clamped)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(ctx.epoch)}
    if c.usr_filesystem is UsrFilesystem.SQUASHFS:
        require("mksquashfs")
        run(["mksquashfs", ctx.tree / "usr", img, *mksquashfs_args(c),
             "-processors", str(os.cpu_count() or 1)], env=env)  # fmt: skip
    else:
        require("mkfs.erofs")
        fs_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"tidehost:usr:{ctx.build_id}")
        run(["mkfs.erofs", "--quiet", "-zlz4hc", f"-T{ctx.epoch}", "--preserve-mtime",
             f"-U{fs_uuid}", img, ctx.tree / "usr"], env=env)  # fmt: skip
    # dm-verity works in 4 KiB blocks: pad the filesystem image to a whole number of them.
    size = img.stat().st_size
    if size % 4096:
        os.truncate(img, size + 4096 - size % 4096)
    limit = c.partitions.usr * MiB
    size = img.stat().st_size
    log.info("  /usr image: %.1f MiB (%s), USR partitions: %d MiB",
             size / MiB, c.usr_filesystem.value, c.partitions.usr)  # fmt: skip
    if size > limit:
        raise ConfigError(
            f"{c.source}: partitions.usr: {c.partitions.usr} MiB is too small for /usr "
            f"({size / MiB:.0f} MiB)"
        )


def make_verity(ctx: BuildContext) -> None:
    require("veritysetup")
    img, hashes = ctx.parts / "usr.img", ctx.parts / "usr.verity"
    hashes.unlink(missing_ok=True)
    roothash_file = ctx.work / "roothash"
    run(["veritysetup", "format", img, hashes, f"--root-hash-file={roothash_file}",
         f"--salt={VERITY_SALT}", f"--uuid={verity_uuid(sha256_file(img))}"],
        capture=True)  # fmt: skip
    ctx.roothash = roothash_file.read_text().strip()
    if len(ctx.roothash) != 64:
        raise StageError(f"veritysetup gave an unexpected root hash {ctx.roothash!r}")
    if hashes.stat().st_size > ctx.config.partitions.usr_verity * MiB:
        raise ConfigError(
            f"{ctx.config.source}: partitions.usr_verity: too small for the hash tree "
            f"({hashes.stat().st_size / MiB:.1f} MiB)"
        )
    # Read it back once: the hash tree must verify the image it was made from.
    output(["veritysetup", "verify", img, hashes, ctx.roothash])
    log.info("  verity root hash %s", ctx.roothash)
