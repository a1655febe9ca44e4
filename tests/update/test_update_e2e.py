"""End to end under QEMU: a host updates itself from a signed channel under the etcd lock.

v1 is the reference image; the host's agent polls a channel served from the test machine and
takes its reboot lock in an etcd started by the test. v2 is published: the host stages it by
delta (its slot A and ESP kernels as seeds, only the missing chunks fetched), although one
chunk it needs is corrupt in the store (that one file comes by full download instead),
takes the lock, reboots into slot B, passes its health gate, blesses the boot and releases
the lock. Then v3, whose health check fails, is published: the host tries it, falls back to
v2 on B by itself, reports rolled-back, releases the lock and never tries v3 again.

Several hosts sharing one lock (max=1, never two rebooting at once) are the cluster test's
rolling update (tests/cluster), three VMs with the lock in the cluster's own etcd.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from channels.bundle import load_bundle
from channels.casync.index import BlobIndex
from channels.casync.store import chunk_relpath
from imagebuild.image.pipeline import BuildResult
from imagebuild.lab.agent import print_status, status
from imagebuild.lab.hostlab import UpdateLab, bless_latency, unblessed, wait_for
from imagebuild.lab.vm import VM

pytestmark = [pytest.mark.slow, pytest.mark.vm]

V2, V3 = "1.1.0", "1.2.0"  # tests/conftest.py builds them: v3's health gate always fails


@pytest.fixture(scope="module")
def releases(reference_image: BuildResult, release_v2: BuildResult,
             failing_release_v3: BuildResult) -> dict[str, BuildResult]:  # fmt: skip
    return {"1.0.0": reference_image, V2: release_v2, V3: failing_release_v3}


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
    v1 = releases["1.0.0"]
    lab.publish(v1.artifacts["release"])
    disk = overlay_disk(v1.artifacts["qcow2"], tmp_path_factory.mktemp("host") / "host1.qcow2")
    vm = lab.boot(disk, ssh_keypair, "host1", cpus=2, memory=1536)
    try:
        vm.wait_ssh(timeout=900)
        yield vm
    finally:
        vm.stop(timeout=30)


def corrupt_a_chunk(repo: Path, old: str, new: str) -> tuple[str, str, Callable[[], None]]:
    """Flip a byte of the stored copy of a chunk that ``new``'s boot file for slot B (its
    UKI, or with format 1 its initrd) needs and ``old``'s lacks, so a host seeded with ``old``
    must fetch it (usr.img's if those files are equal).
    Returns the file, the chunk id and how to put the good chunk back."""
    targets = repo / "published/targets/alpha"

    def ids(version: str, fname: str) -> list[str]:
        index = next(targets.glob(f"*-{version}.{fname}.caibx"))
        return [c.id for c in BlobIndex.read(index).chunks]

    names = {p.name.split(f"-{new}.", 1)[1].removesuffix(".caibx")
             for p in targets.glob(f"*-{new}.*.caibx")}  # fmt: skip
    boot = "uki-b.efi" if "uki-b.efi" in names else "initrd"  # slot B's, from slot A
    for fname in (boot, "usr.img"):
        old_ids = set(ids(old, fname))
        missing = [c for c in ids(new, fname) if c not in old_ids]
        if missing:
            break
    assert missing, f"{new} shares every chunk with {old}: nothing to fetch"
    cid = missing[len(missing) // 2]
    path = repo / "published/chunks.castr" / chunk_relpath(cid)
    good = path.read_bytes()
    path.chmod(0o644)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    path.write_bytes(bytes(bad))

    def restore() -> None:
        path.write_bytes(good)
        path.chmod(0o444)

    return fname, cid, restore


def test_a_host_updates_itself_under_the_etcd_lock(lab: UpdateLab, releases, host: VM) -> None:
    st = wait_for(host, lambda s: s["state"] == "idle", timeout=300)
    assert (st["version"], st["slot"]) == ("1.0.0", "a")
    lab.publish(releases[V2].artifacts["release"])
    # at once, before the host's next check (every 20 s) reaches that file's chunks
    broken, cid, restore = corrupt_a_chunk(lab.repo, "1.0.0", V2)
    seen_holders: set[str] = set()
    most_at_once = 0
    deadline = time.monotonic() + 1800
    st = None
    try:
        while time.monotonic() < deadline:
            holders = lab.lock_holders()
            most_at_once = max(most_at_once, len(holders))
            seen_holders.update(holders)
            st = status(host)
            if st and st["version"] == V2 and st["state"] == "idle":
                break
            time.sleep(2)
    finally:
        restore()  # v3 finds an honest store
    assert st is not None and st["version"] == V2, f"the host did not reach {V2}: {st}"
    assert st["slot"] == "b" and not st["lock_held"] and st["last_error"] in ("", None), st
    holder = host.ssh("cat /etc/machine-id").strip()  # the agent's holder id by default
    assert seen_holders == {holder} and most_at_once == 1  # it held the lock to reboot ...
    assert lab.lock_holders() == []  # ... and released it once healthy
    assert unblessed(host, "b") == ""  # slot B's boot counter was removed: blessed
    assert "VERSION_ID=\"1.1.0\"" in host.ssh("cat /etc/os-release")
    # the first boot of a new /usr (factory /etc copy, ldconfig, ...) left nothing failed
    assert host.ssh("systemctl --failed --plain --no-legend").strip() == ""
    print(f"boot-complete.target to blessed + lock released: {bless_latency(host)} s")
    # the delta path: far less than the release was fetched, and the file whose chunk was
    # corrupt came whole (one line saying why), the others by delta
    v2 = load_bundle(releases[V2].artifacts["release"])
    full = sum(i.size for i in v2.files.values())
    broken_size = v2.files[broken].size
    print(f"v1 -> v2: fetched {st['fetched_bytes']} of {full} bytes, reused "
          f"{st['reused_bytes']}; {st['last_download']}")
    assert 0 < st["fetched_bytes"] < broken_size + full // 20, st
    assert st["reused_bytes"] > full - broken_size - full // 20, st
    lines = {ln.split(":", 1)[0]: ln for ln in st["last_download"]}
    assert lines[broken].startswith(f"{broken}: full download") and cid in lines[broken], lines
    boot = ["uki-b.efi"] if "uki-b.efi" in v2.files else ["vmlinuz", "initrd"]
    for fname in ("usr.img", *boot):
        if fname != broken:
            assert lines[fname].startswith(f"{fname}: delta"), lines
    # ... and the host ends exactly on v2: its root hash booted, its boot files on B
    assert f"usrhash={v2.roothash}" in host.ssh("cat /proc/cmdline")
    on_esp = (["/efi/EFI/Linux/tidehost-b.efi"] if boot == ["uki-b.efi"]
              else ["/efi/tidehost/b/vmlinuz", "/efi/tidehost/b/initrd"])  # fmt: skip
    sums = host.ssh(f"sudo sha256sum {' '.join(on_esp)}").split()
    assert sums[0::2] == [v2.files[f].sha256 for f in boot], sums


def test_a_release_that_fails_health_rolls_back_by_itself(lab: UpdateLab, releases,
                                                         host: VM) -> None:  # fmt: skip
    vm = host
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
    # between checks it is idle (or still reports the rollback); never fetching v3 again
    assert st["reboots"] == reboots and st["state"] in ("idle", "rolled-back", "checking"), st
    entries = vm.ssh("sudo find /efi/loader/entries /efi/EFI/Linux -type f -printf '%f\\n'").split()
    # v3's slot is never booted again: its entry is out of tries (or gone)
    assert not any(e.startswith("tidehost-a") and not e.startswith("tidehost-a+0")
                   for e in entries), entries
