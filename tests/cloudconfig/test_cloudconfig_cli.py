"""`tidehost cloud-config`: certs, render and validate through the real command boundary."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cloudconfig_helpers import EXAMPLE, SSH_KEY, write_cluster

from imagebuild.cli import main


@pytest.fixture
def example(tmp_path: Path) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["etcd"]["cert_dir"] = "certs"
    return write_cluster(tmp_path / "cluster.yaml", data)


def test_certs_render_validate(
    tmp_path: Path, example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cloud-config", "certs", str(example)]) == 0
    assert (tmp_path / "certs" / "node2" / "peer.key").is_file()
    key = tmp_path / "id.pub"
    key.write_text(SSH_KEY + "\n")
    out = tmp_path / "node2.user-data"
    argv = ["cloud-config", "render", str(example), "--provider", "vagrant", "--node", "node2"]
    assert main([*argv, "-o", str(out), "--ssh-key", str(key)]) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["users"][0]["ssh_authorized_keys"] == [SSH_KEY]
    assert out.stat().st_mode & 0o077 == 0  # it holds private keys
    assert main(["cloud-config", "validate", str(out)]) == 0
    assert "Valid" in capsys.readouterr().out


def test_render_all(tmp_path: Path, example: Path) -> None:
    assert main(["cloud-config", "certs", str(example), "--out", str(tmp_path / "c")]) == 0
    argv = ["cloud-config", "render", str(example), "--provider", "nocloud", "--all"]
    assert main([*argv, "--certs", str(tmp_path / "c"), "--out-dir", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "node1.user-data", "node2.user-data", "node3.user-data"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "azure", "--node", "node1"],
         "--provider: 'azure' is not one of ec2, gce, digitalocean, vagrant, nocloud"),
        (["--provider", "ec2", "--node", "node7"], "--node: no node 'node7'"),
        (["--provider", "ec2", "--node", "node1"], "ca.crt is missing"),
    ],
    ids=["unknown-provider", "unknown-node", "missing-certificate"],
)  # fmt: skip
def test_render_errors_write_nothing(
    tmp_path: Path,
    example: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "out.yaml"
    assert main(["cloud-config", "render", str(example), *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_bad_cluster_file_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["nodes"][1]["address"] = "10.0.0.300"
    path = write_cluster(tmp_path / "cluster.yaml", data)
    assert main(["cloud-config", "certs", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"tidehost: error: {path}: nodes[1].address: '10.0.0.300' is not an IPv4 address\n"
    )
    assert not (tmp_path / "certs").exists()


def test_validate_rejects_bad_user_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\nwrite_files:\n  - path: 42\n    permissions: 644\n")
    assert main(["cloud-config", "validate", str(bad)]) == 2
    assert "cloud-init schema" in capsys.readouterr().err
