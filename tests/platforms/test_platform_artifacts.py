"""Every platform artifact, checked with the real tools: qemu-img, tar, sfdisk, mtools,
debugfs, and vagrant's own box handling (from files and from a served channel catalog)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from channels.authenticode import pe_sections
from imagebuild.core.platforms import BoxProvider
from imagebuild.image.pipeline import BuildResult
from imagebuild.image.platforms.oem import SPECS, Oem
from imagebuild.vagrant.catalog_io import promote_box_catalog, write_box_catalog

GiB = 1 << 30
pytestmark = pytest.mark.slow


def sh(*cmd: str | Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                          timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, f"{cmd}: {proc.stderr.strip()[-800:]}"
    return proc.stdout


def qemu_info(path: Path) -> dict:
    return json.loads(sh("qemu-img", "info", "--output=json", path))


def partitions(disk: Path) -> dict[str, tuple[int, int]]:
    """GPT partition name -> (offset, size) in bytes, as sfdisk reads them."""
    table = json.loads(sh("sfdisk", "--json", disk))["partitiontable"]
    return {p["name"]: (p["start"] * 512, p["size"] * 512) for p in table["partitions"]}


def read_platform_disk(disk: Path, tmp: Path) -> dict[str, str]:
    """The OEM's cmdline and platform.json and slot A's boot entry of a raw platform disk."""
    parts = partitions(disk)
    off, size = parts["OEM"]
    oem = tmp / f"{disk.stem}-oem.img"
    sh("dd", f"if={disk}", f"of={oem}", "bs=1M", f"skip={off >> 20}", f"count={size >> 20}",
       "status=none")  # fmt: skip
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    addon = tmp / f"{disk.stem}-oem.addon.efi"  # UKI images: the OEM's command-line addon
    sh("mcopy", "-n", "-i", f"{disk}@@{parts['ESP'][0]}", "::/loader/addons/tidehost-oem.addon.efi",
       str(addon), env=env)  # fmt: skip
    return {
        "cmdline": sh("debugfs", "-R", "cat /cmdline", oem).strip(),
        "platform": sh("debugfs", "-R", "cat /platform.json", oem),
        "entry": pe_sections(addon.read_bytes())[".cmdline"].decode(),
    }


def region_sha(disk: Path, offset: int, size: int) -> str:
    h = hashlib.sha256()
    with open(disk, "rb") as f:
        f.seek(offset)
        left = size
        while left:
            block = f.read(min(left, 1 << 22))
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def test_ec2_artifacts(platform_image: BuildResult, tmp_path: Path) -> None:
    a = platform_image.artifacts
    raw, vmdk = a["ec2-raw"], a["ec2-vmdk"]
    assert qemu_info(raw)["format"] == "raw"
    assert raw.stat().st_size % GiB == 0
    info = qemu_info(vmdk)
    assert info["format"] == "vmdk" and info["virtual-size"] == raw.stat().st_size
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    params = json.loads(a["ec2-register-image"].read_text())
    assert params["BootMode"] == "uefi" and params["EnaSupport"] is True
    assert params["VirtualizationType"] == "hvm" and params["ImdsSupport"] == "v2.0"
    ebs = params["BlockDeviceMappings"][0]["Ebs"]
    assert ebs["VolumeSize"] == raw.stat().st_size // GiB
    got = read_platform_disk(raw, tmp_path)
    assert got["cmdline"] == SPECS[Oem.EC2].cmdline
    assert got["cmdline"] in got["entry"] and "nvme_core.io_timeout" in got["entry"]
    assert json.loads(got["platform"])["datasource_list"] == ["Ec2", "None"]
    # /usr (slot A and its verity) is the generic image's, byte for byte.
    generic, plat = partitions(a["raw"]), partitions(raw)
    for label in ("USR-A", "USR-A-VERITY"):
        assert plat[label] == generic[label]
        assert region_sha(raw, *plat[label]) == region_sha(a["raw"], *generic[label])
    # the backup GPT was moved to the end of the padded disk: sfdisk reads it cleanly
    assert "ROOT" in plat and plat["ROOT"][0] + plat["ROOT"][1] < raw.stat().st_size


def test_gce_tarball_is_oldgnu_sparse_with_disk_raw(
    platform_image: BuildResult, tmp_path: Path
) -> None:
    tarball = platform_image.artifacts["gce"]
    assert tarball.name.endswith("-gce.tar.gz")
    listing = sh("tar", "-tvzf", tarball).split()
    assert listing[-1] == "disk.raw"
    with gzip.open(tarball) as f:
        header = f.read(512)
    assert header[257:265] == b"ustar  \0", "not GNU tar's oldgnu format"
    assert header[156:157] == b"S", "disk.raw is not stored sparse"
    with tarfile.open(tarball) as t:
        member = t.getmember("disk.raw")
    assert member.size % GiB == 0
    assert tarball.stat().st_size < member.size // 8
    sh("tar", "-xzf", tarball, "-C", tmp_path)
    got = read_platform_disk(tmp_path / "disk.raw", tmp_path)
    assert got["cmdline"] == SPECS[Oem.GCE].cmdline and got["cmdline"] in got["entry"]


def test_digitalocean_qcow2_gzip(platform_image: BuildResult, tmp_path: Path) -> None:
    gz = platform_image.artifacts["digitalocean"]
    assert gz.name.endswith(".qcow2.gz")
    qcow = tmp_path / "do.qcow2"
    with gzip.open(gz) as src, open(qcow, "wb") as dst:
        while block := src.read(1 << 22):
            dst.write(block)
    info = qemu_info(qcow)
    assert info["format"] == "qcow2" and info["virtual-size"] % GiB == 0
    raw = tmp_path / "do.raw"
    sh("qemu-img", "convert", "-O", "raw", qcow, raw)
    got = read_platform_disk(raw, tmp_path)
    assert "cc:datasource_list:%20[ConfigDrive,DigitalOcean,None]end_cc" in got["entry"]


def test_vagrant_boxes_layout(platform_image: BuildResult, tmp_path: Path) -> None:
    a = platform_image.artifacts
    with tarfile.open(a["vagrant-libvirt"]) as t:
        assert sorted(t.getnames()) == ["Vagrantfile", "box.img", "metadata.json"]
        t.extractall(tmp_path / "lv", filter="data")
    meta = json.loads((tmp_path / "lv/metadata.json").read_text())
    info = qemu_info(tmp_path / "lv/box.img")
    assert info["format"] == "qcow2"
    assert meta == {"provider": "libvirt", "format": "qcow2",
                    "virtual_size": -(-info["virtual-size"] // GiB)}  # fmt: skip
    assert "lv.loader" in (tmp_path / "lv/Vagrantfile").read_text()
    with tarfile.open(a["vagrant-virtualbox"]) as t:
        assert sorted(t.getnames()) == ["Vagrantfile", "box-disk1.vmdk", "box.ovf",
                                        "metadata.json"]  # fmt: skip
        t.extractall(tmp_path / "vb", filter="data")
    assert json.loads((tmp_path / "vb/metadata.json").read_text()) == {"provider": "virtualbox"}
    vmdk = qemu_info(tmp_path / "vb/box-disk1.vmdk")
    assert vmdk["format"] == "vmdk"
    ovf = ET.parse(tmp_path / "vb/box.ovf").getroot()
    ns = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1"}
    file_ref = ovf.find("ovf:References/ovf:File", ns)
    disk = ovf.find("ovf:DiskSection/ovf:Disk", ns)
    assert file_ref is not None and disk is not None
    assert file_ref.get(f"{{{ns['ovf']}}}href") == "box-disk1.vmdk"
    assert int(disk.get(f"{{{ns['ovf']}}}capacity") or 0) == vmdk["virtual-size"]
    assert "--firmware" in (tmp_path / "vb/Vagrantfile").read_text()
    # both boxes carry the same Vagrant OEM and the vagrant user's ROOT
    raw = tmp_path / "lv.raw"
    sh("qemu-img", "convert", "-O", "raw", tmp_path / "lv/box.img", raw)
    got = read_platform_disk(raw, tmp_path)
    assert got["cmdline"] == SPECS[Oem.VAGRANT].cmdline
    root_off, root_size = partitions(raw)["ROOT"]
    root = tmp_path / "root.img"
    sh("dd", f"if={raw}", f"of={root}", "bs=1M", f"skip={root_off >> 20}",
       f"count={root_size >> 20}", "status=none")  # fmt: skip
    assert "vagrant insecure public key" in sh(
        "debugfs", "-R", "cat /home/vagrant/.ssh/authorized_keys", root
    )
    assert "NOPASSWD" in sh("debugfs", "-R", "cat /etc/sudoers.d/vagrant", root)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextmanager
def http_server(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1; yield its URL. Vagrant tells a catalog from a box by
    the Content-Type application/json, which http.server sends for .json files."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _box_list(env: dict[str, str]) -> str:
    return sh("vagrant", "box", "list", env=env)


def test_vagrant_box_add_from_files(
    platform_image: BuildResult, vagrant_env: dict[str, str]
) -> None:
    a = platform_image.artifacts
    sh("vagrant", "box", "add", "--name", "th-lv", a["vagrant-libvirt"], env=vagrant_env)
    sh("vagrant", "box", "add", "--name", "th-vb", a["vagrant-virtualbox"], env=vagrant_env)
    listing = _box_list(vagrant_env)
    assert "th-lv" in listing and "(libvirt, 0" in listing
    assert "th-vb" in listing and "(virtualbox, 0" in listing


def test_vagrant_box_add_and_update_from_served_catalog(
    platform_image: BuildResult, vagrant_env: dict[str, str], tmp_path: Path
) -> None:
    a = platform_image.artifacts
    served = tmp_path / "published"
    served.mkdir()
    with http_server(served) as base:
        boxes = {BoxProvider.LIBVIRT: a["vagrant-libvirt"],
                 BoxProvider.VIRTUALBOX: a["vagrant-virtualbox"]}  # fmt: skip
        write_box_catalog(served, channel="alpha", version="1.0.0", boxes=boxes,
                          box_url_base=base)  # fmt: skip
        promote_box_catalog(served, version="1.0.0", src="alpha", dst="stable")
        url = f"{base}vagrant/stable.json"
        sh("vagrant", "box", "add", url, "--provider", "libvirt", env=vagrant_env)
        assert "tidehost-stable (libvirt, 1.0.0" in _box_list(vagrant_env)
        sh("vagrant", "box", "add", url, "--provider", "virtualbox", env=vagrant_env)
        assert "tidehost-stable (virtualbox, 1.0.0" in _box_list(vagrant_env)
        # A new release reaches stable: `vagrant box update` follows the channel.
        write_box_catalog(served, channel="alpha", version="1.0.1",
                          boxes={BoxProvider.LIBVIRT: a["vagrant-libvirt"]},
                          box_url_base=base)  # fmt: skip
        promote_box_catalog(served, version="1.0.1", src="alpha", dst="stable")
        sh("vagrant", "box", "update", "--box", "tidehost-stable", "--provider", "libvirt",
           env=vagrant_env)  # fmt: skip
        assert "tidehost-stable (libvirt, 1.0.1" in _box_list(vagrant_env)
