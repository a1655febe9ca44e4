"""/usr without a VM: exclude filters through real dpkg, reproducible squashfs and verity
with the real tools on a small tree, the build's epoch and id from its inputs."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from channels.bundle import sha256_file
from channels.verity import Superblock
from imagebuild.core.errors import ConfigError
from imagebuild.image.config import parse_image_file
from imagebuild.image.context import BuildContext
from imagebuild.image.epoch import env_epoch, epoch_and_build_id, scan
from imagebuild.image.stages import rootfs, usr

EPOCH = 1_700_000_000


def test_exclude_globs_are_dpkg_filters_in_order() -> None:
    assert rootfs.dpkg_filters(("/usr/share/doc/*", "!/usr/share/doc/*/copyright")) == (
        "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright")  # fmt: skip
    a = rootfs.cache_key("trixie", None, ("p",), ("/a/*", "!/a/b"))
    assert a != rootfs.cache_key("trixie", None, ("p",), ("!/a/b", "/a/*"))  # order matters
    assert a != rootfs.cache_key("trixie", None, ("p",), ("/a/*",))


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="no dpkg")
def test_dpkg_leaves_out_what_exclude_names(tmp_path: Path) -> None:
    """The reference image's exclude list, applied by dpkg itself to a package's files."""
    pkg = tmp_path / "pkg"
    files = ["usr/bin/ctr", "usr/bin/containerd", "usr/share/doc/x/README",
             "usr/share/doc/x/copyright", "usr/lib/udev/hwdb.d/20-pci.hwdb",
             "usr/lib/python3.13/test/test_os.py", "usr/lib/python3.13/os.py",
             "usr/share/i18n/locales/de_DE", "usr/share/locale/locale.alias"]  # fmt: skip
    for f in files:
        (pkg / f).parent.mkdir(parents=True, exist_ok=True)
        (pkg / f).write_text(f)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text("Package: x\nVersion: 1\nArchitecture: all\n"
                                        "Maintainer: t <t@example.org>\nDescription: t\n")  # fmt: skip
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(tmp_path / "x.deb")],
                   check=True, capture_output=True)  # fmt: skip
    root = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates"):
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    filters = [f"--{f}" for f in rootfs.dpkg_filters(parse_image_file(None).exclude)]
    r = subprocess.run(["dpkg", f"--root={root}", "--force-script-chrootless",
                        "--force-not-root", *filters, "-i", str(tmp_path / "x.deb")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    kept = sorted(f for f in files if (root / f).exists())
    assert kept == ["usr/bin/containerd", "usr/lib/python3.13/os.py",
                    "usr/lib/python3.13/test/test_os.py",  # its package compiles every .py
                    "usr/share/doc/x/copyright", "usr/share/locale/locale.alias"]  # fmt: skip


def small_tree(root: Path) -> None:
    (root / "usr/lib/python3/dist-packages/m/__pycache__").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib/python3/dist-packages/m/__init__.py").write_text("X = 1\n")
    (root / "usr/bin/tool").write_bytes(random.Random(7).randbytes(300_000))  # incompressible
    (root / "usr/lib/os-release").write_text("ID=tidehost\n")
    (root / "usr/bin/link").symlink_to("tool")
    old = EPOCH - 1000
    os.utime(root / "usr/lib/python3/dist-packages/m/__init__.py", (old, old))


def test_clamp_keeps_older_times_and_clamps_newer(tmp_path: Path) -> None:
    small_tree(tmp_path)
    source = tmp_path / "usr/lib/python3/dist-packages/m/__init__.py"
    changed = usr.clamp_times(tmp_path / "usr", EPOCH)
    assert os.stat(source).st_mtime == EPOCH - 1000  # a .pyc's recorded source time holds
    assert os.stat(tmp_path / "usr/bin/tool").st_mtime == EPOCH
    assert os.lstat(tmp_path / "usr/bin/link").st_mtime == EPOCH
    assert os.stat(tmp_path / "usr").st_mtime == EPOCH
    assert changed >= 5 and usr.clamp_times(tmp_path / "usr", EPOCH) == 0


def usr_image(tmp_path: Path, name: str, **settings) -> tuple[Path, str]:
    """usr.img and usr.verity of ``small_tree`` made by the build's stage functions."""
    work = tmp_path / name
    small_tree(work / "tree")
    config = dataclasses.replace(parse_image_file(None), compression_level=3, **settings)
    ctx = BuildContext(config=config, output_dir=work, cache_dir=work, work=work,
                       build_id="20231114T221320Z-00000000", epoch=EPOCH)  # fmt: skip
    ctx.parts.mkdir()
    usr.make_usr_image(ctx)
    usr.make_verity(ctx)
    return ctx.parts, ctx.roothash


@pytest.mark.skipif(shutil.which("mksquashfs") is None or shutil.which("veritysetup") is None,
                    reason="no squashfs-tools or cryptsetup")  # fmt: skip
@pytest.mark.parametrize("settings", [{}, {"fragments": False, "compression_block_size": 128}])
def test_two_images_of_one_tree_are_byte_identical(tmp_path: Path, settings) -> None:
    (a, root_a), (b, root_b) = usr_image(tmp_path, "a", **settings), usr_image(tmp_path, "b", **settings)
    assert sha256_file(a / "usr.img") == sha256_file(b / "usr.img")
    assert sha256_file(a / "usr.verity") == sha256_file(b / "usr.verity") and root_a == root_b
    sb = Superblock.parse((a / "usr.verity").read_bytes()[:512])
    assert sb.salt.hex() == usr.VERITY_SALT  # fixed: a block's hash is the same in every release
    assert str(uuid.UUID(bytes=sb.uuid)) == usr.verity_uuid(sha256_file(a / "usr.img"))
    listing = subprocess.run(["unsquashfs", "-lls", "-d", "", str(a / "usr.img")],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "2023-11-14 22:13" in listing and "2023-11-14 21:56" in listing  # clamped, and kept
    if settings:
        stat = subprocess.run(["unsquashfs", "-s", str(a / "usr.img")], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
        assert "Block size 131072" in stat and "Fragments are not stored" in stat


def test_epoch_and_build_id_follow_the_inputs(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    small_tree(tree)
    config = parse_image_file(None).with_overrides(version="1.0.0")
    epoch, build_id = epoch_and_build_id(config, tree, "")
    assert (epoch, build_id) == epoch_and_build_id(config, tree, "")  # same inputs, same id
    assert epoch >= scan([tree]).newest  # the newest input (the toolkit's sources count)
    assert build_id != epoch_and_build_id(config.with_overrides(version="1.0.1"), tree, "")[1]
    pinned, pinned_id = epoch_and_build_id(config, tree, str(EPOCH))
    assert pinned == EPOCH and pinned_id.startswith("20231114T221320Z-")
    later = os.stat(tree / "usr/bin/tool").st_mtime + 10
    os.utime(tree / "usr/bin/tool", (later, later))
    assert epoch_and_build_id(config, tree, "")[1] != build_id  # a changed input: a new id


@pytest.mark.parametrize("raw", ["-1", "1.5", "yesterday", str(1 << 32)])
def test_a_bad_source_date_epoch_is_one_line(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^SOURCE_DATE_EPOCH: .* is not a whole number"):
        env_epoch(raw)
    assert env_epoch("") is None and env_epoch("0") == 0
