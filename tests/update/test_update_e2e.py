"""End to end under QEMU: a release that fails its health gate rolls back by itself.

v1 is the reference image; the host's agent polls a channel served from the test machine and
takes its reboot lock in an etcd started by the test. v3, whose health check fails, is
published: the host stages it by delta, takes the lock, reboots into slot B, fails its gate,
marks the boot bad and falls back to v1 on slot A by itself, reports rolled-back, releases
the lock and never tries v3 again.

A good update (v2: staged by delta although a chunk it needs is corrupt in the store, blessed,
the lock released) is the cluster test's rolling update (tests/cluster): three VMs, one at a
time under the lock in the cluster's own etcd (max=1).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuild.image.pipeline import BuildResult
from imagebuild.lab.agent import print_status, status
from imagebuild.lab.hostlab import UpdateLab, wait_for
from imagebuild.lab.vm import VM

pytestmark = [pytest.mark.slow, pytest.mark.vm]

V1, V3 = "1.0.0", "1.2.0"  # tests/conftest.py builds them: v3's health gate always fails


@pytest.fixture(scope="module")
def releases(reference_image: BuildResult,
             failing_release_v3: BuildResult) -> dict[str, BuildResult]:  # fmt: skip
    return {V1: reference_image, V3: failing_release_v3}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpdateLab]:
    lab = UpdateLab(tmp_path_factory.mktemp("lab")).start()
    yield lab
    lab.stop()


def overlay_disk(base: Path, dest: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(dest), "4G"], check=True)  # fmt: skip
    return dest


@pytest.fixture(scope="module")
def host(lab: UpdateLab, releases, ssh_keypair: Path, tmp_path_factory) -> Iterator[VM]:
    v1 = releases[V1]
    lab.publish(v1.artifacts["release"])
    disk = overlay_disk(v1.artifacts["qcow2"], tmp_path_factory.mktemp("host") / "host1.qcow2")
    vm = lab.boot(disk, ssh_keypair, "host1", cpus=2, memory=1536)
    try:
        vm.wait_ssh(timeout=900)
        yield vm
    finally:
        vm.stop(timeout=30)


def test_a_release_that_fails_health_rolls_back_by_itself(lab: UpdateLab, releases,
                                                         host: VM) -> None:  # fmt: skip
    vm = host
    st = wait_for(vm, lambda s: s["state"] == "idle", timeout=300)
    assert (st["version"], st["slot"]) == (V1, "a")
    lab.publish(releases[V3].artifacts["release"])
    st = wait_for(vm, lambda s: s["state"] == "rolled-back" or (
        s["version"] == V1 and V3 in s.get("bad_versions", []) and s["state"] == "idle"),
        timeout=1800, on_change=print_status)  # fmt: skip
    assert (st["version"], st["slot"]) == (V1, "a")
    assert st["reboots"] >= 2, st  # into v3, and back
    assert V3 in st["bad_versions"]
    reboots = st["reboots"]
    deadline = time.monotonic() + 600  # released once the old slot is healthy again
    while lab.lock_holders() and time.monotonic() < deadline:
        time.sleep(5)
    assert lab.lock_holders() == []
    time.sleep(60)  # three more checks of the channel: v3 is still offered, never retried
    st = status(vm)
    assert st is not None and (st["version"], st["slot"]) == (V1, "a")
    # between checks it is idle (or still reports the rollback); never fetching v3 again
    assert st["reboots"] == reboots and st["state"] in ("idle", "rolled-back", "checking"), st
    # cloud-init provisioned the host's first boot only: the boots after it skipped it
    assert "status: disabled" in vm.ssh("cloud-init status", check=False)
    assert vm.ssh("systemctl is-active cloud-init-main.service", check=False).strip() \
        == "inactive"
    entries = vm.ssh("sudo find /efi/loader/entries /efi/EFI/Linux -type f -printf '%f\\n'").split()
    # v3's slot is never booted again: its entry is out of tries (or gone)
    assert not any(e.startswith("tidehost-b") and not e.startswith("tidehost-b+0")
                   for e in entries), entries
