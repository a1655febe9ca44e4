"""The release bundle: the contract between ``imagebuild``, ``channels`` and ``updater``.

A release bundle is a directory ``<name>-<version>.release/`` holding exactly these files
(``files_for(format)``)::

    manifest.json   this module's ``Manifest``, JSON, UTF-8
    usr.img         the read-only /usr filesystem (squashfs or erofs), written as-is to a
                    USR-A or USR-B partition; its length is the dm-verity data size
    usr.verity      the dm-verity hash tree *with* its superblock (``veritysetup format``
                    output), written as-is to that slot's USR-x-VERITY partition
  format 3 (what the build writes):
    uki.efi         the release's unified kernel image (kernel, initrd, command line,
                    os-release; signed for Secure Boot when the image has keys), written
                    to the ESP as EFI/Linux/tidehost-<slot>+<tries>.efi (``uki_entry_name``)
                    for whichever slot holds the release
  format 2 (still accepted):
    uki-a.efi       one UKI per slot, each with that slot's command line
    uki-b.efi
  format 1 (still accepted):
    vmlinuz         the kernel, copied to the ESP as /tidehost/<slot>/vmlinuz
    initrd          the initrd, copied to the ESP as /tidehost/<slot>/initrd

A UKI's command line is signed, and the host never signs. A format-2 UKI names its slot's
partitions (by label), so that release carries one per slot. A format-3 UKI names no slot:
its command line carries only ``usrhash=``, and systemd's veritysetup generator finds the
/usr data and hash partitions by the GPT partition UUIDs that hash derives
(``usr_partuuids``: the first and the last 128 bits, as the Discoverable Partitions
Specification and systemd-repart have them). The build gives slot A those UUIDs, and the
agent gives them to the slot it writes: one UKI boots either slot, and a release is one
UKI smaller.

``manifest.json``::

    {
      "format": 3,                        # or 2, 1
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
      "db_sha256": "<64 hex>" | "",       # formats 2, 3: the db certificate that signed the UKIs
      "pcr_public_key_sha256": "<64 hex>" | ""   # formats 2, 3: the PCR 11 policy's key
    }

Unknown top-level keys are kept (``extra``) so a newer manifest survives a round trip.

The host side of the contract: GPT partition labels ``USR-A``/``USR-A-VERITY`` and
``USR-B``/``USR-B-VERITY``, ``ROOT`` and ``ESP`` (mounted at /efi); one Boot Loader
Specification entry per slot, built only by ``boot_entry`` (format 1, type #1 entries) and
``uki_entry_name`` (formats 2 and 3, type #2 entries) in ``channels.entries``, so the image
build and the updater write the very same entries.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
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

FORMAT = 3  # what the build writes
FORMATS = (1, 2, 3)  # what readers accept
MANIFEST = "manifest.json"
FILES = ("usr.img", "usr.verity", "vmlinuz", "initrd")  # format 1
FILES_V2 = ("usr.img", "usr.verity", "uki-a.efi", "uki-b.efi")
FILES_V3 = ("usr.img", "usr.verity", "uki.efi")
SHARED_UKI = "uki.efi"  # format 3: the one UKI of both slots
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
    db_sha256: str = ""  # formats 2, 3: who signed the UKIs ("" unsigned)
    pcr_public_key_sha256: str = ""  # formats 2, 3: the PCR policy's key ("" none)

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
                raise bad(fld, "a format-1 manifest names no signing keys")
            if not isinstance(value, str) or (value and not _HEX64.match(value)):
                raise bad(fld, "not empty or 64 lowercase hex digits")
        for fname, info in self.files.items():
            if (not is_int(info.size) or info.size < 0 or not isinstance(info.sha256, str)
                    or not _HEX64.match(info.sha256)):
                raise bad(f"files.{fname}", "needs a whole-number size and a 64-hex sha256")

    @property
    def uki(self) -> bool:
        """Whether the release boots from unified kernel images (formats 2 and 3)."""
        return self.format >= 2

    @property
    def shared_uki(self) -> bool:
        """Whether one UKI boots either slot (format 3: the slots are found by root hash)."""
        return self.format >= 3

    def uki_file(self, slot: Slot) -> str:
        """The bundle's file holding ``slot``'s UKI."""
        return uki_file(slot, self.format)

    @property
    def uki_files(self) -> tuple[str, ...]:
        """The bundle's UKI files, each once."""
        return tuple(dict.fromkeys(self.uki_file(s) for s in Slot)) if self.uki else ()

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
    return FILES_V3 if fmt >= 3 else FILES_V2 if fmt == 2 else FILES


def uki_file(slot: Slot, fmt: int) -> str:
    """The file of a format-``fmt`` bundle (2 or 3) that holds ``slot``'s UKI."""
    return SHARED_UKI if fmt >= 3 else f"uki-{slot.value}.efi"


def usr_partuuids(roothash: str) -> tuple[str, str]:
    """The GPT partition UUIDs under which systemd's veritysetup generator looks for the
    /usr data and hash partitions of ``usrhash=roothash`` when the command line names no
    device: the root hash's first and last 128 bits, as UUID text (pure)."""
    if not _HEX64.match(roothash):
        raise BundleError(f"root hash {roothash[:16]!r}… is not 64 lowercase hex digits")
    return str(uuid.UUID(roothash[:32])), str(uuid.UUID(roothash[-32:]))


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
