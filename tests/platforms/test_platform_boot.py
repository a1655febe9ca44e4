"""Platform disks boot under QEMU with their OEM, and cloud-init takes the datasource the
OEM lists: ConfigDrive on DigitalOcean (with a NoCloud seed attached too, which
DigitalOcean's list must ignore). The Vagrant box boots in the real ``vagrant up``
(test_platform_vagrant_up, which checks its OEM the same way). EC2's and GCE's metadata
services cannot be simulated here; their disks differ from these only in the OEM and entry
checked in test_platform_artifacts."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuild.image.pipeline import BuildResult
from imagebuild.image.platforms.oem import SPECS, Oem
from imagebuild.lab.vm import VM

pytestmark = [pytest.mark.slow, pytest.mark.vm]


def boot_facts(vm: VM) -> dict[str, str]:
    # SSH answers once cloud-init's network stage has installed the key: the datasource is
    # chosen by then; waiting for the final stage (Docker, etcd) would double the time.
    vm.wait_ssh(900)
    return {
        "cmdline": vm.ssh("cat /proc/cmdline"),
        "status": vm.ssh("cloud-init status --long", check=False),
        "run_cfg": vm.ssh("cat /run/cloud-init/cloud.cfg"),
        "oem": vm.ssh("cat /oem/cmdline"),
    }


def check_oem(facts: dict[str, str], oem: Oem) -> None:
    spec = SPECS[oem]
    assert facts["oem"].strip() == spec.cmdline
    assert facts["cmdline"].strip().endswith(spec.cmdline)
    listed = facts["run_cfg"].split("[", 1)[1].split("]", 1)[0].replace(" ", "").split(",")
    assert set(listed) <= set(spec.datasources), facts["run_cfg"]


def config_drive(dest: Path, tmp: Path, pubkey: str) -> Path:
    """An OpenStack config drive (label config-2), as DigitalOcean attaches one."""
    latest = tmp / "cd/openstack/latest"
    latest.mkdir(parents=True)
    meta = {"uuid": "do-test-0001", "hostname": "droplet", "name": "droplet",
            "public_keys": {"test": pubkey}}  # fmt: skip
    (latest / "meta_data.json").write_text(json.dumps(meta))
    (latest / "user_data").write_text("#cloud-config\nruncmd: [touch /run/tidehost-configdrive]\n")
    subprocess.run(["genisoimage", "-quiet", "-output", str(dest), "-volid", "config-2",
                    "-joliet", "-rock", str(tmp / "cd")], check=True)  # fmt: skip
    return dest


def test_digitalocean_disk_boots_with_configdrive_before_nocloud(
    platform_image: BuildResult, ssh_keypair: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "do.qcow2"
    with gzip.open(platform_image.artifacts["digitalocean"]) as src, open(disk, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    pub = ssh_keypair.with_suffix(".pub").read_text().strip()
    iso = config_drive(tmp_path / "config-2.iso", tmp_path, pub)
    vm = VM(disk=disk, ssh_key=ssh_keypair, serial_log=tmp_path / "serial.log", snapshot=True,
            hostname="nocloud-seed-must-lose",
            extra_args=["-drive", f"file={iso},if=virtio,format=raw,readonly=on"])  # fmt: skip
    vm.start()
    try:
        facts = boot_facts(vm)
        check_oem(facts, Oem.DIGITALOCEAN)
        assert "DataSourceConfigDrive" in facts["status"], facts["status"]
        assert vm.ssh("hostname").strip() == "droplet"
        assert "tidehost-configdrive" in vm.ssh("sudo cat /var/lib/cloud/instance/user-data.txt")
    finally:
        vm.stop()
