"""Fixtures of the verified-boot tests: a fleet key set (made once, with the real openssl and
efitools) and tiny PE files that sbsign signs like a UKI (made in Python, in milliseconds)."""

from __future__ import annotations

import json
import re
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from channels.bundle import SHARED_UKI, Slot, files_for, sha256_file, uki_file
from imagebuild.image.keys import init_keys

SECTION_ALIGN, FILE_ALIGN = 0x1000, 0x200


def tiny_pe(sections: dict[str, bytes] | None = None) -> bytes:
    """A minimal PE32+ EFI application with these sections (default: a 16-byte .text)."""
    sections = sections or {".text": b"\xc3" * 16}
    nsect, opt_size = len(sections), 112 + 16 * 8
    headers = 0x40 + 4 + 20 + opt_size + 40 * nsect
    size_of_headers = -(-headers // FILE_ALIGN) * FILE_ALIGN
    table, body, rva, ptr = b"", b"", SECTION_ALIGN, size_of_headers
    for name, data in sections.items():
        raw = data + b"\0" * (-len(data) % FILE_ALIGN)
        table += struct.pack("<8sIIIIIIHHI", name.encode(), len(data), rva, len(raw), ptr,
                             0, 0, 0, 0, 0x40000040)
        body += raw
        rva += -(-max(len(data), 1) // SECTION_ALIGN) * SECTION_ALIGN
        ptr += len(raw)
    coff = struct.pack("<HHIIIHH", 0x8664, nsect, 0, 0, 0, opt_size, 0x0022)
    opt = struct.pack("<HBBIIIII", 0x20B, 0, 0, len(body), 0, 0, SECTION_ALIGN, SECTION_ALIGN)
    opt += struct.pack("<QIIHHHHHHIIIIHHQQQQII", 0, SECTION_ALIGN, FILE_ALIGN, 0, 0, 0, 0, 0,
                       0, 0, rva, size_of_headers, 0, 10, 0, 0x100000, 0x1000, 0x100000,
                       0x1000, 0, 16)
    opt += b"\0" * (16 * 8)
    head = b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x40) + b"PE\0\0" + coff + opt + table
    return head + b"\0" * (size_of_headers - len(head)) + body


@pytest.fixture(name="tiny_pe", scope="session")
def tiny_pe_fixture() -> Callable[..., bytes]:
    return tiny_pe


@pytest.fixture(scope="session")
def fleet_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key set made by ``tidehost keys init``'s code (unencrypted)."""
    d = tmp_path_factory.mktemp("fleet") / "keys"
    init_keys(d, name="Test fleet")
    return d


@pytest.fixture(scope="session")
def stranger_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Someone else's db key and certificate (openssl), not enrolled anywhere."""
    d = tmp_path_factory.mktemp("stranger")
    subprocess.run(["openssl", "req", "-quiet", "-new", "-x509", "-newkey", "rsa:2048",
                    "-nodes", "-sha256", "-days", "30", "-subj", "/CN=Stranger db/",
                    "-keyout", str(d / "db.key"), "-out", str(d / "db.crt")], check=True)
    return d


@pytest.fixture
def sbsign(tmp_path: Path) -> Callable[[bytes, Path], bytes]:
    """Sign PE bytes with sbsign using the key set (or key folder) ``keys``."""

    def sign(data: bytes, keys: Path) -> bytes:
        src, out = tmp_path / "in.efi", tmp_path / "out.efi"
        src.write_bytes(data)
        subprocess.run(["sbsign", "--key", str(keys / "db.key"), "--cert", str(keys / "db.crt"),
                        "--output", str(out), str(src)], check=True, capture_output=True)
        return out.read_bytes()

    return sign


def make_uki_bundle(dest: Path, version: str, uki: dict, db_sha256: str = "",
                    fmt: int = 2) -> Path:  # fmt: skip
    """A format-2 bundle: a real squashfs /usr and verity tree, and per slot the UKI that
    ``uki[slot](slot, roothash)`` makes (format 3: ``uki[None](None, roothash)``, the one
    UKI)."""
    d = dest / f"tidehost-{version}.release"
    tree = dest / f"tree-{version}"
    (tree / "lib").mkdir(parents=True)
    (tree / "lib" / "os-release").write_text(f"IMAGE_VERSION={version}\n")
    d.mkdir(parents=True)
    subprocess.run(["mksquashfs", str(tree), str(d / "usr.img"), "-noappend", "-quiet",
                    "-no-progress"], check=True, capture_output=True)  # fmt: skip
    out = subprocess.run(["veritysetup", "format", str(d / "usr.img"), str(d / "usr.verity")],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    roothash = re.search(r"Root hash:\s+([0-9a-f]{64})", out)[1]  # type: ignore[index]
    for slot, make in uki.items():
        (d / (uki_file(slot, fmt) if slot else SHARED_UKI)).write_bytes(make(slot, roothash))
    files = {f: {"size": (d / f).stat().st_size, "sha256": sha256_file(d / f)}
             for f in files_for(fmt)}  # fmt: skip
    (d / "manifest.json").write_text(json.dumps({
        "format": fmt, "name": "tidehost", "version": version, "channel": "stable",
        "build_id": "t", "arch": "x86-64", "suite": "trixie", "usr_filesystem": "squashfs",
        "roothash": roothash, "kernel_cmdline": "", "boot_tries": 3, "files": files,
        "db_sha256": db_sha256, "pcr_public_key_sha256": ""}))  # fmt: skip
    return d


@pytest.fixture(name="make_bundle")
def make_bundle_fixture() -> Callable[..., Path]:
    return make_uki_bundle


def uki_maker(tiny_pe, sign=None, slot_of=None):  # noqa: ANN001, ANN201
    """Makes a slot's UKI-shaped PE for ``make_uki_bundle`` (``sign``: bytes -> bytes)."""
    def make(slot: Slot | None, roothash: str) -> bytes:
        s = slot_of or slot
        named = f" tidehost.slot={s.value}" if s else ""  # format 3: no slot
        data = tiny_pe({".osrel": b"IMAGE_ID=tidehost\n", ".linux": b"kernel",
                        ".cmdline": f"usrhash={roothash}{named}".encode()})
        return sign(data) if sign else data
    return make


@pytest.fixture(name="uki_maker")
def uki_maker_fixture() -> Callable[..., object]:
    return uki_maker
