"""The libvirt box's own Vagrantfile: UEFI as a pflash loader with a per-domain NVRAM copy
(vagrant-libvirt 0.11 writes type='rom' without nvram, which QEMU refuses for OVMF's code
image), the domain type from the environment, checked by the real vagrant and plugin."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

from imagebuild.core.platforms import BoxProvider
from imagebuild.image.platforms.vagrant_box import OVMF_CODE, box_vagrantfile


def test_the_libvirt_box_boots_uefi_from_pflash_with_its_own_nvram() -> None:
    text = box_vagrantfile(BoxProvider.LIBVIRT)
    assert f'lv.loader = ENV.fetch("TIDEHOST_OVMF_CODE", "{OVMF_CODE}")' in text
    assert 'lv.nvram = ""' in text  # libvirt then copies the template per domain
    assert "lv.driver = driver" in text and "TIDEHOST_LIBVIRT_DRIVER" in text
    assert "nvram" not in box_vagrantfile(BoxProvider.VIRTUALBOX)


def test_vagrant_loads_and_validates_the_box_vagrantfile(
    tmp_path: Path, vagrant_env: dict[str, str]
) -> None:
    folder = tmp_path / "box"
    folder.mkdir()
    (folder / "metadata.json").write_text(json.dumps(
        {"provider": "libvirt", "format": "qcow2", "virtual_size": 1}))  # fmt: skip
    (folder / "Vagrantfile").write_text(box_vagrantfile(BoxProvider.LIBVIRT))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "box.img"), "16M"],
                   check=True)  # fmt: skip
    box = tmp_path / "t.box"
    with tarfile.open(box, "w") as t:
        for name in ("metadata.json", "Vagrantfile", "box.img"):
            t.add(folder / name, name)
    project = tmp_path / "project"
    project.mkdir()
    (project / "Vagrantfile").write_text('Vagrant.configure("2") { |c| c.vm.box = "t" }\n')

    def vagrant(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["vagrant", *argv], cwd=project, env={**vagrant_env, **env},
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip

    added = vagrant("box", "add", "--name", "t", str(box))
    assert added.returncode == 0, added.stdout + added.stderr
    for driver in ("qemu", "kvm"):
        ok = vagrant("validate", TIDEHOST_LIBVIRT_DRIVER=driver)
        assert ok.returncode == 0 and "validated successfully" in ok.stdout, ok.stdout + ok.stderr
