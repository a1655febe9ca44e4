"""One table of the platforms Tidehost hosts run on.

Each row is one cloud-init *provider* (``tidehost cloud-config render --provider``) with the
output formats made for it (``tidehost build --format``), the cloud-init ``datasource_list``
its hosts use, whether a metadata service tells a host its own address, and, for the
platforms whose disks carry an OEM partition of their own, the OEM's title and kernel
console arguments (``imagebuild.image.platforms.oem``). ``nocloud`` is the generic disk
(raw, qcow2) booted with a NoCloud seed, as ``tidehost vm`` does.

``Oem`` (one OEM content per platform disk; both Vagrant boxes share one) and the box
providers of Vagrant (``BoxProvider``: the boxes, the catalogs, ``vagrant init --provider``)
are derived from or tied to this table, so every fact is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OutputFormat(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"
    VAGRANT_LIBVIRT = "vagrant-libvirt"
    VAGRANT_VIRTUALBOX = "vagrant-virtualbox"
    GCE = "gce"
    EC2 = "ec2"
    DIGITALOCEAN = "digitalocean"

    @property
    def provider(self) -> Provider:
        """The platform this format's disk is made for."""
        return _FORMAT_PROVIDER[self]

    @property
    def is_platform(self) -> bool:
        """A cloud or Vagrant artifact, made from the raw disk with that platform's OEM."""
        return PLATFORMS[self.provider].has_oem

    @property
    def box_provider(self) -> BoxProvider | None:
        """The Vagrant provider of a box format (None for every other format)."""
        return next((b for b in BoxProvider if b.output_format is self), None)


class BoxProvider(StrEnum):
    """Vagrant's providers that Tidehost makes boxes for."""

    LIBVIRT = "libvirt"
    VIRTUALBOX = "virtualbox"

    @property
    def output_format(self) -> OutputFormat:
        return OutputFormat(f"vagrant-{self.value}")


class Provider(StrEnum):
    EC2 = "ec2"
    GCE = "gce"
    DIGITALOCEAN = "digitalocean"
    VAGRANT = "vagrant"
    NOCLOUD = "nocloud"

    def has_metadata_service(self) -> bool:
        """True where a metadata service tells the host its own address and hostname."""
        return PLATFORMS[self].metadata_service


@dataclass(frozen=True)
class Platform:
    provider: Provider
    title: str
    formats: tuple[OutputFormat, ...]  # the output formats whose disks are made for it
    datasources: tuple[str, ...]  # cloud-init datasource_list, in order, ending in None
    console: tuple[str, ...] = ()  # the OEM's kernel consoles (last is /dev/console); (): no OEM
    extra: tuple[str, ...] = ()  # other kernel arguments the platform needs
    metadata_service: bool = False

    @property
    def has_oem(self) -> bool:
        """Its disks carry an OEM partition of their own (the generic disk's is empty)."""
        return bool(self.console)


# Serial console last, so /dev/console (and the tests' serial log) is ttyS0.
_SERIAL = "console=ttyS0,115200n8"
_F, _P = OutputFormat, Provider
PLATFORMS: dict[Provider, Platform] = {
    # Nitro instances expose EBS as NVMe: never time out I/O (as Amazon Linux does).
    _P.EC2: Platform(_P.EC2, "Amazon EC2", (_F.EC2,), ("Ec2", "None"), ("console=tty0", _SERIAL),
                     ("nvme_core.io_timeout=4294967295",), metadata_service=True),
    _P.GCE: Platform(_P.GCE, "Google Compute Engine", (_F.GCE,), ("GCE", "None"), (_SERIAL,),
                     metadata_service=True),
    # ConfigDrive before anything else: DigitalOcean breaks when NoCloud precedes it.
    _P.DIGITALOCEAN: Platform(_P.DIGITALOCEAN, "DigitalOcean", (_F.DIGITALOCEAN,),
                              ("ConfigDrive", "DigitalOcean", "None"), ("console=tty0", _SERIAL),
                              metadata_service=True),
    _P.VAGRANT: Platform(_P.VAGRANT, "Vagrant (libvirt, VirtualBox)",
                         (_F.VAGRANT_LIBVIRT, _F.VAGRANT_VIRTUALBOX), ("NoCloud", "None"),
                         ("console=tty0", _SERIAL)),
    _P.NOCLOUD: Platform(_P.NOCLOUD, "the generic disk (QEMU, a NoCloud seed)",
                         (_F.RAW, _F.QCOW2), ("NoCloud", "None")),
}  # fmt: skip

_FORMAT_PROVIDER: dict[OutputFormat, Provider] = {
    f: p for p, row in PLATFORMS.items() for f in row.formats
}
assert set(_FORMAT_PROVIDER) == set(OutputFormat), "every output format is made for a platform"
assert all(b.output_format.provider is Provider.VAGRANT for b in BoxProvider)

Oem = StrEnum("Oem", [(p.name, p.value) for p, row in PLATFORMS.items() if row.has_oem])
Oem.__doc__ = "One OEM content per platform disk (the providers with an OEM of their own)."
Oem.__module__ = __name__
