"""Platform outputs: Vagrant boxes and cloud images, each from a copy of the raw disk with
that platform's OEM partition and factory boot entry (``imagebuild.image.platforms.oem``).

``make(ctx, fmt, raw)`` is called by ``imagebuild.image.stages.disk.convert_formats`` once per
platform format and returns ``{artifact kind: path inside ctx.work}``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imagebuild.core.errors import ConfigError
from imagebuild.core.log import complete_step
from imagebuild.image.config import OutputFormat
from imagebuild.image.context import BuildContext
from imagebuild.image.platforms import cloud, vagrant_box
from imagebuild.image.platforms.disk import platform_disk
from imagebuild.image.platforms.oem import spec_for

__all__ = ["make"]


def _vagrant_libvirt(ctx: BuildContext, disk: Path) -> dict[str, Path]:
    box = ctx.work / f"{ctx.config.artifact_stem}-vagrant-libvirt.box"
    return {"vagrant-libvirt": vagrant_box.libvirt_box(ctx, disk, box)}


def _vagrant_virtualbox(ctx: BuildContext, disk: Path) -> dict[str, Path]:
    box = ctx.work / f"{ctx.config.artifact_stem}-vagrant-virtualbox.box"
    return {"vagrant-virtualbox": vagrant_box.virtualbox_box(ctx, disk, box)}


MAKERS: dict[OutputFormat, Callable[[BuildContext, Path], dict[str, Path]]] = {
    OutputFormat.VAGRANT_LIBVIRT: _vagrant_libvirt,
    OutputFormat.VAGRANT_VIRTUALBOX: _vagrant_virtualbox,
    OutputFormat.GCE: cloud.gce,
    OutputFormat.EC2: cloud.ec2,
    OutputFormat.DIGITALOCEAN: cloud.digitalocean,
}


def make(ctx: BuildContext, fmt: OutputFormat | str, raw: Path) -> dict[str, Path]:
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
