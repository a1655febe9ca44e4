"""The build stages' pure logic: disk layout, boot entries, identity, factory /etc, cache key."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from channels.bundle import FILES, FileInfo, Manifest, Slot, load_bundle, usr_partuuids
from channels.entries import BootEntry, boot_entry
from channels.errors import BundleError
from imagebuild.core.errors import VMError
from imagebuild.image import layout as disk
from imagebuild.image.config import Partitions, parse_image_file
from imagebuild.image.stages import configure, rootfs
from imagebuild.lab.vm import user_data_with_key

HASH = "ab" * 32


def manifest(**kw) -> Manifest:
    fields = dict(
        name="tidehost", version="1.2.0", channel="alpha", build_id="b1", arch="x86-64",
        suite="trixie", usr_filesystem="squashfs", roothash=HASH, kernel_cmdline="console=ttyS0",
        boot_tries=3, files={f: FileInfo(1, "00" * 32) for f in FILES},
    )  # fmt: skip
    fields.update(kw)
    return Manifest(**fields)


def test_layout_is_aligned_contiguous_and_root_last() -> None:
    parts = disk.layout(Partitions(esp=256, usr=768, usr_verity=16, oem=64, root=1024))
    assert [p.label for p in parts] == ["ESP", "USR-A", "USR-A-VERITY", "USR-B", "USR-B-VERITY", "OEM", "ROOT"]
    assert parts[0].start_mib == 1
    for a, b in zip(parts, parts[1:]):
        assert b.start_mib == a.start_mib + a.size_mib
    assert disk.disk_size(parts) == (1 + 256 + 2 * (768 + 16) + 64 + 1024 + 1) << 20
    types = {p.label: p.type_guid for p in parts}
    assert types["USR-A"] == types["USR-B"] == disk.USR_TYPE
    assert types["ROOT"] == disk.ROOT_TYPE and types["ESP"] == disk.ESP_TYPE


def test_sfdisk_script_names_every_partition_in_sectors() -> None:
    script = disk.sfdisk_script(disk.layout(Partitions()))
    assert script.startswith("label: gpt\n")
    assert 'start=2048, size=524288, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="ESP"' in script
    assert script.count('attrs="GUID:60"') == 4  # the /usr slots and their hash trees are read-only
    assert "uuid=" not in script  # sfdisk makes them up


def test_slot_a_gets_the_partition_uuids_its_root_hash_derives() -> None:
    usr, verity = usr_partuuids(HASH)
    lines = disk.sfdisk_script(disk.layout(Partitions(), (usr, verity))).splitlines()
    named = {line.split('name="')[1].split('"')[0]: line for line in lines if "name=" in line}
    assert named["USR-A"].endswith(f", uuid={usr}") and named["USR-A-VERITY"].endswith(f", uuid={verity}")
    assert [label for label, line in named.items() if "uuid=" in line] == ["USR-A", "USR-A-VERITY"]


def test_boot_entry_names_the_slot_and_counts_tries() -> None:
    m = manifest()
    a = boot_entry(m, Slot.A, tries=None)
    b = boot_entry(m, Slot.B, tries=3)
    assert isinstance(a, BootEntry)
    assert (a.filename, b.filename) == ("tidehost-a.conf", "tidehost-b+3.conf")
    assert "version 1.2.0\n" in b.text and "linux /tidehost/b/vmlinuz\n" in b.text
    opts = b.text.split("options ", 1)[1]
    assert f"usrhash={HASH}" in opts and "systemd.verity_usr_data=PARTLABEL=USR-B " in opts
    assert "systemd.verity_usr_hash=PARTLABEL=USR-B-VERITY" in opts
    assert "mount.usrfstype=squashfs" in opts and opts.rstrip().endswith("console=ttyS0")


def test_manifest_round_trips_and_keeps_unknown_fields() -> None:
    m = manifest(extra={"kernel_version": "6.12"})
    again = Manifest.from_json(m.to_json())
    assert again == m and again.extra["kernel_version"] == "6.12"
    with pytest.raises(BundleError, match=r"field 'channel': 'edge' is not one of"):
        manifest(channel="edge")
    with pytest.raises(BundleError, match=r"field 'roothash'"):
        manifest(roothash="xyz")


def test_load_bundle_refuses_a_file_that_does_not_match(tmp_path: Path) -> None:
    from channels.bundle import sha256_file

    for name in FILES:
        (tmp_path / name).write_bytes(name.encode() * 100)
    files = {n: FileInfo((tmp_path / n).stat().st_size, sha256_file(tmp_path / n)) for n in FILES}
    (tmp_path / "manifest.json").write_text(manifest(files=files).to_json())
    assert load_bundle(tmp_path).version == "1.2.0"
    (tmp_path / "initrd").write_bytes(b"X" + (tmp_path / "initrd").read_bytes()[1:])
    with pytest.raises(BundleError, match=r"initrd: sha256 does not match the manifest"):
        load_bundle(tmp_path)


def test_os_release_carries_version_channel_and_build_id() -> None:
    c = parse_image_file(None).with_overrides(version="3.4.5", channel="beta")
    text = configure.os_release(c, "20261122T000000Z-cafe")
    assert 'VERSION_ID="3.4.5"\n' in text
    assert 'TIDEHOST_CHANNEL="beta"\n' in text and 'BUILD_ID="20261122T000000Z-cafe"\n' in text


def test_factory_tmpfiles_copy_missing_entries_but_not_host_identity(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "ssh").mkdir(parents=True)
    (etc / "ssh/sshd_config").write_text("x")
    (etc / "machine-id").write_text("")
    (etc / "fstab").write_text("x")
    lines = configure.factory_tmpfiles(etc).splitlines()
    assert "C /etc/ssh - - - - /usr/share/factory/etc/ssh" in lines
    assert "C /etc/ssh/sshd_config - - - - /usr/share/factory/etc/ssh/sshd_config" in lines
    assert "C /etc/fstab - - - - /usr/share/factory/etc/fstab" in lines
    assert not any("machine-id" in ln for ln in lines)
    # a directory comes before its contents, so a missing one is copied whole first
    assert lines.index("C /etc/ssh - - - - /usr/share/factory/etc/ssh") < lines.index(
        "C /etc/ssh/sshd_config - - - - /usr/share/factory/etc/ssh/sshd_config"
    )


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="no systemd-tmpfiles")
def test_factory_copy_runs_under_systemd_tmpfiles(tmp_path: Path) -> None:
    """What tidehost-factory-etc.service does on the first boot of a new /usr, on a tree."""
    root = tmp_path / "root"
    factory = root / "usr/share/factory/etc"
    (factory / "ssh").mkdir(parents=True)
    (factory / "ssh/sshd_config").write_text("factory sshd\n")
    (factory / "fstab").write_text("factory fstab\n")
    (factory / "os-release").symlink_to("../usr/lib/os-release")  # dangling in the factory
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=tidehost\n")
    (root / "etc").mkdir()
    (root / "etc/fstab").write_text("operator's fstab\n")
    conf = tmp_path / "factory-etc.conf"
    conf.write_text(configure.factory_tmpfiles(factory))
    r = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(conf)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (root / "etc/ssh/sshd_config").read_text() == "factory sshd\n"
    assert (root / "etc/fstab").read_text() == "operator's fstab\n"  # never overwritten
    assert os.readlink(root / "etc/os-release") == "../usr/lib/os-release"
    assert (root / "etc/os-release").read_text() == "ID=tidehost\n"


FINISHED = {"var/lib/cloud/instance/boot-finished": "1.0 - Thu, 03 Dec 2026\n"}


def cloud_init_once(root: Path) -> subprocess.CompletedProcess[str]:
    """The image's tidehost-cloud-init-once script run on a scratch tree (it succeeded)."""
    script = Path(configure.__file__).parents[1] / "data/tidehost-cloud-init-once"
    r = subprocess.run(["sh", str(script), str(root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize(("per_boot", "stays_on"), [
    (FINISHED, False),
    ({}, True),  # cloud-init did not finish (a shutdown during the first boot): again
    ({**FINISHED,
      "var/lib/cloud/instance/cloud-config.txt": "#cloud-config\nbootcmd: [[touch, /x]]\n"},
     True),
    ({**FINISHED,
      "var/lib/cloud/instance/cloud-config.txt": "#cloud-config\nruncmd: [[touch, /x]]\n"},
     False),
    ({**FINISHED, "var/lib/cloud/scripts/per-boot/hello.sh": "#!/bin/sh\n"}, True),
    ({**FINISHED, "var/lib/cloud/instance/boothooks/part-001": "#!/bin/sh\n"}, True),
])  # fmt: skip
def test_cloud_init_runs_again_only_for_per_boot_work(
    tmp_path: Path, per_boot: dict[str, str], stays_on: bool
) -> None:
    """What tidehost-cloud-init-once.service does at the first boot's shutdown, on a scratch
    tree."""
    for d in ("etc/cloud", "var/lib/cloud/instance", "var/lib/cloud/scripts/per-boot"):
        (tmp_path / d).mkdir(parents=True)
    for rel, text in per_boot.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    r = cloud_init_once(tmp_path)
    flag = tmp_path / "etc/cloud/cloud-init.disabled"
    assert flag.exists() is not stays_on, r.stdout
    assert ("runs again" in r.stdout or "stays on" in r.stdout) is stays_on and not list((tmp_path / "etc/cloud").glob("*.tmp"))


def test_links_cloud_init_renamed_keep_their_names_without_it(tmp_path: Path) -> None:
    """cloud-init renames links (set-name) at every boot; once it is off, udev does (.link)."""
    net = tmp_path / "etc/systemd/network"
    for d in ("etc/cloud", "etc/systemd/network", "var/lib/cloud/instance", "sys/class/net/cluster0"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "sys/class/net/cluster0/address").write_text("52:54:00:4d:00:0d\n")
    (tmp_path / "var/lib/cloud/instance/boot-finished").write_text("done\n")
    (net / "10-cloud-init-cluster0.network").write_text(
        "[Address]\nAddress=10.77.0.13/24\n\n[Match]\nMACAddress=52:54:00:4d:00:0d\n"
        "Name=cluster0\n\n[Network]\nDHCP=no\n")
    # a link this boot did not name so (no such interface now): left alone
    (net / "10-cloud-init-spare.network").write_text(
        "[Match]\nMACAddress=52:54:00:4d:00:ff\nName=spare\n\n[Network]\nDHCP=ipv4\n")
    cloud_init_once(tmp_path)
    assert sorted(p.name for p in net.glob("*.link")) == ["10-tidehost-cluster0.link"]
    link = (net / "10-tidehost-cluster0.link").read_text()
    assert ("[Match]\nMACAddress=52:54:00:4d:00:0d\nType=ether\nKind=!*\n\n[Link]\n"
            "Name=cluster0\n") in link
    assert (tmp_path / "etc/cloud/cloud-init.disabled").exists()


def test_fstab_mounts_the_esp_without_nofail() -> None:
    text = configure.fstab()
    esp = next(ln for ln in text.splitlines() if "/efi" in ln)
    assert esp.startswith("PARTLABEL=ESP") and "nofail" not in esp


def test_cache_key_follows_every_input() -> None:
    base = rootfs.cache_key("trixie", None, ("a", "b"))
    assert base == rootfs.cache_key("trixie", None, ("b", "a"))  # order does not matter
    assert base != rootfs.cache_key("bookworm", None, ("a", "b"))
    assert base != rootfs.cache_key("trixie", "http://mirror.invalid/debian", ("a", "b"))
    assert base != rootfs.cache_key("trixie", None, ("a", "b", "c"))


def test_missing_package_is_found_in_apt_output() -> None:
    out = "I: running apt-get\nE: Unable to locate package nosuchpkg\nE: failed\n"
    assert rootfs.missing_package(out) == "nosuchpkg"
    assert rootfs.missing_package("E: Sub-process returned an error code") is None


def test_seed_user_data_adds_the_key_to_given_cloud_config() -> None:
    text = user_data_with_key("#cloud-config\nhostname: x\n", ["ssh-ed25519 AAAA k"])
    assert text.startswith("#cloud-config\n")
    assert "hostname: x" in text and "- ssh-ed25519 AAAA k" in text
    with pytest.raises(VMError, match="only #cloud-config"):
        user_data_with_key("#!/bin/sh\necho", ["k"])
