"""OEM contents and the platform dispatch: pure, no image needed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imagebuild.cloudconfig.providers import PROVIDERS
from imagebuild.core.errors import ConfigError
from imagebuild.core.platforms import OutputFormat, Provider
from imagebuild.image.platforms import make
from imagebuild.image.platforms.cloud import ec2_register_image
from imagebuild.image.platforms.disk import whole_gib
from imagebuild.image.platforms.oem import SPECS, Oem, spec_for
from imagebuild.image.platforms.vagrant_box import libvirt_metadata
from imagebuild.image.platforms.vagrant_user import add_vagrant_user, free_id


def test_every_platform_format_has_an_oem() -> None:
    for fmt in OutputFormat:
        if fmt.is_platform:
            assert spec_for(fmt).datasources[-1] == "None"
    assert spec_for("vagrant-libvirt") is spec_for("vagrant-virtualbox")


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "azure", ""])
def test_unknown_or_generic_format_is_a_one_line_config_error(fmt: str) -> None:
    with pytest.raises(ConfigError, match="is not a platform output format") as e:
        spec_for(fmt)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        make(None, fmt, Path("/nonexistent"))  # type: ignore[arg-type]


def test_oem_datasources_agree_with_the_cloud_config_providers() -> None:
    pairs = {Oem.VAGRANT: Provider.VAGRANT, Oem.EC2: Provider.EC2, Oem.GCE: Provider.GCE,
             Oem.DIGITALOCEAN: Provider.DIGITALOCEAN}  # fmt: skip
    for oem, provider in pairs.items():
        assert SPECS[oem].datasources == PROVIDERS[provider].datasources


def test_digitalocean_lists_configdrive_first_and_never_nocloud() -> None:
    ds = SPECS[Oem.DIGITALOCEAN].datasources
    assert ds[0] == "ConfigDrive" and "NoCloud" not in ds


@pytest.mark.parametrize("oem", list(Oem))
def test_cmdline_is_one_line_with_serial_console_last(oem: Oem) -> None:
    spec = SPECS[oem]
    files = spec.files()
    assert files["cmdline"].count("\n") == 1
    consoles = [a for a in spec.cmdline.split() if a.startswith("console=")]
    assert consoles[-1].startswith("console=ttyS0")
    assert json.loads(files["platform.json"])["datasource_list"] == list(spec.datasources)


@pytest.mark.parametrize("oem", list(Oem))
def test_cloud_init_reads_the_datasource_list_from_the_cmdline(oem: Oem) -> None:
    """The build machine's cloud-init parses the OEM arguments as the image's will."""
    code = ("import json, sys; from cloudinit import util; "
            "print(json.dumps(util.read_conf_from_cmdline(sys.argv[1])))")  # fmt: skip
    cmdline = f"root=PARTLABEL=ROOT rw {SPECS[oem].cmdline} panic=10"
    proc = subprocess.run(["/usr/bin/python3", "-c", code, cmdline], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.fail("cloud-init is not installed on the build machine (apt-get install cloud-init)")
    assert json.loads(proc.stdout) == {"datasource_list": list(SPECS[oem].datasources)}


def test_vagrant_user_is_added_to_a_root_tree(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nx:x:1000:1000::/:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nx:x:1000:\n")
    (etc / "shadow").write_text("root:*:1:0:99999:7:::\n")
    (etc / "shadow").chmod(0o640)
    add_vagrant_user(tmp_path)
    assert "vagrant:x:1001:1001:" in (etc / "passwd").read_text()
    assert (etc / "shadow").read_text().endswith("vagrant:*:20000:0:99999:7:::\n")
    assert (etc / "shadow").stat().st_mode & 0o777 == 0o640
    keys = tmp_path / "home/vagrant/.ssh/authorized_keys"
    assert keys.stat().st_uid == 1001 and keys.stat().st_mode & 0o777 == 0o600
    assert "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTky" in keys.read_text()
    assert (etc / "sudoers.d/vagrant").stat().st_mode & 0o777 == 0o440
    assert free_id(["a:x:1000:", "b:x:1002:"]) == 1001


def test_sizes_and_register_image_are_pure() -> None:
    assert whole_gib(1) == 1 << 30 and whole_gib(3 << 30) == 3 << 30
    assert libvirt_metadata((2 << 30) + 1)["virtual_size"] == 3
    from imagebuild.image.config import parse_image_file

    doc = ec2_register_image(parse_image_file(None), 3 << 30)
    assert doc["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 3
    assert doc["BootMode"] == "uefi" and doc["EnaSupport"] is True


def test_build_with_an_unknown_format_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imagebuild.cli import main

    assert main(["build", "--format", "raw,azure", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'azure' is not one of" in err and "vagrant-libvirt" in err and "\n" not in err
