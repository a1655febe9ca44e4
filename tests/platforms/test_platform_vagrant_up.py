"""``vagrant up`` of the cluster, end to end, as a user types it: the platform build's
vagrant-libvirt box and release published to a real channel repository with its box
catalog, served by the channel server, ``tidehost vagrant init`` then the real ``vagrant
up`` with Debian's vagrant-libvirt on libvirtd (started here in a network namespace of its
own when nothing runs it, as on these machines: TCG guests). One node: three at once do not
fit the suite's budget on 2 cores (``make demo-vagrant`` runs three). Then ``vagrant box
update`` after a second publish, and ``vagrant destroy -f`` leaves libvirt as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagebuild.cli import tidehost
from imagebuild.image.pipeline import BuildResult
from imagebuild.image.platforms.oem import SPECS, Oem
from imagebuild.lab import libvirt
from imagebuild.lab.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.vm]

UP_TIMEOUT = 2400  # one TCG node took 326-399 s by hand; the box upload and a busy machine
TIDEHOST = str(Path(sys.executable).with_name("tidehost"))


@dataclass
class Cluster:
    state: libvirt.LibvirtState
    dir: Path  # the folder `init` wrote (libvirt's QEMU can reach it)
    repo: Path
    url: str
    box: Path
    env: dict[str, str]
    before: tuple[set[str], set[str], set[str]] = (set(), set(), set())  # libvirt's, at first
    up_seconds: float = 0.0

    def run(self, *argv: str, timeout: float = 600, check: bool = True,
            cwd: Path | None = None) -> str:
        """A command where libvirtd's guests are reachable (its network namespace), in the
        cluster's folder unless ``cwd`` says otherwise."""
        proc = subprocess.run([*self.state.prefix(), *argv], cwd=cwd or self.dir, env=self.env,
                              capture_output=True, text=True, timeout=timeout,
                              check=False)  # fmt: skip
        out = proc.stdout + proc.stderr
        if check:
            assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{out}"
        return out

    def ssh(self, command: str, timeout: float = 600) -> str:
        return self.run("vagrant", "ssh", "node1", "-c", command, timeout=timeout)


def domains() -> set[str]:
    return set(libvirt.virsh("list", "--all", "--name").split())


def networks() -> set[str]:
    return set(libvirt.virsh("net-list", "--all", "--name").split())


def volumes() -> set[str]:
    if "default" not in libvirt.virsh("pool-list", "--all", "--name").split():
        return set()
    out = libvirt.virsh("vol-list", "default")
    return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}


@pytest.fixture(scope="module")
def cluster(platform_image: BuildResult, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:  # fmt: skip
    if shutil.which("vagrant") is None:
        pytest.fail("vagrant is not installed (apt-get install vagrant vagrant-libvirt)")
    tmp = tmp_path_factory.mktemp("vagrant-up")
    home = tmp / "vagrant-home"
    home.mkdir()
    env = {**os.environ, "VAGRANT_HOME": str(home), "VAGRANT_CHECKPOINT_DISABLE": "1",
           "VAGRANT_DEFAULT_PROVIDER": "libvirt"}  # fmt: skip
    top = Path(tempfile.mkdtemp(prefix="tidehost-vagrant-", dir="/var/tmp"))
    top.chmod(0o755)  # pytest's tmp_path is closed to libvirt's QEMU user
    with libvirt.session() as state:
        if not state.netns:
            pytest.fail("libvirtd runs in this network namespace: the guests' way to the "
                        "channel server is the namespace's service address (run where "
                        "`tidehost vagrant libvirt start` starts libvirt, or stop the service)")
        port = free_port()
        url = f"http://{state.service_address}:{port}/"
        repo = tmp / "repo"
        tidehost("channel", "init", repo)
        # the release and, built beside it, its boxes: listed in alpha's box catalog
        out = tidehost("channel", "publish", repo, platform_image.artifacts["release"],
                       "--channel", "alpha", "--box-url-base", url)  # fmt: skip
        assert "vagrant box catalog: " in out
        box = platform_image.artifacts["vagrant-libvirt"]
        before = (domains(), networks(), volumes())
        server = libvirt.serve_channel(state, repo, port)
        c = Cluster(state=state, dir=top / "cluster", repo=repo, url=url, box=box, env=env,
                    before=before)
        try:
            c.dir.parent.mkdir(exist_ok=True)
            init = c.run(TIDEHOST, "vagrant", "init", "--nodes", "1", "--channel-url", url,
                         "--channel", "alpha", "-o", str(c.dir), cwd=c.dir.parent)  # fmt: skip
            assert f"trusting {url}metadata/root.json" in init
            t0 = time.monotonic()
            out = c.run("vagrant", "up", timeout=UP_TIMEOUT)
            c.up_seconds = time.monotonic() - t0
            print(f"vagrant up, 1 node: {c.up_seconds:.0f} s")
            assert "Machine booted and ready!" in out, out
            yield c
        finally:
            c.run("vagrant", "destroy", "-f", check=False, timeout=600)
            server.stop()
            shutil.rmtree(top, ignore_errors=True)


def test_the_node_answers_with_etcd_swarm_and_the_updater_on_the_channel(cluster: Cluster) -> None:
    status = cluster.ssh("cloud-init status --wait --long", timeout=1200)
    assert "status: done" in status, status
    # the box's OEM: its kernel arguments on the slot's command line, NoCloud (the cidata
    # CD-ROM) the only datasource cloud-init was offered
    oem = SPECS[Oem.VAGRANT]
    assert "DataSourceNoCloud" in status, status
    assert cluster.ssh("cat /oem/cmdline").splitlines()[0].strip() == oem.cmdline
    assert cluster.ssh("cat /proc/cmdline").splitlines()[0].strip().endswith(oem.cmdline)
    run_cfg = cluster.ssh("cat /run/cloud-init/cloud.cfg")
    listed = run_cfg.split("[", 1)[1].split("]", 1)[0].replace(" ", "").split(",")
    assert set(listed) <= set(oem.datasources), run_cfg
    health = cluster.ssh("sudo /etc/tidehost/bin/tidehost-etcdctl endpoint health --cluster")
    assert "is healthy" in health, health
    # tidehost-swarm forms the swarm after cloud-init, once etcd answers; the manager lists
    # its own hostname a moment after `swarm init` (its description comes with the agent's
    # first report)
    ls_nodes = "sudo docker node ls --format '{{.Hostname}} {{.ManagerStatus}}'"
    wait = (f"for i in $(seq 120); do systemctl is-active -q tidehost-swarm && {ls_nodes} | "
            f"grep -q '^node1 Leader' && break; sleep 5; done; {ls_nodes}")
    nodes = cluster.ssh(wait, timeout=900)
    assert "node1 Leader" in nodes, nodes
    update = cluster.ssh("sudo cat /etc/tidehost/update.yaml")
    assert cluster.url in update and "/etc/tidehost/channel-root.json" in update, update
    root = (cluster.repo / "published/metadata/root.json").read_text()
    assert cluster.ssh("sudo cat /etc/tidehost/channel-root.json").strip() == root.strip()
    check = cluster.ssh("sudo tidehost-update check")  # verifies the channel with that root
    assert "1.0.0" in check, check


def test_box_update_fetches_the_next_published_box(cluster: Cluster) -> None:
    # A second release's box: the same disk listed as 1.0.1 (a new version in the catalog
    # is what `vagrant box update` follows; building a second image would add minutes).
    tidehost("vagrant", "catalog", "publish", cluster.repo, "--channel", "alpha",
             "--version", "1.0.1", "--box", f"libvirt={cluster.box}",
             "--box-url-base", cluster.url)  # fmt: skip
    outdated = " ".join(cluster.run("vagrant", "box", "outdated").split())  # vagrant wraps it
    assert "A newer version of the box 'tidehost-alpha'" in outdated, outdated
    assert "The latest is version '1.0.1'" in outdated, outdated
    out = cluster.run("vagrant", "box", "update", timeout=900)
    assert "Successfully added box 'tidehost-alpha' (v1.0.1) for 'libvirt'" in out, out
    listed = cluster.run("vagrant", "box", "list")
    assert "tidehost-alpha (libvirt, 1.0.0)" in listed and "tidehost-alpha (libvirt, 1.0.1)" in (
        listed)


def test_destroy_leaves_no_domain_volume_or_network(cluster: Cluster) -> None:
    nvram = libvirt.virsh("dumpxml", f"{cluster.dir.name}_node1")
    found = re.search(r"<nvram[^>]*>([^<]+)</nvram>", nvram)  # <nvram template=...>PATH
    assert found, nvram
    path = found.group(1)
    assert Path(path).is_file()
    cluster.run("vagrant", "destroy", "-f", timeout=600)
    domains_before, networks_before, volumes_before = cluster.before
    assert domains() == domains_before
    assert networks() == networks_before
    assert volumes() == volumes_before
    assert not Path(path).exists()
