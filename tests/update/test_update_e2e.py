"""End to end under QEMU: hosts update themselves from a signed channel under the etcd lock.

v1 is the reference image. Two hosts boot it and share one etcd (max=1). v2 is published:
both stage it, take turns with the lock (never two holders), reboot into slot B, pass their
health gate, bless the boot and release the lock. Then v3, whose health check fails, is
published: the first host tries it, falls back to v2 on B by itself, reports rolled-back,
releases the lock and never tries v3 again.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuild.config import parse_image_file
from imagebuild.pipeline import BuildResult, build
from imagebuild.updatelab import UpdateLab, bless_latency, print_status, status, wait_for
from imagebuild.vm import VM

pytestmark = [pytest.mark.slow, pytest.mark.vm]

V2, V3 = "1.1.0", "1.2.0"
BROKEN_HEALTH = "[Service]\nExecStartPre=/bin/false\n"


@pytest.fixture(scope="module")
def releases(reference_image: BuildResult, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, BuildResult]:  # fmt: skip
    out = tmp_path_factory.mktemp("releases")
    base = parse_image_file(None)
    v2 = build(base.with_overrides(version=V2, formats="raw"), out)
    overlay = out / "broken-overlay"
    dropin = overlay / "usr/lib/systemd/system/tidehost-update-health.service.d"
    dropin.mkdir(parents=True)
    (dropin / "50-broken.conf").write_text(BROKEN_HEALTH)
    v3 = build(dataclasses.replace(base, overlay=overlay).with_overrides(version=V3,
                                                                       formats="raw"), out)  # fmt: skip
    return {"1.0.0": reference_image, V2: v2, V3: v3}


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
def hosts(lab: UpdateLab, releases, ssh_keypair: Path, tmp_path_factory) -> Iterator[list[VM]]:
    tmp = tmp_path_factory.mktemp("hosts")
    v1 = releases["1.0.0"]
    lab.publish(v1.artifacts["release"])
    vms = []
    try:
        for name in ("host1", "host2"):
            disk = overlay_disk(v1.artifacts["qcow2"], tmp / f"{name}.qcow2")
            vms.append(lab.boot(disk, ssh_keypair, name, cpus=1, memory=1536))
        for vm in vms:
            vm.wait_ssh(timeout=900)
        yield vms
    finally:
        for vm in vms:
            vm.stop(timeout=30)


def test_two_hosts_update_one_at_a_time_under_the_etcd_lock(lab: UpdateLab, releases,
                                                            hosts: list[VM]) -> None:  # fmt: skip
    for vm in hosts:
        st = wait_for(vm, lambda s: s["state"] == "idle", timeout=300)
        assert (st["version"], st["slot"]) == ("1.0.0", "a")
    lab.publish(releases[V2].artifacts["release"])
    seen_holders: set[str] = set()
    most_at_once = 0
    done: dict[str, dict] = {}
    deadline = time.monotonic() + 2400
    while len(done) < len(hosts) and time.monotonic() < deadline:
        holders = lab.lock_holders()
        most_at_once = max(most_at_once, len(holders))
        seen_holders.update(holders)
        for vm in hosts:
            st = status(vm)
            if st and st["version"] == V2 and st["state"] == "idle":
                done[vm.hostname] = st
        time.sleep(2)
    assert len(done) == 2, f"not all hosts reached {V2}: {sorted(done)}"
    for st in done.values():
        assert st["slot"] == "b" and not st["lock_held"] and st["last_error"] in ("", None)
    assert most_at_once == 1, "two hosts held the reboot lock at once"
    assert len(seen_holders) == 2, seen_holders  # each host held it in turn
    assert lab.lock_holders() == []  # released after each host was healthy
    for vm in hosts:
        bless = vm.ssh("sudo /usr/lib/systemd/systemd-bless-boot status").strip()
        assert bless == "good", bless  # slot B's boot counter was removed: blessed
        assert "VERSION_ID=\"1.1.0\"" in vm.ssh("cat /etc/os-release")
        # the first boot of a new /usr (factory /etc copy, ldconfig, ...) left nothing failed
        assert vm.ssh("systemctl --failed --plain --no-legend").strip() == ""
        print(f"{vm.hostname}: boot-complete.target to blessed + lock released: "
              f"{bless_latency(vm)} s")


def test_a_release_that_fails_health_rolls_back_by_itself(lab: UpdateLab, releases,
                                                         hosts: list[VM]) -> None:  # fmt: skip
    vm, other = hosts
    other.stop(timeout=30)  # one host is enough to show the rollback
    lab.publish(releases[V3].artifacts["release"])
    st = wait_for(vm, lambda s: s["state"] == "rolled-back" or (
        s["version"] == V2 and V3 in s.get("bad_versions", []) and s["state"] == "idle"),
        timeout=1800, on_change=print_status)  # fmt: skip
    assert (st["version"], st["slot"]) == (V2, "b")
    assert V3 in st["bad_versions"]
    reboots = st["reboots"]
    deadline = time.monotonic() + 600  # released once the old slot is healthy again
    while lab.lock_holders() and time.monotonic() < deadline:
        time.sleep(5)
    assert lab.lock_holders() == []
    time.sleep(60)  # three more checks of the channel: v3 is still offered, never retried
    st = status(vm)
    assert st is not None and (st["version"], st["slot"]) == (V2, "b")
    assert st["reboots"] == reboots and st["state"] in ("idle", "rolled-back")
    entries = vm.ssh("sudo ls /efi/loader/entries").split()
    # v3's slot is never booted again: its entry is out of tries (or gone)
    assert not any(e.startswith("tidehost-a") and not e.startswith("tidehost-a+0")
                   for e in entries), entries
