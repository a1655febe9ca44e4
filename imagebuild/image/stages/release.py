"""Stage: the release bundle (see ``channels.bundle`` for its format, the contract)."""

from __future__ import annotations

import logging

from channels.bundle import FILES, MANIFEST, FileInfo, Manifest, sha256_file
from imagebuild.image.context import Artifact, BuildContext

log = logging.getLogger(__name__)


def write_manifest(ctx: BuildContext) -> None:
    c = ctx.config
    files = {
        name: FileInfo(size=(ctx.parts / name).stat().st_size, sha256=sha256_file(ctx.parts / name))
        for name in FILES
    }
    manifest = Manifest(
        name=c.name,
        version=c.version,
        channel=c.channel.value,
        build_id=ctx.build_id,
        arch="x86-64",
        suite=c.suite.value,
        usr_filesystem=c.usr_filesystem.value,
        roothash=ctx.roothash,
        kernel_cmdline=" ".join(c.kernel_cmdline),
        boot_tries=c.boot_tries,
        files=files,
        extra={"kernel_version": ctx.kernel_version},
    )
    (ctx.parts / MANIFEST).write_text(manifest.to_json())


def assemble_bundle(ctx: BuildContext) -> None:
    """Gather the bundle's files in ``work/<name>-<version>.release`` (hard links)."""
    bundle = ctx.work / f"{ctx.config.artifact_stem}.release"
    bundle.mkdir()
    for name in (*FILES, MANIFEST):
        (bundle / name).hardlink_to(ctx.parts / name)
    ctx.artifacts[Artifact.RELEASE] = bundle
