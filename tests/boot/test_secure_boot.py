"""End to end under QEMU: verified boot with the fleet's own keys, in two boots of one host.

v1 and v2 are built with ``secure_boot: {keys: DIR}`` (signed systemd-boot and UKIs, a
signed PCR 11 policy); v3 without (unsigned UKIs). Before the first boot, v2's UKI for slot B
with one byte changed is written onto v1's ESP as ``tidehost-b+3.efi``, as someone with the
disk in hand could. The host boots with OVMF's Secure Boot firmware in Setup Mode and a TPM:

1. systemd-boot enrols the fleet's PK, KEK and db and resets; Secure Boot is on. It prefers
   the newer B, the firmware refuses it, and the loader resets until B's tries are used up;
   slot A boots, /usr verity-backed, and nothing blesses the refused entry. A secret is
   sealed to the TPM with the UKI's PCR-signing key.
2. The agent takes v2 from the channel: it checks the UKI against the enrolled db, writes it
   as ``tidehost-b+3.efi``, reboots under the etcd lock; v2 boots on B, passes its health
   gate and is blessed, and the secret sealed on v1 opens on v2.

Then v3, whose UKIs are unsigned: ``channel publish`` refuses it on alpha, whose releases are
signed; published on beta and offered to the host there, the agent refuses it in one line
before writing anything and stays on B.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from channels.bundle import load_bundle
from channels.errors import ReleaseError
from imagebuild.core.files import data_file
from imagebuild.image.config import ImageConfig, Partitions, parse_image_text
from imagebuild.image.layout import MiB, layout
from imagebuild.image.pipeline import BuildResult, build
from imagebuild.lab.agent import print_status
from imagebuild.lab.hostlab import UpdateLab, wait_for
from imagebuild.lab.vm import VM

pytestmark = [pytest.mark.slow, pytest.mark.vm]

V1, V2, V3 = "1.0.0", "1.1.0", "1.2.0"
SECRET = "fleet-secret-42"
CRED = "/etc/credstore.encrypted/tidehost-test"


def signed_image(keys: Path) -> ImageConfig:
    """The reference image file with the fleet's keys; /usr compressed at zstd's level 3
    (about 40 s less per build: what is tested here is the boot chain, not /usr's size)."""
    text = data_file("imagebuild.image.data", "reference.yaml").read_text()
    config = parse_image_text(f"{text}secure_boot:\n  keys: {keys}\n", "<secure boot test>",
                              Path("."))  # fmt: skip
    return config.with_overrides(compression_level=3, formats="raw")


@pytest.fixture(scope="module")
def releases(fleet_keys: Path, failing_release_v3: BuildResult,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuildResult]:  # fmt: skip
    """v1 and v2 signed; v3 is the session's unsigned 1.2.0 (whose health gate would fail:
    it must never be written, let alone booted)."""
    out = tmp_path_factory.mktemp("sb-releases")
    signed = signed_image(fleet_keys)
    return {V1: build(signed.with_overrides(version=V1), out),
            V2: build(signed.with_overrides(version=V2), out),
            V3: failing_release_v3}  # fmt: skip


def tampered_disk(releases: dict[str, BuildResult], dest: Path) -> Path:
    """v1's disk with v2's UKI, one byte of its command line changed, as B's entry."""
    raw = dest / "v1-tampered.raw"
    subprocess.run(["cp", "--sparse=always", str(releases[V1].artifacts["raw"]), str(raw)],
                   check=True)  # fmt: skip
    uki = bytearray((releases[V2].artifacts["release"] / "uki.efi").read_bytes())
    at = uki.index(b"rd.emergency=reboot")
    uki[at] ^= 0x01  # "sd.emergency=reboot": still a command line, no longer the signed one
    bad = dest / "tidehost-b+3.efi"
    bad.write_bytes(bytes(uki))
    esp = next(p for p in layout(Partitions()) if p.label == "ESP")  # first, at 1 MiB
    subprocess.run(["mcopy", "-o", "-i", f"{raw}@@{esp.start_mib * MiB}", str(bad),
                    "::/EFI/Linux/tidehost-b+3.efi"], check=True)  # fmt: skip
    disk = dest / "host.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(raw), "-F", "raw",
                    str(disk), "4G"], check=True)  # fmt: skip
    return disk


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpdateLab]:
    lab = UpdateLab(tmp_path_factory.mktemp("sb-lab")).start()
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def host(lab: UpdateLab, releases, ssh_keypair: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:  # fmt: skip
    lab.publish(releases[V1].artifacts["release"])
    disk = tampered_disk(releases, tmp_path_factory.mktemp("sb-host"))
    vm = lab.boot(disk, ssh_keypair, "sbhost", cpus=2, memory=1536, secure_boot=True, tpm=True)
    try:
        seconds = vm.wait_ssh(timeout=1500)
        print(f"first boot to SSH (enrolment, three refused tries of B, then A): {seconds:.0f} s")
        yield vm
    finally:
        vm.stop(timeout=30)
        shutil.copy(vm.serial_log, lab.workdir / "sbhost-serial.keep.log")


def settled(vm: VM) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if vm.probe("systemctl is-system-running") not in ("starting", "initializing", ""):
            return
        time.sleep(3)


def test_first_boot_enrols_the_keys_refuses_the_changed_uki_and_boots_a(host: VM) -> None:
    settled(host)
    status = host.ssh("sudo bootctl status --no-pager 2>&1")
    assert "Secure Boot: enabled (user)" in status, status
    sb = host.ssh("od -An -tx1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-"
                  "00e098032b8c").split()  # fmt: skip
    assert sb[-1] == "01", sb
    serial = host.serial()
    assert "Custom Secure Boot keys successfully enrolled" in serial or "nrolling" in serial
    refused = [ln for ln in serial.splitlines() if "tidehost-b" in ln and "Access denied" in ln]
    assert len(refused) >= 3, refused  # every try of B was refused by the firmware
    assert json.loads(host.ssh("sudo tidehost-update status --json"))["slot"] == "a"
    assert "status:      verified" in host.ssh("sudo veritysetup status usr")
    assert host.ssh("findmnt -no SOURCE /usr").strip() == "/dev/mapper/usr"
    entries = host.ssh("sudo ls /efi/EFI/Linux").split()
    assert sorted(entries) == ["tidehost-a.efi", "tidehost-b+0-3.efi"], entries  # B not blessed
    assert host.ssh("systemctl --failed --plain --no-legend").strip() == ""


def test_a_secret_is_sealed_to_the_fleets_pcr_policy(host: VM) -> None:
    assert host.ssh("sudo test -s /run/systemd/tpm2-pcr-public-key.pem && "
                    "sudo test -s /run/systemd/tpm2-pcr-signature.json && echo ok").strip() == "ok"
    host.ssh(f"sudo mkdir -p /etc/credstore.encrypted && printf %s {SECRET} | sudo "
             f"systemd-creds encrypt --with-key=tpm2-with-public-key --name=tidehost-test "
             f"- {CRED} && sync")  # fmt: skip
    assert host.ssh(f"sudo systemd-creds decrypt --name=tidehost-test {CRED} - 2>/dev/null") \
        == SECRET


def test_the_agent_takes_v2_under_secure_boot_and_the_secret_opens(lab: UpdateLab, releases,
                                                                    host: VM) -> None:  # fmt: skip
    wait_for(host, lambda s: s["state"] == "idle" and s["version"] == V1, timeout=300)
    lab.publish(releases[V2].artifacts["release"])
    st = wait_for(host, lambda s: s["version"] == V2 and s["state"] == "idle", timeout=1800,
                  on_change=print_status)  # fmt: skip
    assert st["slot"] == "b" and st["last_error"] in ("", None), st
    settled(host)
    assert host.ssh("lsblk -no PARTLABEL $(sudo veritysetup status usr | "
                    "awk '/data device/ {print $3}')").strip() == "USR-B"
    assert "Secure Boot: enabled (user)" in host.ssh("sudo bootctl status --no-pager 2>&1")
    assert sorted(host.ssh("sudo ls /efi/EFI/Linux").split()) == ["tidehost-a.efi",
                                                                 "tidehost-b.efi"]  # blessed
    assert host.ssh(f"sudo systemd-creds decrypt --name=tidehost-test {CRED} - 2>/dev/null") \
        == SECRET  # sealed under v1's UKI, opened under v2's: same PCR-signing key


def test_an_unsigned_release_is_refused_and_the_host_stays(lab: UpdateLab, releases,
                                                           host: VM) -> None:  # fmt: skip
    v3 = releases[V3].artifacts["release"]
    assert load_bundle(v3, verify=False).db_sha256 == ""
    with pytest.raises(ReleaseError, match=r"its UKIs are unsigned, but channel alpha's releases "
                       r"are signed by db .*: hosts that enforce Secure Boot would refuse it$"):
        lab.publish(v3)  # refused at publish time: nothing of it reaches alpha
    lab.publish(v3, channel="beta")
    host.ssh("sudo sed -i 's/^  name: alpha$/  name: beta/' /etc/tidehost/update.yaml && "
             "sudo systemctl restart tidehost-update")  # fmt: skip
    st = wait_for(host, lambda s: "not signed" in (s["last_error"] or ""), timeout=900,
                  on_change=print_status)  # fmt: skip
    assert "uki.efi: Secure Boot would refuse it: not signed; this host enforces Secure " \
           "Boot, so it is not staged" in st["last_error"], st["last_error"]
    assert (st["version"], st["slot"]) == (V2, "b")
    assert sorted(host.ssh("sudo ls /efi/EFI/Linux").split()) == ["tidehost-a.efi",
                                                                 "tidehost-b.efi"]  # fmt: skip
