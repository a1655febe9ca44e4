"""Stage: /usr as a read-only filesystem image, plus its dm-verity hash tree."""

from __future__ import annotations

import logging
import os

from imagebuild.core.errors import ConfigError, StageError
from imagebuild.core.run import output, require, run
from imagebuild.image.config import UsrFilesystem
from imagebuild.image.context import BuildContext

log = logging.getLogger(__name__)
MiB = 1 << 20


def make_usr_image(ctx: BuildContext) -> None:
    c = ctx.config
    img = ctx.parts / "usr.img"
    img.unlink(missing_ok=True)
    if c.usr_filesystem is UsrFilesystem.SQUASHFS:
        require("mksquashfs")
        run(["mksquashfs", ctx.tree / "usr", img, "-noappend", "-quiet", "-no-progress",
             "-comp", "zstd", "-Xcompression-level", str(c.compression_level), "-b", "1M",
             "-processors", str(os.cpu_count() or 1)])  # fmt: skip
    else:
        require("mkfs.erofs")
        run(["mkfs.erofs", "--quiet", "-zlz4hc", img, ctx.tree / "usr"])
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
    run(["veritysetup", "format", img, hashes, f"--root-hash-file={roothash_file}"],
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
