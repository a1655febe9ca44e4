"""Bad input to ``vagrant up`` stops it before anything is created, with one clear line from
the Vagrantfile's preflight (vagrant/tidehost.rb), not a Ruby backtrace: the real vagrant and
vagrant-libvirt against a real libvirtd (no guest boots here)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuild.cli import main
from imagebuild.lab import libvirt
from imagebuild.lab.net import free_port

from .conftest import make_repo

BACKTRACE = re.compile(r"\.rb:\d+:in `|^\s+from /", re.M)


@pytest.fixture
def served(libvirt_state: libvirt.LibvirtState, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(URL, root.json) of a repository with an alpha box catalog, served where vagrant and
    the guests reach it."""
    port = free_port()
    url = f"http://{libvirt_state.service_address or '127.0.0.1'}:{port}/"
    repo = make_repo(tmp_path / "repo", url)
    server = libvirt.serve_channel(libvirt_state, repo, port)
    yield url, repo / "published/metadata/root.json"
    server.stop()


def project(parent: Path, url: str, root: Path, channel: str = "alpha") -> Path:
    out = parent / "cluster"
    assert main(["vagrant", "init", "--nodes", "1", "--channel-url", url, "--channel", channel,
                 "--driver", "qemu", "--no-check", "--channel-root", str(root),
                 "-o", str(out)]) == 0  # fmt: skip
    return out


def vagrant_up(state: libvirt.LibvirtState, cwd: Path, env: dict[str, str],
               in_netns: bool = True) -> str:  # fmt: skip
    """vagrant up's one error line (it must fail, and without a backtrace)."""
    before = libvirt.virsh("list", "--all", "--name").split()
    proc = subprocess.run([*(state.prefix() if in_netns else []), "vagrant", "up"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert not BACKTRACE.search(text), text
    assert libvirt.virsh("list", "--all", "--name").split() == before  # nothing created
    lines = [ln for ln in text.splitlines() if ln.startswith("tidehost: ")]
    assert len(lines) == 1, text
    return lines[0]


def test_a_catalog_without_the_channel(libvirt_state, served, open_dir, vagrant_env) -> None:  # noqa: ANN001
    url, root = served
    line = vagrant_up(libvirt_state, project(open_dir, url, root, "beta"), vagrant_env)
    assert line == (f"tidehost: {url}vagrant/beta.json: no box catalog for this channel there "
                    "(HTTP 404): publish the channel's boxes (tidehost vagrant catalog publish "
                    "REPO --channel CHANNEL ...)")  # fmt: skip


def test_a_box_url_that_does_not_answer(libvirt_state, served, open_dir, vagrant_env) -> None:  # noqa: ANN001
    _, root = served
    url = f"http://{libvirt_state.service_address or '127.0.0.1'}:{free_port()}/"
    line = vagrant_up(libvirt_state, project(open_dir, url, root), vagrant_env)
    assert line.startswith(f"tidehost: the box catalog {url}vagrant/alpha.json does not answer (")
    assert line.endswith("): serve the channel repository there (tidehost channel serve REPO)")


def test_a_node_name_that_an_existing_domain_has(
    libvirt_state, served, open_dir, vagrant_env, tmp_path: Path  # noqa: ANN001
) -> None:
    url, root = served
    cwd = project(open_dir, url, root)
    name = f"{cwd.name}_node1"  # the folder's name is the domain prefix
    xml = tmp_path / "domain.xml"
    xml.write_text(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
                   "<os><type arch='x86_64'>hvm</type></os></domain>")  # fmt: skip
    libvirt.virsh("define", str(xml))
    try:
        line = vagrant_up(libvirt_state, cwd, vagrant_env)
    finally:
        libvirt.virsh("undefine", name)
    assert line == (f"tidehost: libvirt already has a domain {name}, not made by this folder's "
                    f"Vagrant: remove it (virsh -c qemu:///system undefine --nvram {name}) or run "
                    "the cluster from a folder of another name")  # fmt: skip


def test_libvirt_not_running(libvirt_state, served, open_dir, vagrant_env) -> None:  # noqa: ANN001
    url, root = served
    env = {**vagrant_env, "LIBVIRT_DEFAULT_URI": "qemu:///system?socket=/nonexistent/sock"}
    line = vagrant_up(libvirt_state, project(open_dir, url, root), env)
    assert line.startswith("tidehost: libvirt does not answer at "
                           "qemu:///system?socket=/nonexistent/sock (")  # fmt: skip
    assert line.endswith("start it (sudo systemctl start libvirtd; where no systemd runs it: "
                         "tidehost vagrant libvirt start)")  # fmt: skip


def test_vagrant_outside_libvirts_namespace(libvirt_state, served, open_dir, vagrant_env) -> None:  # noqa: ANN001
    if not libvirt_state.netns:
        pytest.skip("libvirtd runs in this network namespace (a systemd service)")
    url, root = served
    line = vagrant_up(libvirt_state, project(open_dir, url, root), vagrant_env, in_netns=False)
    assert line == (f"tidehost: libvirtd runs in network namespace {libvirt_state.netns}, and "
                    "vagrant must run there to reach its guests: ip netns exec "
                    f"{libvirt_state.netns} vagrant up")  # fmt: skip


def test_a_seed_qemu_cannot_read(libvirt_state, served, tmp_path: Path, vagrant_env) -> None:  # noqa: ANN001
    url, root = served
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    line = vagrant_up(libvirt_state, project(closed, url, root), vagrant_env)
    assert line == (f"tidehost: libvirt's QEMU cannot read {closed}/cluster/.vagrant/tidehost/"
                    f"node1-cidata.iso: {closed} is closed to other users (chmod o+x {closed}, "
                    "or keep the cluster in another folder; TIDEHOST_SEED_CHECK=0 skips this "
                    "check)")  # fmt: skip
