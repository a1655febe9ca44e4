"""The UKI stage's checks, the tools tree's cache key, and the QEMU arguments of
``tidehost vm run --secure-boot --tpm`` (no VM booted, no tree made)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.core.errors import StageError
from imagebuild.image import keys
from imagebuild.image.stages import tools, uki
from imagebuild.lab.vm import OVMF_CODE, OVMF_CODE_SECURE, VM

CMDLINE = "root=PARTLABEL=ROOT usrhash=" + "ab" * 32 + " console=ttyS0"


def uki_sections(cmdline: str = CMDLINE, pcr: bool = True) -> dict[str, bytes]:
    s = {".osrel": b"ID=tidehost\n", ".cmdline": cmdline.encode(), ".uname": b"6.12",
         ".linux": b"MZ kernel", ".initrd": b"initrd"}
    if pcr:
        s.update({".pcrsig": b"{}", ".pcrpkey": b"-----BEGIN PUBLIC KEY-----"})
    return s


def test_ukify_signs_only_with_the_fleets_keys() -> None:
    plain = uki.ukify_args("/w/uki", "uki.efi", "6.12.1-cloud-amd64", signed=False)
    assert plain[:2] == ["ukify", "build"]
    assert "--cmdline=@/w/uki/uki.efi.cmdline" in plain and "--stub=/w/uki/stub.efi" in plain
    assert "--output=/w/uki/uki.efi" in plain and "--uname=6.12.1-cloud-amd64" in plain
    assert not [a for a in plain if "key" in a or "certificate" in a]
    signed = uki.ukify_args("/w/uki", "uki.efi", "6.12", signed=True)
    assert set(signed) - set(uki.ukify_args("/w/uki", "uki.efi", "6.12", signed=False)) == {
        "--secureboot-private-key=/w/uki/keys/db.key",
        "--secureboot-certificate=/w/uki/keys/db.crt",
        "--pcr-private-key=/w/uki/keys/pcr.key",
        "--pcr-public-key=/w/uki/keys/pcr.pub.pem"}


def test_a_built_uki_must_carry_its_command_line_and_be_signed(fleet_keys, tiny_pe, sbsign, stranger_keys,
                                                  tmp_path: Path) -> None:  # fmt: skip
    k = keys.unlock(fleet_keys, tmp_path / "u", "where")
    u = "uki.efi"
    assert uki.check_uki(tiny_pe(uki_sections(pcr=False)), u, CMDLINE, None) == "unsigned"
    good = sbsign(tiny_pe(uki_sections()), fleet_keys)
    assert uki.check_uki(good, u, CMDLINE, k) == "CN=Test fleet db"
    with pytest.raises(StageError, match=r"^uki.efi: ukify made a UKI without .pcrsig, .pcrpkey$"):
        uki.check_uki(sbsign(tiny_pe(uki_sections(pcr=False)), fleet_keys), u, CMDLINE, k)
    with pytest.raises(StageError, match=r"^uki-a.efi: its .cmdline is not the command line it "
                       r"was built with$"):
        uki.check_uki(good, "uki-a.efi", CMDLINE + " tidehost.slot=a", k)
    with pytest.raises(StageError, match=r"^uki.efi: Secure Boot would refuse it: not signed$"):
        uki.check_uki(tiny_pe(uki_sections()), u, CMDLINE, k)
    with pytest.raises(StageError, match=r"signed by CN=Stranger db"):
        uki.check_uki(sbsign(tiny_pe(uki_sections()), stranger_keys), u, CMDLINE, k)
    with pytest.raises(StageError, match=r"^uki.efi: not a well-formed PE file"):
        uki.check_uki(b"not a PE", u, CMDLINE, None)


def test_the_tools_tree_is_cached_by_its_inputs(tmp_path: Path) -> None:
    key = tools.cache_key(None)
    assert key == tools.cache_key(None) and key != tools.cache_key("http://mirror.test/debian")
    path = tools.cached_tools_path(tmp_path, None)
    assert path.parent == tmp_path / "tools" and path.name.startswith("trixie-")
    assert "systemd-ukify" in tools.PACKAGES and "sbsigntool" in tools.PACKAGES
    hook = tools.loader_hook()  # the newer loader comes from the tree's own mirror
    assert f"{tools.LOADER_SUITE} main" in hook and "check-valid-until=no" in hook
    assert "://" not in hook


def vm(tmp_path: Path, **kw) -> VM:
    v = VM(disk=tmp_path / "d.qcow2", accel="tcg", workdir=tmp_path, serial_log=tmp_path / "s",
           ssh_port=2222, **kw)
    return v


def test_secure_boot_and_tpm_qemu_arguments(tmp_path: Path) -> None:
    plain = vm(tmp_path).command()
    assert plain[plain.index("-machine") + 1] == "q35"
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}" in plain
    assert not {"-global", "-tpmdev", "-chardev"} & set(plain)
    sb = vm(tmp_path, secure_boot=True, tpm=True).command()
    assert sb[sb.index("-machine") + 1] == "q35,smm=on"
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE_SECURE}" in sb
    assert sb[sb.index("-global") + 1] == "driver=cfi.pflash01,property=secure,value=on"
    assert sb.index("-global") < sb.index("-drive")  # before the flash drives it protects
    assert sb[sb.index("-chardev") + 1] == f"socket,id=chrtpm,path={tmp_path}/tpm/swtpm-sock"
    assert sb[sb.index("-tpmdev") + 1] == "emulator,id=tpm0,chardev=chrtpm"
    assert "tpm-tis,tpmdev=tpm0" in sb


def test_swtpm_starts_with_its_socket_and_stops_with_the_vm(tmp_path: Path) -> None:
    v = vm(tmp_path, tpm=True)
    v.start_swtpm()
    assert v.swtpm is not None and v.swtpm.alive()
    assert (tmp_path / "tpm" / "swtpm-sock").is_socket()
    v.stop(timeout=1)  # no QEMU here: stopping the VM still ends its swtpm
    assert not v.swtpm.alive()
