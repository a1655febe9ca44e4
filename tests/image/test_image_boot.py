"""End to end: build the reference image, boot it under QEMU, check it over SSH (testinfra).

One boot of the real image serves every check of the healthy host. Its disk carries one
more boot entry, a slot on trial whose /usr does not mount (a wrong filesystem type):
systemd-boot tries it first, its initrd fails and reboots by itself (no console prompt), and the next boot
takes the good slot A, which the checks then find. A second, short boot of a copy with one
corrupted byte in USR-A shows that dm-verity stops the boot, and that the host reboots.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra

from channels.bundle import Slot, load_bundle, usr_partuuids
from imagebuild.image.config import Partitions
from imagebuild.image.layout import layout
from imagebuild.image.pipeline import BuildResult
from imagebuild.lab.vm import SSH_OPTIONS, VM

pytestmark = [pytest.mark.slow, pytest.mark.vm]


TRIAL_ENTRY = "tidehost-trial+1.efi"  # systemd-boot: 1 try left


def add_failing_trial_entry(disk: Path, bundle: Path) -> None:
    """Give ``disk``'s ESP a type #2 entry sorted before slot A's (same version, a later
    name), with one try: slot A's UKI with its /usr filesystem type changed to one that does
    not exist, so that /usr does not mount under it. (A changed root hash would not do: the
    initrd finds /usr by the UUIDs that hash derives, and would wait for them until its
    device timeout.)"""
    m = load_bundle(bundle, verify=False)
    uki = bytearray((bundle / m.uki_file(Slot.A)).read_bytes())
    good = f"mount.usrfstype={m.usr_filesystem} ".encode()
    at = uki.index(good) + len(good) - 2
    uki[at] = ord("x") if uki[at] != ord("x") else ord("y")  # same length: squashfx
    src = disk.parent / TRIAL_ENTRY
    src.write_bytes(bytes(uki))
    esp = next(p for p in layout(Partitions()) if p.label == "ESP")
    subprocess.run(["mcopy", "-i", f"{disk}@@{esp.offset}", str(src),
                    f"::/EFI/Linux/{TRIAL_ENTRY}"], check=True)  # fmt: skip


@pytest.fixture(scope="module")
def booted(reference_image: BuildResult, ssh_keypair: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VM, object]]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("boot")
    disk = tmp / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(reference_image.artifacts["raw"]), str(disk)],
                   check=True)  # fmt: skip
    os.truncate(disk, 6 << 30)  # ROOT grows into the rest on first boot
    add_failing_trial_entry(disk, reference_image.artifacts["release"])
    vm = VM(disk=disk, ssh_key=ssh_keypair, serial_log=tmp / "serial.log")
    vm.start()
    try:
        seconds = vm.wait_ssh(timeout=600)
        print(f"boot to SSH: {seconds:.0f}s")
        host = testinfra.get_host(f"ssh://core@127.0.0.1:{vm.ssh_port}",
                                  ssh_extra_args=" ".join(SSH_OPTIONS),
                                  ssh_identity_file=str(ssh_keypair))  # fmt: skip
        # Let the boot finish: every unit settled, boot-complete.target reached.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            state = vm.probe("systemctl is-system-running")
            if state not in ("starting", "initializing", ""):
                break
            time.sleep(3)
        yield vm, host
    finally:
        vm.stop()


def test_a_failing_initrd_reboots_and_uses_up_the_trial(booted) -> None:
    """The trial entry's initrd failed (its /usr did not mount) and rebooted by itself,
    without a prompt; systemd-boot counted the try, and the good slot A booted."""
    vm, host = booted
    serial = vm.serial()
    assert serial.count("Linux version") == 2, serial[-3000:]  # the failed try, then slot A
    first, second = serial.split("Linux version")[1:3]
    # the cause on the console: /usr did not mount
    assert any(s in first for s in ("systemd-veritysetup@usr", "verity", "sysroot-usr")), \
        first[-3000:]  # fmt: skip
    for prompt in ("Press Enter", "Give root password", "Entering emergency mode. Exit"):
        assert prompt not in serial
    assert "Reached target multi-user.target" not in first
    entries = host.run("sudo ls /efi/EFI/Linux").stdout.split()
    assert "tidehost-trial+0-1.efi" in entries and "tidehost-a.efi" in entries, entries
    assert host.run("sudo tidehost-update status --json").stdout.count('"slot": "a"') == 1


def test_usr_is_read_only_from_the_verity_device(booted, reference_image: BuildResult) -> None:
    vm, host = booted
    usr = host.mount_point("/usr")
    assert usr.device == "/dev/mapper/usr"
    assert usr.filesystem == "squashfs" and "ro" in usr.options
    status = host.run("sudo veritysetup status usr").stdout
    assert "status:      verified" in status
    roothash = load_bundle(reference_image.artifacts["release"], verify=False).roothash
    assert f"root hash:   {roothash}" in status
    assert host.run("sudo touch /usr/bin/x").rc != 0


def test_booted_slot_is_a_found_by_its_root_hash(booted, reference_image: BuildResult) -> None:
    """The one UKI names no slot: the initrd found /usr by the partition UUIDs the root hash
    derives, which the build gave slot A; the agent reads the slot from /usr's device."""
    vm, host = booted
    m = load_bundle(reference_image.artifacts["release"], verify=False)
    cmdline = host.file("/proc/cmdline").content_string.split()
    assert f"usrhash={m.roothash}" in cmdline
    assert not [a for a in cmdline if a.startswith(("tidehost.slot=", "systemd.verity_usr_"))]
    status = host.run("sudo veritysetup status usr").stdout
    devices = dict(re.findall(r"(data|hash) device:\s+(\S+)", status))
    labels = {k: host.run(f"lsblk -no PARTLABEL,PARTUUID {v}").stdout.split() for k, v in devices.items()}
    usr, verity = usr_partuuids(m.roothash)
    assert labels == {"data": ["USR-A", usr], "hash": ["USR-A-VERITY", verity]}, status
    assert json.loads(host.run("sudo tidehost-update status --json").stdout)["slot"] == "a"


def test_os_release_has_version_and_channel(booted, reference_image: BuildResult) -> None:
    vm, host = booted
    text = host.file("/etc/os-release").content_string
    assert 'VERSION_ID="1.0.0"' in text and 'TIDEHOST_CHANNEL="alpha"' in text
    assert f'BUILD_ID="{reference_image.build_id}"' in text


def test_root_grew_to_fill_the_resized_disk(booted) -> None:
    vm, host = booted
    size = int(host.run("findmnt -bno SIZE /").stdout.strip())
    assert size > 4 * 1024**3, size  # ROOT was 1 GiB in the image; the disk grew to 6 GiB
    assert host.mount_point("/").device.startswith("/dev/")


def test_cloud_init_ran_and_installed_the_key(booted, ssh_keypair: Path) -> None:
    vm, host = booted
    assert "status: done" in host.run("cloud-init status --wait").stdout
    keys = host.file("/home/core/.ssh/authorized_keys").content_string
    assert ssh_keypair.with_suffix(".pub").read_text().split()[1] in keys
    # provisioned once, as by Ignition: the flag that makes later boots skip cloud-init is
    # written at this boot's orderly shutdown (tests/update sees a later boot), not now
    assert host.run("systemctl is-active tidehost-cloud-init-once").stdout.strip() == "active"
    assert not host.file("/etc/cloud/cloud-init.disabled").exists


def test_boot_is_blessed_and_no_unit_failed(booted) -> None:
    vm, host = booted
    bless = host.run("sudo /usr/lib/systemd/systemd-bless-boot status")
    assert bless.stdout.strip() in ("good", "clean"), (bless.stdout, bless.stderr)
    failed = host.run("systemctl --failed --plain --no-legend").stdout.strip()
    assert failed == "", failed
    assert host.run("systemctl is-system-running").stdout.strip() == "running"
    # nor did a generator (systemd's AF_VSOCK one failed on every boot, after loading modules)
    log = host.run("sudo journalctl -b -o cat --no-pager").stdout
    assert "generator failed" not in log, [ln for ln in log.splitlines() if "generator" in ln]


def test_an_unattended_host_never_waits_at_an_emergency_prompt(booted) -> None:
    vm, host = booted
    for mode in ("emergency", "rescue"):  # they reboot, so that a slot on trial falls back
        exec_start = host.run(f"systemctl show -p ExecStart --value {mode}.service").stdout
        assert f"/usr/lib/tidehost/emergency ; argv[]=/usr/lib/tidehost/emergency {mode}" in \
            exec_start, exec_start
    assert host.run("sh -n /usr/lib/tidehost/emergency").rc == 0
    # slow (emulated) hosts: a device or a start job gets 5 minutes, not 90 s
    shown = host.run("systemctl show -p DefaultTimeoutStartUSec -p DefaultDeviceTimeoutUSec")
    assert shown.stdout.split() == ["DefaultTimeoutStartUSec=5min",
                                    "DefaultDeviceTimeoutUSec=5min"], shown.stdout


def test_host_stack_is_installed(booted) -> None:
    vm, host = booted
    assert host.run("etcd --version").rc == 0
    assert host.run("etcdctl version").rc == 0
    assert host.service("docker").is_running
    assert host.run("sudo docker info --format '{{.ServerVersion}}'").rc == 0
    assert host.service("etcd").is_enabled is False  # until cloud-config makes it a member
    # no SysV scripts: cloud-config's `systemctl enable etcd` runs no systemd-sysv-install
    assert host.run("find /etc/init.d /etc/rc?.d -mindepth 1").stdout.strip() == ""
    enabled = host.run("sudo systemctl enable etcd.service 2>&1").stdout
    host.run("sudo systemctl disable etcd.service")
    assert "etcd.service" in enabled and "SysV" not in enabled, enabled
    # enabled from /usr (multi-user.target.wants in /usr/lib), so a new /usr can change it
    wanted_by = host.run("systemctl show -p WantedBy --value tidehost-update").stdout
    assert "multi-user.target" in wanted_by
    assert host.service("tidehost-update").is_running
    assert host.run("tidehost-update --help").rc == 0
    # every module the agent imports is there (status reaches the channel and delta code)
    status = host.run("tidehost-update status --json")
    assert status.rc == 0, status.stderr


def test_a_corrupted_byte_in_usr_a_stops_the_boot(reference_image: BuildResult,
                                                  ssh_keypair: Path, tmp_path: Path) -> None:  # fmt: skip
    disk = tmp_path / "corrupt.raw"
    subprocess.run(["cp", "--sparse=always", str(reference_image.artifacts["raw"]), str(disk)],
                   check=True)  # fmt: skip
    usr_a = next(p for p in layout(Partitions()) if p.label == "USR-A")
    with open(disk, "r+b") as f:  # flip one byte of /usr's superblock
        f.seek(usr_a.offset + 100)
        byte = f.read(1)
        f.seek(usr_a.offset + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    vm = VM(disk=disk, ssh_key=ssh_keypair, serial_log=tmp_path / "serial.log", snapshot=True)
    vm.start()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "is corrupted" not in vm.serial():
            time.sleep(2)
        while time.monotonic() < deadline and vm.serial().count("Linux version") < 2:
            time.sleep(2)  # emergency mode reboots (the only slot: it fails again)
        serial = vm.serial()
        assert "device-mapper: verity" in serial and "is corrupted" in serial
        assert "Reached target multi-user.target" not in serial
        assert serial.count("Linux version") >= 2, serial[-2000:]  # rebooted, did not wait
        assert "Press Enter" not in serial
        assert subprocess.run([*vm.ssh_args(), "true"], capture_output=True, timeout=30).returncode != 0
    finally:
        vm.stop(timeout=5)
        shutil.rmtree(tmp_path, ignore_errors=True)


# Stops PID 1 (ptrace, as a debugger would) and stays attached: systemd pings no watchdog.
FREEZE_PID1 = """import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
for request in (0x4206, 0x4207):  # PTRACE_SEIZE, PTRACE_INTERRUPT
    if libc.ptrace(request, 1, None, None) != 0:
        raise SystemExit(f"ptrace {request:#x}: errno {ctypes.get_errno()}")
time.sleep(3600)
"""


def test_a_hung_host_is_reset_by_its_watchdog(booted) -> None:
    """Last in this file: it reboots the module's host."""
    vm, host = booted
    assert host.file("/proc/sys/kernel/panic_on_oops").content_string.strip() == "1"
    assert host.file("/sys/class/watchdog/watchdog0/state").content_string.strip() == "active"
    assert host.file("/sys/class/watchdog/watchdog0/timeout").content_string.strip() == "180"
    # The image's 3 min, for slow emulated boots; 30 s here (PID 1's own runtime setting, not
    # the file) so that the test does not wait them out.
    vm.ssh("sudo busctl set-property org.freedesktop.systemd1 /org/freedesktop/systemd1 "
           "org.freedesktop.systemd1.Manager RuntimeWatchdogUSec t 30000000")  # fmt: skip
    assert host.file("/sys/class/watchdog/watchdog0/timeout").content_string.strip() == "30"
    boot_id = vm.ssh("cat /proc/sys/kernel/random/boot_id").strip()
    vm.ssh("sudo systemd-run --quiet --unit freeze-pid1 /usr/bin/python3 -c "
           f"'{FREEZE_PID1}'")  # fmt: skip
    frozen = time.monotonic()
    back = boot_id
    while back in (boot_id, "") and time.monotonic() < frozen + 900:
        time.sleep(10)  # PID 1 stopped: no unit starts, logins stall; then the reset, a boot
        back = vm.probe("cat /proc/sys/kernel/random/boot_id")
    assert back not in (boot_id, ""), "the host neither answered again nor rebooted"
    print(f"hung host reset and answering SSH again after {time.monotonic() - frozen:.0f} s")
