"""``tidehost vagrant init``: the generated cluster, seeds and Vagrantfile, checked by the
real ``vagrant validate`` (with Debian's vagrant-libvirt plugin)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from imagebuild.cli import main
from imagebuild.core.errors import ConfigError
from imagebuild.vagrant.vagrantfile import InitOptions, cluster_document, render_vagrantfile

URL = "http://127.0.0.1:8080/"


def test_cluster_document_has_three_core_nodes_and_workers() -> None:
    doc = cluster_document(InitOptions(nodes=5, channel_url=URL, channel="beta"))
    roles = [n["roles"] for n in doc["nodes"]]
    assert roles == [["etcd", "manager"]] * 3 + [["worker"]] * 2
    assert [n["address"] for n in doc["nodes"]][:2] == ["192.168.56.11", "192.168.56.12"]
    assert doc["updater"]["channel"] == {"url": URL, "name": "beta"}


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"channel_url": ""}, "--channel-url: missing"),
        ({"channel_url": "ftp://x/"}, "not an http"),
        ({"channel": "nightly"}, "'nightly' is not one of alpha, beta, stable"),
        ({"nodes": 0}, "--nodes: 0 is not from 1 to 9"),
        ({"subnet": "10.0.0.0/30"}, "too small"),
    ],
)
def test_bad_options_are_one_line_config_errors(kw: dict, message: str) -> None:
    args = {"nodes": 3, "channel_url": URL, "channel": "stable", **kw}
    with pytest.raises(ConfigError, match=message) as e:
        InitOptions(**args)
    assert "\n" not in str(e.value)


def test_cli_missing_channel_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vagrant", "init", "--nodes", "2", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("tidehost: error: --channel-url: missing "
                           "(the URL the channel repository is at)")  # fmt: skip
    assert not (tmp_path / "Vagrantfile").exists()


def test_cli_bad_provider(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["vagrant", "init", "--channel-url", URL, "--provider", "hyperv",
               "-o", str(tmp_path)])  # fmt: skip
    assert rc == 2 and "--provider: 'hyperv' is not one of libvirt, virtualbox" in (
        capsys.readouterr().err
    )


def test_ruby_strings_cannot_interpolate(tmp_path: Path) -> None:
    ctx = {
        "command": "x",
        "channel": "alpha",
        "box_name": "b",
        "netmask": "255.255.255.0",
        "box_url": "http://h/#{`id`}'",
        "network_name": "n",
        "driver": "qemu",
        "boot_timeout_tcg": 1800,
        "boot_timeout_kvm": 300,
        "memory": 1,
        "cpus": 1,
        "nodes": [{"name": "node1", "address": "10.0.0.1", "mac": "52:54:00:00:00:01"}],
    }
    text = render_vagrantfile(ctx)
    assert "BOX_URL = 'http://h/#{`id`}\\''" in text


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vagrant-init")
    rc = main(["vagrant", "init", "--nodes", "3", "--channel-url", URL, "--channel", "stable",
               "--no-check", "-o", str(out)])  # fmt: skip
    assert rc == 0
    return out


def test_init_writes_seeds_from_the_cloud_config_renderer(initialised: Path) -> None:
    for node in ("node1", "node2", "node3"):
        seed = initialised / "seeds" / node
        user_data = (seed / "user-data").read_text()
        assert user_data.startswith("#cloud-config")
        assert '["NoCloud", "None"]' in user_data  # provider vagrant pins NoCloud
        assert yaml.safe_load((seed / "meta-data").read_text())["local-hostname"] == node
        net = yaml.safe_load((seed / "network-config").read_text())
        assert net["ethernets"]["cluster0"]["addresses"][0].startswith("192.168.56.1")
    text = (initialised / "Vagrantfile").read_text()
    assert "BOX = 'tidehost-stable'" in text
    assert "BOX_URL = 'http://127.0.0.1:8080/vagrant/stable.json'" in text
    assert text.count("{ name: 'node") == 3
    assert 'require_relative "tidehost"' in text and (initialised / "tidehost.rb").is_file()
    # the seed is a CD-ROM at domain creation: no provisioner, no reboot
    assert "lv.storage :file, device: :cdrom" in text and "provision" not in text


@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
def test_vagrant_validate_accepts_the_vagrantfile(
    initialised: Path, vagrant_env: dict[str, str], provider: str
) -> None:
    env = {**vagrant_env, "VAGRANT_DEFAULT_PROVIDER": provider}
    cmd = ["vagrant", "validate"]
    if provider == "virtualbox":
        cmd.append("--ignore-provider")  # VirtualBox itself is not in Debian's archive
    proc = subprocess.run(cmd, cwd=initialised, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
