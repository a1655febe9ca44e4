"""Platform outputs: Vagrant boxes and cloud images, each from a copy of the raw disk with
that platform's OEM partition and factory boot entry (``imagebuild.image.platforms.oem``).

``make_platforms(ctx)`` is the build's platform step (``image.pipeline``): it calls
``make(ctx, fmt, raw)`` once per platform format of the image file, which returns
``{artifact: path inside ctx.work}``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imagebuild.core.errors import ConfigError
from imagebuild.core.log import complete_step
from imagebuild.core.platforms import OutputFormat
from imagebuild.image.context import Artifacts, BuildContext
from imagebuild.image.platforms import cloud, vagrant_box
from imagebuild.image.platforms.disk import platform_disk
from imagebuild.image.platforms.oem import spec_for

__all__ = ["make", "make_platforms"]


def _vagrant_libvirt(ctx: BuildContext, disk: Path) -> Artifacts:
    box = ctx.work / f"{ctx.config.artifact_stem}-vagrant-libvirt.box"
    return {OutputFormat.VAGRANT_LIBVIRT: vagrant_box.libvirt_box(ctx, disk, box)}


def _vagrant_virtualbox(ctx: BuildContext, disk: Path) -> Artifacts:
    box = ctx.work / f"{ctx.config.artifact_stem}-vagrant-virtualbox.box"
    return {OutputFormat.VAGRANT_VIRTUALBOX: vagrant_box.virtualbox_box(ctx, disk, box)}


MAKERS: dict[OutputFormat, Callable[[BuildContext, Path], Artifacts]] = {
    OutputFormat.VAGRANT_LIBVIRT: _vagrant_libvirt,
    OutputFormat.VAGRANT_VIRTUALBOX: _vagrant_virtualbox,
    OutputFormat.GCE: cloud.gce,
    OutputFormat.EC2: cloud.ec2,
    OutputFormat.DIGITALOCEAN: cloud.digitalocean,
}


def make_platforms(ctx: BuildContext) -> None:
    """Every platform format of the image file, from the generic raw disk."""
    raw = ctx.artifacts[OutputFormat.RAW]
    for fmt in ctx.config.formats:
        if fmt.is_platform:
            ctx.artifacts.update(make(ctx, fmt, raw))


def make(ctx: BuildContext, fmt: OutputFormat | str, raw: Path) -> Artifacts:
    """Make ``fmt``'s artifacts from the generic raw disk ``raw`` (left unchanged).

    Raises:
        ConfigError: ``fmt`` is not a platform format.
        StageError / ToolMissingError: a tool failed or is missing.
    """
    spec = spec_for(fmt)
    fmt = OutputFormat(fmt)
    if fmt not in MAKERS:
        raise ConfigError(f"{fmt.value!r} is not a platform output format")
    with complete_step(f"{fmt.value} ({spec.title} OEM)"):
        disk = platform_disk(ctx, spec, raw)
        return MAKERS[fmt](ctx, disk)
