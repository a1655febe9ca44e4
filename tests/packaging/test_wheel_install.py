"""The toolkit as a user installs it: a wheel in a fresh venv (not ``pip install -e``).

The wheel must carry every data file (templates of cloud-config/ and vagrant/, the image's
data, the agent's units and their enablement links as data), and the installed toolkit must
produce the very same files as the checkout: the agent's part of an image (the configure
stage's updater install, into a tree), a node's user-data and a Vagrantfile with its seeds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild.cli import main
from imagebuild.image.stages.configure import install_agent_files

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "imagebuild", "updater", "channels", "cloud-config",
           "vagrant")  # fmt: skip
VAGRANT_INIT = ("vagrant", "init", "--nodes", "3", "--channel-url", "http://10.77.0.1:8080/",
                "--channel", "alpha", "--no-check")  # fmt: skip (no server: ask it nothing)
# What the installed toolkit reads through importlib.resources, as digests.
DATA_DIGESTS = """
import hashlib, json, sys
import imagebuild
from imagebuild.image.config import parse_image_file
from imagebuild.image.platforms.vagrant_user import insecure_keys
from imagebuild.image.stages.rootfs import dracut_conf
from imagebuild.lab.demo import example_cluster_file
assert "site-packages" in imagebuild.__file__, imagebuild.__file__
texts = {"reference": repr(parse_image_file(None)), "dracut": dracut_conf(),
         "vagrant-key": insecure_keys(), "example": example_cluster_file().read_text()}
print(json.dumps({k: hashlib.sha256(v.encode()).hexdigest() for k, v in texts.items()}))
"""


def tree_listing(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``root``: (kind and mode, content digest or link target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = (f"dir {path.stat().st_mode & 0o7777:o}", "")
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[rel] = (f"file {path.stat().st_mode & 0o7777:o}", digest)
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the toolkit installed from a wheel built from this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building in place would leave build/ in the checkout
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "certs", "*.egg-info", "build")
    for name in SOURCES:
        item = REPO / name
        if item.is_dir():
            shutil.copytree(item, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(item, src / name)
    run = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"),
           str(src)]  # fmt: skip
    subprocess.run(run, check=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("tidehost-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, cwd=tmp)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, cwd=tmp)  # fmt: skip
    return venv


def _in_venv(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=True)


def test_the_wheel_carries_the_data_and_no_symlinks(installed: Path) -> None:
    site = next(installed.glob("lib/python3*/site-packages"))
    for rel in ("imagebuild/cloudconfig/templates/user-data.yaml.j2",
                "imagebuild/cloudconfig/templates/parts/etcd.conf.j2",
                "imagebuild/cloudconfig/templates/examples/cluster.yaml",
                "imagebuild/vagrant/templates/Vagrantfile.j2",
                "imagebuild/image/platforms/data/vagrant-insecure.pub",
                "imagebuild/image/data/tidehost-emergency",
                "updater/dist/MANIFEST",
                "updater/dist/usr/lib/tmpfiles.d/tidehost-update.conf"):  # fmt: skip
        assert (site / rel).is_file(), rel
    assert not [p for p in site.rglob("*") if p.is_symlink()]


def test_installed_toolkit_reads_the_same_data(installed: Path, tmp_path: Path) -> None:
    code = [str(installed / "bin/python"), "-I", "-c"]
    got = _in_venv(installed, *code, DATA_DIGESTS, cwd=tmp_path).stdout
    want = subprocess.run([sys.executable, "-c", DATA_DIGESTS.replace(
        'assert "site-packages"', "# assert"), ], capture_output=True, text=True, check=True,
        cwd=REPO).stdout  # fmt: skip
    assert got == want


def test_installed_toolkit_installs_the_same_agent(installed: Path, tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; "
            "from imagebuild.image.stages.configure import install_agent_files; "
            "install_agent_files(Path(sys.argv[1]))")  # fmt: skip
    _in_venv(installed, str(installed / "bin/python"), "-I", "-c", code,
             str(tmp_path / "wheel-tree"), cwd=tmp_path)  # fmt: skip
    install_agent_files(tmp_path / "checkout-tree")
    wheel_tree = tree_listing(tmp_path / "wheel-tree")
    assert wheel_tree == tree_listing(tmp_path / "checkout-tree")
    system = "usr/lib/systemd/system"
    assert wheel_tree[f"{system}/multi-user.target.wants/tidehost-update.service"] == (
        "link", "../tidehost-update.service")
    assert wheel_tree[f"{system}/boot-complete.target.requires/tidehost-update-health.service"] \
        == ("link", "../tidehost-update-health.service")  # fmt: skip
    assert "usr/lib/python3/dist-packages/updater/agent.py" in wheel_tree
    assert "usr/lib/python3/dist-packages/channels/bundle.py" in wheel_tree


def test_installed_toolkit_renders_the_same_user_data_and_vagrantfile(
    installed: Path, tmp_path: Path
) -> None:
    cluster = tmp_path / "cluster.yaml"
    shutil.copy(REPO / "cloud-config/examples/cluster.yaml", cluster)
    assert main(["cloud-config", "certs", str(cluster)]) == 0  # both read these certificates
    tidehost = str(installed / "bin/tidehost")
    render = ("cloud-config", "render", str(cluster), "--provider", "nocloud", "--node", "node1")
    _in_venv(installed, tidehost, *render, "-o", str(tmp_path / "wheel.user-data"),
             cwd=tmp_path)  # fmt: skip
    assert main([*render, "-o", str(tmp_path / "checkout.user-data")]) == 0
    text = (tmp_path / "wheel.user-data").read_text()
    assert text.startswith("#cloud-config\n")
    assert text == (tmp_path / "checkout.user-data").read_text()

    init = (*VAGRANT_INIT, "--cluster", str(cluster))
    _in_venv(installed, tidehost, *init, "-o", str(tmp_path / "wheel-vagrant"), cwd=tmp_path)
    assert main([*init, "-o", str(tmp_path / "checkout-vagrant")]) == 0
    wheel = tree_listing(tmp_path / "wheel-vagrant")
    assert "Vagrantfile" in wheel and "seeds/node3/user-data" in wheel
    assert wheel == tree_listing(tmp_path / "checkout-vagrant")
