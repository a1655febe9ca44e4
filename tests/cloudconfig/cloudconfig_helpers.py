"""Helpers of the cloud-config tests (imported by name: conftest puts this folder on sys.path)."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from imagebuild.core.run import run

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "cloud-config" / "examples" / "cluster.yaml"
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0aWRlaG9zdHRlc3RrZXlmb3J0ZXN0c29ubHkx test@tidehost"
)

# One node per role combination.
MATRIX_NODES = [
    {"name": "em", "address": "10.77.0.21", "roles": ["etcd", "manager"]},
    {"name": "ew", "address": "10.77.0.22", "roles": ["etcd", "worker"]},
    {"name": "m", "address": "10.77.0.23", "roles": ["manager"]},
    {"name": "w", "address": "10.77.0.24", "roles": ["worker"]},
    {"name": "e", "address": "10.77.0.25", "roles": ["etcd"]},
]


def example_data() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def write_cluster(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def matrix_data(**overrides: object) -> dict:
    data = example_data()
    data["nodes"] = [dict(n) for n in MATRIX_NODES]
    data["etcd"] = {"cert_dir": "certs"}
    data["ssh_authorized_keys"] = [SSH_KEY]
    data.update(overrides)
    return data


def cloud_init_schema(path: Path) -> str:
    """The real `cloud-init schema -c PATH`; fails the test on a non-zero exit or 'Invalid'."""
    if shutil.which("cloud-init") is None:
        pytest.fail("cloud-init is not installed (make setup)")
    proc = run(["cloud-init", "schema", "-c", path], check=False, capture=True, timeout=60)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0 and "Invalid" not in out, f"{path}: {out}"
    return out


def materialise(user_data: str, root: Path) -> dict[str, str]:
    """Write the user-data's files under ``root``, with /etc/tidehost and /var paths moved."""
    doc = yaml.safe_load(user_data)
    moved = {}
    for f in doc["write_files"]:
        content = (
            f["content"]
            .replace("/etc/tidehost/", f"{root}/etc/tidehost/")
            .replace("/var/lib/etcd/tidehost", f"{root}/var/lib/etcd/tidehost")
        )
        dest = root / f["path"].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(content)
        dest.chmod(int(f["permissions"], 8))
        moved[f["path"]] = content
    return moved


def host_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the node's scripts get from its etcdctl.env (a shell fragment)."""
    env = dict(os.environ)
    for line in (root / "etc/tidehost/etcdctl.env").read_text().splitlines():
        if line and not line.startswith("#"):
            k, _, val = line.partition("=")
            env[k] = "".join(shlex.split(val))
    env |= extra or {}
    return env
