"""The image file: one table of settings, parsed once into a frozen ``ImageConfig``.

An image file is YAML::

    name: tidehost                 # image name, [a-z0-9-]
    version: 1.2.0                 # MAJOR.MINOR.PATCH
    channel: alpha                 # alpha | beta | stable
    suite: trixie                  # trixie (default) | bookworm
    mirror: null                   # Debian mirror URL; unset: mmdebstrap's own default
    kernel: linux-image-cloud-amd64
    packages: [openssh-server, ...]   # on top of what every Tidehost image needs to boot
    overlay: overlay/              # files copied over the tree (relative to the image file)
    kernel_cmdline: [console=ttyS0,115200]
    partitions: {esp: 256, usr: 768, usr_verity: 16, oem: 64, root: 1024}   # MiB
    usr_filesystem: squashfs       # squashfs | erofs (lz4hc)
    compression: zstd              # squashfs: zstd | xz
    compression_level: 19          # squashfs zstd level (1-22)
    compression_block_size: 1024   # squashfs block size in KiB: 4, 8, ... 1024
    fragments: true                # squashfs: pack small files and tails into shared blocks
    exclude: [/usr/share/doc/*, "!/usr/share/doc/*/copyright", /usr/bin/ctr]   # left out
    boot_tries: 3                  # tries a newly written slot gets
    formats: [raw, qcow2]
    channel_root: null             # a channel's root.json to bake into /usr (trust anchor)
    secure_boot: {keys: keys/}     # sign systemd-boot and the UKIs with the fleet's keys
                                   # (`tidehost keys init`); unset: unsigned UKIs
    bundle_format: 3               # 3: one UKI for both slots; 2: one UKI per slot (for hosts
                                   # whose agent takes no format 3); 1: kernel, initrd and
                                   # .conf entries, no UKIs (for agents that take only format 1)

``exclude`` is an ordered list of path globs (dpkg's ``path-exclude`` patterns, where ``*``
also matches ``/``); one that starts with ``!`` takes matching paths back in (``path-include``),
the last matching pattern wins. They are dpkg filters of the bootstrap, so they apply to every
file a package ships before /usr is made, and a file a package script would generate from
excluded sources is not made either (udev's hwdb.bin from hwdb.d). Without the field:
``DEFAULT_EXCLUDE`` (documentation, manual pages, translations; copyright files stay).

Every mistake is a ``ConfigError`` naming the file and the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from channels.bundle import CHANNELS
from channels.version import Version
from imagebuild.core.errors import ConfigError
from imagebuild.core.fields import boolean, enum, int_range, name, read_text, string, yaml_mapping
from imagebuild.core.files import data_file
from imagebuild.core.platforms import OutputFormat
from imagebuild.image.keys import check_key_dir

# What every Tidehost image needs to boot its A/B, verity-checked /usr and run the updater.
REQUIRED_PACKAGES = (
    "systemd", "systemd-sysv", "systemd-boot", "systemd-boot-efi", "systemd-cryptsetup",
    "systemd-resolved", "systemd-timesyncd", "udev", "dbus", "dracut", "zstd", "kmod",
    "e2fsprogs", "fdisk", "cryptsetup-bin", "iproute2", "ca-certificates", "sudo",
    "libnss-myhostname",
    "python3", "python3-requests", "python3-yaml", "python3-cryptography", "python3-tuf",
    "python3-zstandard",
    # TPM 2.0 for systemd (measured boot, systemd-creds with a signed PCR policy): it dlopens
    # these; the initrd gets them too (dracut-tidehost.conf)
    "libtss2-esys-3.0.2-0t64", "libtss2-rc0t64", "libtss2-mu-4.0.1-0t64",
    "libtss2-tcti-device0t64",
)  # fmt: skip


class Channel(StrEnum):
    ALPHA = "alpha"
    BETA = "beta"
    STABLE = "stable"


class Suite(StrEnum):
    TRIXIE = "trixie"
    BOOKWORM = "bookworm"


class UsrFilesystem(StrEnum):
    SQUASHFS = "squashfs"
    EROFS = "erofs"


class Compression(StrEnum):
    """The squashfs compressor of /usr (erofs images are lz4hc)."""

    ZSTD = "zstd"
    XZ = "xz"


# Left out of every tree unless the image file says otherwise: documentation, manual pages
# and translations (copyright files and the locale alias table stay).
DEFAULT_EXCLUDE = (
    "/usr/share/man/*",
    "/usr/share/doc/*",
    "!/usr/share/doc/*/copyright",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "!/usr/share/locale/locale.alias",
    "/usr/share/lintian/*",
)


@dataclass(frozen=True)
class Partitions:
    """Partition sizes in MiB."""

    esp: int = 256
    usr: int = 768
    usr_verity: int = 16
    oem: int = 64
    root: int = 1024


@dataclass(frozen=True)
class SecureBoot:
    """``secure_boot: {keys: DIR}``: systemd-boot, every UKI and the platforms' addons are
    signed with DIR's db, each UKI carries a PCR 11 policy signed with DIR's PCR key, and the
    ESP enrols PK, KEK and db on firmware in Setup Mode (``image.keys``)."""

    keys: Path


@dataclass(frozen=True)
class ImageConfig:
    source: str  # the image file's path (or "<built-in reference>"), for messages
    name: str = "tidehost"
    version: str = "0.1.0"
    channel: Channel = Channel.ALPHA
    suite: Suite = Suite.TRIXIE
    mirror: str | None = None
    kernel: str = "linux-image-cloud-amd64"
    packages: tuple[str, ...] = ()
    overlay: Path | None = None
    kernel_cmdline: tuple[str, ...] = ("console=ttyS0,115200",)
    partitions: Partitions = field(default_factory=Partitions)
    usr_filesystem: UsrFilesystem = UsrFilesystem.SQUASHFS
    compression: Compression = Compression.ZSTD
    compression_level: int = 19
    compression_block_size: int = 1024  # KiB
    fragments: bool = True
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    boot_tries: int = 3
    formats: tuple[OutputFormat, ...] = (OutputFormat.RAW, OutputFormat.QCOW2)
    channel_root: Path | None = None
    secure_boot: SecureBoot | None = None
    bundle_format: int = 3

    @property
    def all_packages(self) -> tuple[str, ...]:
        """Every package of the tree, sorted and unique: part of the root-tree cache key."""
        return tuple(sorted({*REQUIRED_PACKAGES, self.kernel, *self.packages}))

    @property
    def artifact_stem(self) -> str:
        return f"{self.name}-{self.version}"

    def with_overrides(self, **kw: Any) -> ImageConfig:
        """Apply command-line overrides, validating them like the file's fields."""
        values: dict[str, Any] = {}
        for key, raw in kw.items():
            if raw is None:
                continue
            flag = {"formats": "format"}.get(key, key).replace("_", "-")
            values[key] = _field_parser(key)(f"{self.source}: --{flag}", raw)
        return replace(self, **values)


# ---- field parsers: (where, raw) -> value; `where` names the file and field for errors ----

Parser = Callable[[str, Any], Any]
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def _version(where: str, raw: Any) -> str:
    try:
        return str(Version.parse(str(raw)))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _str_list(item: Parser) -> Parser:
    def parse(where: str, raw: Any) -> tuple[Any, ...]:
        if isinstance(raw, str):
            raw = [p for p in re.split(r"[,\s]+", raw) if p]
        if not isinstance(raw, list):
            raise ConfigError(f"{where}: expected a list, got {raw!r}")
        return tuple(item(f"{where}[{i}]", v) for i, v in enumerate(raw))

    return parse


def _package(where: str, raw: Any) -> str:
    s = string(where, raw)
    if not _PACKAGE.match(s):
        raise ConfigError(f"{where}: {s!r} is not a Debian package name")
    return s


def _mirror(where: str, raw: Any) -> str | None:
    if raw is None:
        return None
    s = string(where, raw)
    if not re.match(r"^(https?|file)://", s):
        raise ConfigError(f"{where}: {s!r} is not an http(s):// or file:// URL")
    return s


def _path_in(base: Path) -> Parser:
    def parse(where: str, raw: Any) -> Path | None:
        if raw is None:
            return None
        p = Path(string(where, raw))
        p = p if p.is_absolute() else base / p
        if not p.exists():
            raise ConfigError(f"{where}: {p} does not exist")
        return p

    return parse


_GLOB = re.compile(r"^!?/[^\s]*$")


def _exclude_glob(where: str, raw: Any) -> str:
    s = string(where, raw)
    if not _GLOB.match(s) or s.rstrip("*") in ("/", "!/", "/usr", "/usr/", "!/usr/"):
        raise ConfigError(f"{where}: {s!r} is not an absolute path glob like /usr/share/doc/* "
                          "(or !GLOB to take paths back in), nor all of / or /usr")
    return s


def _block_size(where: str, raw: Any) -> int:
    kib = int_range(4, 1024)(where, raw)
    if kib & (kib - 1):
        raise ConfigError(f"{where}: {kib} is not a power of two from 4 to 1024 (KiB)")
    return kib


def _partitions(where: str, raw: Any) -> Partitions:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of sizes in MiB")
    limits = {
        "esp": (64, 4096), "usr": (128, 65536), "usr_verity": (4, 4096), "oem": (16, 4096),
        "root": (64, 1 << 20),
    }  # fmt: skip
    values = {}
    for key, val in raw.items():
        if key not in limits:
            raise ConfigError(f"{where}.{key}: unknown partition (known: {', '.join(limits)})")
        values[key] = int_range(*limits[key])(f"{where}.{key}", val)
    return Partitions(**values)


def _secure_boot(base: Path) -> Parser:
    def parse(where: str, raw: Any) -> SecureBoot | None:
        if raw is None:
            return None
        if not isinstance(raw, Mapping) or "keys" not in raw:
            raise ConfigError(f"{where}: expected a mapping with keys: DIR (a key set made by "
                              "`tidehost keys init DIR`)")  # fmt: skip
        unknown = [k for k in raw if k != "keys"]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown field (known: keys)")
        d = Path(string(f"{where}.keys", raw["keys"]))
        d = d if d.is_absolute() else base / d
        return SecureBoot(keys=check_key_dir(d, f"{where}.keys"))

    return parse


def _field_parser(key: str, base: Path = Path(".")) -> Parser:
    table: dict[str, Parser] = {
        "name": name,
        "version": _version,
        "channel": enum(Channel),
        "suite": enum(Suite),
        "mirror": _mirror,
        "kernel": _package,
        "packages": _str_list(_package),
        "overlay": _path_in(base),
        "kernel_cmdline": _str_list(string),
        "partitions": _partitions,
        "usr_filesystem": enum(UsrFilesystem),
        "compression": enum(Compression),
        "compression_level": int_range(1, 22),
        "compression_block_size": _block_size,
        "fragments": boolean,
        "exclude": _str_list(_exclude_glob),
        "boot_tries": int_range(1, 9),
        "formats": _str_list(enum(OutputFormat)),
        "channel_root": _path_in(base),
        "secure_boot": _secure_boot(base),
        "bundle_format": int_range(1, 3),
    }
    return table[key]


SETTINGS = tuple(f.name for f in fields(ImageConfig) if f.name != "source")
assert set(CHANNELS) == {c.value for c in Channel}


def parse_image_file(path: Path | None) -> ImageConfig:
    """Parse an image file (None: the built-in reference image)."""
    if path is None:
        text = data_file("imagebuild.image.data", "reference.yaml").read_text()
        return parse_image_text(text, "<reference image>", Path("."))
    path = Path(path)
    return parse_image_text(read_text(path, "image file"), str(path), path.parent)


def parse_image_text(text: str, source: str, base: Path) -> ImageConfig:
    raw = yaml_mapping(text, source, "image file", empty_ok=True)
    values: dict[str, Any] = {}
    for key, val in raw.items():
        if key not in SETTINGS:
            raise ConfigError(f"{source}: {key}: unknown field (known: {', '.join(SETTINGS)})")
        values[key] = _field_parser(key, base)(f"{source}: {key}", val)
    if "formats" in values and not values["formats"]:
        raise ConfigError(f"{source}: formats: name at least one output format")
    if values.get("bundle_format") == 1 and values.get("secure_boot"):
        raise ConfigError(f"{source}: secure_boot: needs bundle_format 2 or 3 (signed UKIs)")
    return ImageConfig(source=source, **values)
