"""The release bundle: the contract between ``imagebuild``, ``channels`` and ``updater``.

A release bundle is a directory ``<name>-<version>.release/`` holding exactly these files
(``files_for(format)``)::

    manifest.json   this module's ``Manifest``, JSON, UTF-8
    usr.img         the read-only /usr filesystem (squashfs or erofs), written as-is to a
                    USR-A or USR-B partition; its length is the dm-verity data size
    usr.verity      the dm-verity hash tree *with* its superblock (``veritysetup format``
                    output), written as-is to that slot's USR-x-VERITY partition
  format 2 (what the build writes):
    uki-a.efi       slot A's unified kernel image (kernel, initrd, slot A's command line,
    uki-b.efi       os-release; signed for Secure Boot when the image has keys), written
                    to the ESP as EFI/Linux/tidehost-<slot>+<tries>.efi (``uki_entry_name``)
  format 1 (still accepted: today's fleet updates onto UKIs through it):
    vmlinuz         the kernel, copied to the ESP as /tidehost/<slot>/vmlinuz
    initrd          the initrd, copied to the ESP as /tidehost/<slot>/initrd

A UKI carries its slot's command line, signed, and the host never signs: so a format-2
release carries one UKI per slot, and the agent writes the one of the slot it fills.

``manifest.json``::

    {
      "format": 2,                        # or 1
      "name": "tidehost",                 # image name, [a-z0-9-]
      "version": "1.2.0",                 # MAJOR.MINOR.PATCH, see channels.version
      "channel": "alpha",                 # the channel it was built for
      "build_id": "20261122T031500Z-1a2b3c4d",
      "arch": "x86-64",
      "suite": "trixie",                  # the Debian suite of /usr
      "usr_filesystem": "squashfs",       # or "erofs": the type of usr.img
      "roothash": "<64 hex>",             # dm-verity root hash of usr.img over usr.verity
      "kernel_cmdline": "console=ttyS0",  # extra kernel arguments from the image file
      "boot_tries": 3,                    # tries a freshly written slot gets
      "files": {"usr.img": {"size": 123, "sha256": "<64 hex>"}, ...}   # all four files
      "db_sha256": "<64 hex>" | "",       # format 2: the db certificate that signed the UKIs
      "pcr_public_key_sha256": "<64 hex>" | ""   # format 2: the PCR 11 policy's signing key
    }

Unknown top-level keys are kept (``extra``) so a newer manifest survives a round trip.

The host side of the contract: GPT partition labels ``USR-A``/``USR-A-VERITY`` and
``USR-B``/``USR-B-VERITY``, ``ROOT`` and ``ESP`` (mounted at /efi); one Boot Loader
Specification entry per slot, built only by ``boot_entry`` (format 1, type #1 entries) and
``uki_entry_name`` (format 2, type #2 entries) below, so the image build and the updater
write the very same entries.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from channels.errors import BundleError
from channels.text import (  # noqa: F401 - re-exported: the names importers use
    control_character,
    is_int,
)
from channels.version import Version

FORMAT = 2  # what the build writes
FORMATS = (1, 2)  # what readers accept
MANIFEST = "manifest.json"
FILES = ("usr.img", "usr.verity", "vmlinuz", "initrd")  # format 1
FILES_V2 = ("usr.img", "usr.verity", "uki-a.efi", "uki-b.efi")
UKI_DIR = "EFI/Linux"  # type #2 entries, relative to the ESP's root
CHANNELS = ("alpha", "beta", "stable")
ESP_MOUNT = "/efi"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TEXT_FIELDS = ("name", "version", "channel", "build_id", "arch", "suite", "usr_filesystem",
                "roothash", "kernel_cmdline")


class Slot(StrEnum):
    """One of the two /usr slots."""

    A = "a"
    B = "b"

    @property
    def usr_label(self) -> str:
        return f"USR-{self.name}"

    @property
    def verity_label(self) -> str:
        return f"USR-{self.name}-VERITY"

    @property
    def other(self) -> Slot:
        return Slot.B if self is Slot.A else Slot.A

    @property
    def esp_dir(self) -> str:
        """The slot's directory on the ESP, relative to the ESP's root."""
        return f"tidehost/{self.value}"


@dataclass(frozen=True)
class FileInfo:
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    channel: str
    build_id: str
    arch: str
    suite: str
    usr_filesystem: str
    roothash: str
    kernel_cmdline: str
    boot_tries: int
    files: Mapping[str, FileInfo]
    extra: Mapping[str, Any] = field(default_factory=dict)
    format: int = 1
    db_sha256: str = ""  # format 2: who signed the UKIs ("" unsigned)
    pcr_public_key_sha256: str = ""  # format 2: the PCR policy's key ("" none)

    def __post_init__(self) -> None:
        def bad(fld: str, why: str) -> BundleError:
            return BundleError(f"{MANIFEST}: field '{fld}': {why}")

        for fld in _TEXT_FIELDS:
            value = getattr(self, fld)
            if not isinstance(value, str):
                raise bad(fld, f"{value!r} is not a string")
            ch = control_character(value)
            if ch is not None:
                raise bad(fld, f"contains the control character {ch}")
        if not _NAME.match(self.name):
            raise bad("name", f"{self.name!r} is not a lowercase name of [a-z0-9-]")
        try:
            Version.parse(self.version)
        except ValueError as e:
            raise bad("version", str(e)) from None
        if self.channel not in CHANNELS:
            raise bad("channel", f"{self.channel!r} is not one of {', '.join(CHANNELS)}")
        if self.usr_filesystem not in ("squashfs", "erofs"):
            raise bad("usr_filesystem", f"{self.usr_filesystem!r} is not squashfs or erofs")
        if not _HEX64.match(self.roothash):
            raise bad("roothash", "not 64 lowercase hex digits")
        if not is_int(self.boot_tries) or not 1 <= self.boot_tries <= 9:
            raise bad("boot_tries", f"{self.boot_tries!r} is not a whole number from 1 to 9")
        if not is_int(self.format) or self.format not in FORMATS:
            raise bad("format", f"{self.format!r} is not one of {', '.join(map(str, FORMATS))}")
        names = files_for(self.format)
        if set(self.files) != set(names):
            raise bad("files", f"must list exactly {', '.join(names)}")
        for fld in ("db_sha256", "pcr_public_key_sha256"):
            value = getattr(self, fld)
            if self.format == 1 and value:
                raise bad(fld, "only a format-2 manifest names signing keys")
            if not isinstance(value, str) or (value and not _HEX64.match(value)):
                raise bad(fld, "not empty or 64 lowercase hex digits")
        for fname, info in self.files.items():
            if (not is_int(info.size) or info.size < 0 or not isinstance(info.sha256, str)
                    or not _HEX64.match(info.sha256)):
                raise bad(f"files.{fname}", "needs a whole-number size and a 64-hex sha256")

    @property
    def uki(self) -> bool:
        """Whether the release boots from unified kernel images (format 2)."""
        return self.format >= 2

    @property
    def parsed_version(self) -> Version:
        return Version.parse(self.version)

    @property
    def bundle_name(self) -> str:
        return f"{self.name}-{self.version}.release"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        d.update(
            format=self.format,
            name=self.name,
            version=self.version,
            channel=self.channel,
            build_id=self.build_id,
            arch=self.arch,
            suite=self.suite,
            usr_filesystem=self.usr_filesystem,
            roothash=self.roothash,
            kernel_cmdline=self.kernel_cmdline,
            boot_tries=self.boot_tries,
            files={k: v.to_dict() for k, v in sorted(self.files.items())},
        )
        if self.uki:
            d.update(db_sha256=self.db_sha256, pcr_public_key_sha256=self.pcr_public_key_sha256)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        if not isinstance(d, Mapping):
            raise BundleError(f"{MANIFEST}: not a JSON object")
        fmt = d.get("format")
        if not is_int(fmt) or fmt not in FORMATS:
            raise BundleError(f"{MANIFEST}: field 'format': {fmt!r} is not one of "
                              f"{', '.join(map(str, FORMATS))}")
        known = (
            "name version channel build_id arch suite usr_filesystem roothash "
            "kernel_cmdline boot_tries files"
        ).split() + (["db_sha256", "pcr_public_key_sha256"] if fmt >= 2 else [])
        for k in known:
            if k not in d:
                raise BundleError(f"{MANIFEST}: field '{k}' is missing")
        files_raw = d["files"]
        if not isinstance(files_raw, Mapping):
            raise BundleError(f"{MANIFEST}: field 'files': not an object")
        files: dict[str, FileInfo] = {}
        for fname, info in files_raw.items():
            if not isinstance(info, Mapping) or not is_int(info.get("size")) or not isinstance(
                    info.get("sha256"), str):
                why = "needs a whole-number size and a sha256 string"
                raise BundleError(f"{MANIFEST}: field 'files.{fname}': {why}")
            files[fname] = FileInfo(size=info["size"], sha256=info["sha256"])
        extra = {k: v for k, v in d.items() if k not in known and k != "format"}
        return cls(
            **{k: d[k] for k in known if k != "files"},
            files=files,
            extra=extra,
            format=fmt,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            return cls.from_dict(json.loads(text))
        except UnicodeDecodeError as e:
            raise BundleError(f"{MANIFEST}: not UTF-8 ({e.reason} at byte {e.start})") from None
        except RecursionError:
            raise BundleError(f"{MANIFEST}: nested too deeply") from None
        except json.JSONDecodeError as e:
            raise BundleError(f"{MANIFEST}: not valid JSON ({e.msg}, line {e.lineno})") from None


def files_for(fmt: int) -> tuple[str, ...]:
    """The files (besides manifest.json) a bundle of format ``fmt`` holds."""
    return FILES_V2 if fmt >= 2 else FILES


def uki_file(slot: Slot) -> str:
    """The bundle's file holding ``slot``'s UKI (format 2)."""
    return f"uki-{slot.value}.efi"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_bundle(directory: Path, *, verify: bool = True) -> Manifest:
    """Read a bundle's manifest and (by default) check every file's size and sha256.

    Raises:
        BundleError: the directory, manifest or a file is missing, malformed or mismatched.
    """
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{directory}: not a release bundle (no {MANIFEST})")
    try:
        manifest = Manifest.from_json(mpath.read_bytes())
    except BundleError as e:
        raise BundleError(f"{directory}/{e}") from None
    if verify:
        for fname, info in manifest.files.items():
            path = directory / fname
            if not path.is_file():
                raise BundleError(f"{path}: missing from the bundle")
            size = path.stat().st_size
            if size != info.size:
                raise BundleError(f"{path}: size {size} does not match the manifest's {info.size}")
            if sha256_file(path) != info.sha256:
                raise BundleError(f"{path}: sha256 does not match the manifest")
    return manifest


OEM_MOUNT = "/oem"
OEM_CMDLINE = "cmdline"  # on the OEM partition: the platform's extra kernel arguments


def read_oem_cmdline(oem_dir: Path = Path(OEM_MOUNT)) -> str:
    """The platform's kernel arguments kept on the host's OEM partition ("" if none)."""
    try:
        return " ".join((oem_dir / OEM_CMDLINE).read_text().split())
    except OSError:
        return ""


def slot_cmdline(manifest: Manifest, slot: Slot, extra: str = "") -> str:
    """The kernel command line that boots ``slot`` holding ``manifest``'s /usr.

    The initrd (dracut, systemd) opens USR-x with its verity partition under the root hash,
    mounts it read-only as /usr, and mounts ROOT as /. ``extra`` is the platform's (OEM)
    arguments, appended last so they win.
    """
    args = [
        "root=PARTLABEL=ROOT",
        "rw",
        "mount.usr=/dev/mapper/usr",
        f"mount.usrfstype={manifest.usr_filesystem}",
        "mount.usrflags=ro",
        f"usrhash={manifest.roothash}",
        f"systemd.verity_usr_data=PARTLABEL={slot.usr_label}",
        f"systemd.verity_usr_hash=PARTLABEL={slot.verity_label}",
        f"tidehost.slot={slot.value}",
        "rd.emergency=reboot",
        "panic=10",
        "oops=panic",  # an Oops leaves a half-dead kernel: reboot (a slot on trial falls back)
    ]
    if manifest.kernel_cmdline:
        args.append(manifest.kernel_cmdline)
    if extra:
        args.append(extra)
    return " ".join(args)


@dataclass(frozen=True)
class BootEntry:
    filename: str  # relative to loader/entries/ on the ESP
    text: str
    kernel: str  # ESP-relative path the entry boots
    initrd: str


def entry_stem(slot: Slot) -> str:
    return f"tidehost-{slot.value}"


def boot_entry(
    manifest: Manifest, slot: Slot, tries: int | None, extra_cmdline: str = ""
) -> BootEntry:
    """The Boot Loader Specification entry for ``slot``.

    ``tries`` is the boot-counting budget (``tidehost-b+3.conf``); None gives an entry without
    a counter (the factory slot, or a slot already blessed).  systemd-boot sorts entries by
    ``sort-key`` and then by ``version``, newest first, so the newer slot is preferred while
    it has tries left. ``extra_cmdline``: see ``slot_cmdline``.
    """
    if tries is not None and (not is_int(tries) or not 0 <= tries <= 99):
        raise BundleError(f"boot entry of slot {slot.name}: tries {tries!r} is not a whole "
                          "number from 0 to 99")
    stem = entry_stem(slot)
    filename = f"{stem}.conf" if tries is None else f"{stem}+{tries}.conf"
    kernel = f"/{slot.esp_dir}/vmlinuz"
    initrd = f"/{slot.esp_dir}/initrd"
    lines = (
        ("title", f"{manifest.name} {manifest.version} (slot {slot.name})"),
        ("sort-key", manifest.name),
        ("version", manifest.version),
        ("linux", kernel),
        ("initrd", initrd),
        ("options", slot_cmdline(manifest, slot, extra_cmdline)),
    )
    for key, value in lines:  # one line per key, whatever a manifest or OEM file holds
        ch = control_character(value)
        if ch is not None:
            raise BundleError(f"boot entry {filename}: '{key}' would contain the control "
                              f"character {ch}; refusing to write it")
    text = "".join(f"{key} {value}\n" for key, value in lines)
    return BootEntry(filename=filename, text=text, kernel=kernel, initrd=initrd)


def uki_entry_name(slot: Slot, tries: int | None) -> str:
    """The type #2 entry of ``slot`` in ``EFI/Linux/`` on the ESP: ``tidehost-b+3.efi`` with
    ``tries`` left to boot it, ``tidehost-a.efi`` without a counter (the factory slot, or one
    already blessed). systemd-boot takes the entry's sort key and version from the UKI's
    os-release (``IMAGE_ID``, ``IMAGE_VERSION``), so the newer slot is preferred while it
    has tries left, as with type #1 entries."""
    if tries is not None and (not is_int(tries) or not 0 <= tries <= 99):
        raise BundleError(f"boot entry of slot {slot.name}: tries {tries!r} is not a whole "
                          "number from 0 to 99")
    stem = entry_stem(slot)
    return f"{stem}.efi" if tries is None else f"{stem}+{tries}.efi"
