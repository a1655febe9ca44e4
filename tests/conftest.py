"""Shared fixtures: the reference image and the releases after it, each built once per test
session, and an SSH key.

The image build uses the root-tree cache (~/.cache/tidehost or $TIDEHOST_CACHE), so only the
first build on a machine bootstraps Debian; every later build is warm.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuild.core.platforms import OutputFormat
from imagebuild.image.config import ImageConfig, parse_image_file
from imagebuild.image.pipeline import BuildResult, build
from imagebuild.lab.etcd import LocalEtcd

TEST_VERSION = "1.0.0"
V2, V3 = "1.1.0", "1.2.0"  # the releases after it
# The suite tests what the images do, not how small they are: its builds compress /usr at
# zstd's level 3 (3 s a build, against ~2 min at the reference image's 19; both decompress
# alike). `make bench` (bench/build.py) builds the reference image as shipped and measures it.
FAST = {"compression_level": 3}


def _image(version: str, formats: str = "raw", base: ImageConfig | None = None) -> ImageConfig:
    """The reference image file (or ``base``) as the suite builds it: on alpha, at FAST."""
    return (base or parse_image_file(None)).with_overrides(version=version, channel="alpha",
                                                            formats=formats, **FAST)  # fmt: skip


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
    return build(_image(TEST_VERSION, "raw,qcow2"), out)


@pytest.fixture(scope="session")
def platform_image(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """The reference image built a second time, with every platform artifact: the platform
    tests' image, and the reproducibility test's second build of the same inputs."""
    if os.geteuid() != 0:
        pytest.fail("the image build needs root (mmdebstrap --mode=root)")
    out = tmp_path_factory.mktemp("platforms")
    return build(_image(TEST_VERSION, ",".join(f.value for f in OutputFormat)), out)


@pytest.fixture(scope="session")
def release_v2(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """The next release of the reference image (1.1.0, raw), built once for the update and
    cluster tests (before their guests boot, not beside them)."""
    return build(_image(V2), tmp_path_factory.mktemp("v2"))


@pytest.fixture(scope="session")
def failing_release_v3(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """1.2.0, whose health gate always fails (a drop-in in its /usr); its UKIs are unsigned,
    as every build without ``secure_boot`` is: the rollback test's release, and the one a
    Secure Boot host must refuse."""
    out = tmp_path_factory.mktemp("v3")
    dropin = out / "overlay/usr/lib/systemd/system/tidehost-update-health.service.d"
    dropin.mkdir(parents=True)
    (dropin / "50-broken.conf").write_text("[Service]\nExecStartPre=/bin/false\n")
    with_dropin = dataclasses.replace(parse_image_file(None), overlay=out / "overlay")
    return build(_image(V3, base=with_dropin), out)


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
