"""Fixtures of the Vagrant tests: a real channel repository with a box catalog, libvirt
(started by the test in a network namespace of its own where nothing runs it), folders
libvirt's QEMU may read, and the real ``vagrant`` with a private VAGRANT_HOME."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from channels.create import create
from imagebuild.core.platforms import BoxProvider
from imagebuild.lab import libvirt
from imagebuild.vagrant.catalog_io import write_box_catalog


@pytest.fixture(scope="session")
def libvirt_state() -> Iterator[libvirt.LibvirtState]:
    """libvirt answering on qemu:///system (stopped after the session if the test started it)."""
    if os.geteuid() != 0:
        pytest.fail("these tests start libvirtd and network namespaces: they need root")
    with libvirt.session() as state:
        yield state


def make_repo(path: Path, box_url_base: str, channel: str = "alpha") -> Path:
    """A signed channel repository whose ``channel`` catalog lists a (tiny, fake) libvirt box."""
    create(path, None)
    box = path.parent / f"{path.name}-fake.box"
    box.write_bytes(b"not a box: only the catalog is looked at\n")
    write_box_catalog(path, channel=channel, version="1.0.0", boxes={BoxProvider.LIBVIRT: box},
                      box_url_base=box_url_base)  # fmt: skip
    return path


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder libvirt's QEMU (user libvirt-qemu) can reach, unlike pytest's 0700 tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="tidehost-vagrant-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)

