"""Shared fixtures: the reference image, built once per test session, and an SSH key.

The image build uses the root-tree cache (~/.cache/tidehost or $TIDEHOST_CACHE), so only the
first build on a machine bootstraps Debian; every later build is warm.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuild.image.config import parse_image_file
from imagebuild.image.pipeline import BuildResult, build
from imagebuild.lab.etcd import LocalEtcd

TEST_VERSION = "1.0.0"


def _load_by_path(name: str) -> None:
    """Make ``tests/<name>.py`` importable as ``<name>`` without putting tests/ on sys.path
    (its folders channels/ and updater/ would shadow the real packages)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load_by_path("hostile_mirror")
_load_by_path("delta_releases")


@pytest.fixture
def vagrant_env(tmp_path: Path) -> dict[str, str]:
    """An environment for the real ``vagrant`` with a private, temporary VAGRANT_HOME."""
    if shutil.which("vagrant") is None:
        pytest.fail("vagrant is not installed (apt-get install vagrant vagrant-libvirt)")
    home = tmp_path / "vagrant-home"
    home.mkdir()
    return {**os.environ, "VAGRANT_HOME": str(home), "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_DEFAULT_PROVIDER": "libvirt"}  # fmt: skip


@pytest.fixture(scope="session")
def ssh_keypair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ed25519 key pair; returns the private key's path (``.pub`` beside it)."""
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="session")
def reference_image(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """The built-in reference image at version 1.0.0 on alpha: raw, qcow2 and its bundle."""
    if os.geteuid() != 0:
        pytest.fail("the image build needs root (mmdebstrap --mode=root)")
    out = tmp_path_factory.mktemp("out")
    config = parse_image_file(None).with_overrides(version=TEST_VERSION, channel="alpha")
    return build(config, out)


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEtcd]:
    """One real single-member etcd (Debian's etcd-server) on 127.0.0.1 for the session, the
    same the demo and the QEMU update test use; tests keep to their own keys."""
    if not shutil.which("etcd"):
        pytest.skip("etcd (Debian etcd-server) is not installed")
    e = LocalEtcd(tmp_path_factory.mktemp("etcd") / "data")
    e.start()
    yield e
    e.stop()
