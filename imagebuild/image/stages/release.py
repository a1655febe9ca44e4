"""Stage: the release bundle (see ``channels.bundle`` for its format, the contract)."""

from __future__ import annotations

import logging

from channels.bundle import MANIFEST, FileInfo, Manifest, Slot, files_for, sha256_file
from channels.entries import slot_cmdline
from imagebuild.image.context import Artifact, BuildContext
from imagebuild.image.keys import SigningKeys

log = logging.getLogger(__name__)
_UNKNOWN = FileInfo(size=0, sha256="0" * 64)


def manifest(ctx: BuildContext, files: dict[str, FileInfo], fmt: int,
             keys: SigningKeys | None = None) -> Manifest:  # fmt: skip
    c = ctx.config
    signed = {"db_sha256": keys.db_sha256, "pcr_public_key_sha256": keys.pcr_public_sha256} \
        if keys else {}  # fmt: skip
    return Manifest(
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
        format=fmt,
        **signed,
    )


def uki_cmdlines(ctx: BuildContext) -> dict[str, str]:
    """Each UKI of the release and the command line it embeds (before the UKIs exist): one
    for both slots in format 3, one per slot in format 2."""
    fmt = ctx.config.bundle_format
    draft = manifest(ctx, {name: _UNKNOWN for name in files_for(fmt)}, fmt)
    return {draft.uki_file(slot): slot_cmdline(draft, slot) for slot in Slot}


def write_manifest(ctx: BuildContext, fmt: int, keys: SigningKeys | None = None) -> None:
    """``parts/manifest.json`` over the files of a format-``fmt`` bundle in ``parts``."""
    files = {name: FileInfo(size=(ctx.parts / name).stat().st_size,
                            sha256=sha256_file(ctx.parts / name))
             for name in files_for(fmt)}  # fmt: skip
    (ctx.parts / MANIFEST).write_text(manifest(ctx, files, fmt, keys).to_json())


def assemble_bundle(ctx: BuildContext) -> None:
    """Gather the bundle's files in ``work/<name>-<version>.release`` (hard links)."""
    bundle = ctx.work / f"{ctx.config.artifact_stem}.release"
    bundle.mkdir()
    fmt = Manifest.from_json((ctx.parts / MANIFEST).read_text()).format
    for name in (*files_for(fmt), MANIFEST):
        (bundle / name).hardlink_to(ctx.parts / name)
    ctx.artifacts[Artifact.RELEASE] = bundle
