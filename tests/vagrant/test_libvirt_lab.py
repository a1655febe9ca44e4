"""lab.libvirt: libvirtd and virtlogd started in a network namespace of their own where no
service runs them (real daemons), idempotently, and stopped only by their starter."""

from __future__ import annotations

import grp
import os
from pathlib import Path

import pytest

from imagebuild.core.errors import VMError
from imagebuild.lab import libvirt
from imagebuild.lab.net import netns_exists


def test_start_is_idempotent_and_stop_ends_what_it_started(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("starting libvirtd needs root")
    before = libvirt.running()
    state = libvirt.start()
    assert libvirt.answers()
    again = libvirt.start()
    assert again == state  # nothing started twice
    if before is not None:  # a service (or an earlier start) runs it: leave it alone
        assert state == before
        return
    assert state.netns == libvirt.NETNS and netns_exists(state.netns)
    assert [d for d, _ in state.pids] == ["virtlogd", "libvirtd"]
    assert libvirt.running() == state
    xml = tmp_path / "d.xml"
    xml.write_text("<domain type='qemu'><name>tidehost-leftover</name><memory unit='MiB'>64"
                   "</memory><os><type arch='x86_64'>hvm</type></os></domain>")  # fmt: skip
    libvirt.virsh("define", str(xml))
    try:
        with pytest.raises(VMError, match="libvirt still has domain tidehost-leftover: remove"):
            libvirt.stop()
    finally:
        libvirt.virsh("undefine", "tidehost-leftover")
    done = libvirt.stop()
    assert done == [f"libvirtd (pid {state.pids[1][1]})", f"virtlogd (pid {state.pids[0][1]})",
                    f"netns {state.netns}"]  # fmt: skip
    assert not libvirt.answers() and not netns_exists(state.netns)
    assert libvirt.stop() == []  # nothing left to stop
    assert "not running" in libvirt.describe(libvirt.running())


def test_a_kvm_device_no_udev_set_up_gets_udevs_group_and_mode(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("changing a file's group needs root")
    kvm = grp.getgrnam("kvm").gr_gid  # libvirt-daemon-system's group
    bare, done = tmp_path / "kvm", tmp_path / "kvm-by-udev"
    for path, mode in ((bare, 0o600), (done, 0o666)):
        path.touch()
        os.chown(path, 0, 0)
        path.chmod(mode)
    libvirt.kvm_device_for_qemu(bare)
    libvirt.kvm_device_for_qemu(done)  # set up already (udev, or the admin): left alone
    libvirt.kvm_device_for_qemu(tmp_path / "absent")  # no /dev/kvm: nothing to do
    assert (bare.stat().st_gid, bare.stat().st_mode & 0o777) == (kvm, 0o660)
    assert (done.stat().st_gid, done.stat().st_mode & 0o777) == (0, 0o666)
