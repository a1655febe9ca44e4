"""Vagrant boxes: libvirt (``box.img`` qcow2) and VirtualBox (``box.ovf`` + VMDK).

A box is a tar archive holding ``metadata.json``, the provider's files and a Vagrantfile
with the box's defaults (``hashicorp/vagrant:website/content/docs/boxes/format.mdx``). The
disk images inside are already compressed, so the tar itself is not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from imagebuild.core.platforms import BoxProvider
from imagebuild.core.run import output, require, run
from imagebuild.image.context import BuildContext
from imagebuild.image.platforms.ovf import OvfSpec, ovf_descriptor

GB = 1 << 30
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
VMDK_NAME = "box-disk1.vmdk"


def libvirt_metadata(virtual_size: int) -> dict[str, object]:
    """vagrant-libvirt's metadata.json; ``virtual_size`` in whole GB, rounded up (pure)."""
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": math.ceil(virtual_size / GB)}


def box_vagrantfile(provider: BoxProvider) -> str:
    """The Vagrantfile inside the box: the defaults a Tidehost guest needs (pure).

    UEFI only (systemd-boot), no synced folder (no guest additions, rsync or NFS client in
    /usr), user ``vagrant`` with the insecure key that ``vagrant up`` replaces.

    libvirt: OVMF's code as a read-only pflash loader with a writable variable store per
    machine. vagrant-libvirt 0.11 writes ``<loader type='pflash'>`` only when ``nvram`` is
    set (else ``type='rom'``, which QEMU refuses for a code-only image: "could not load PC
    BIOS"); an empty ``<nvram/>`` path makes libvirt give each domain its own copy of the
    firmware's template, ``/var/lib/libvirt/qemu/nvram/<domain>_VARS.fd`` (the firmware
    descriptors in /usr/share/qemu/firmware name the template for OVMF_CODE_4M.fd).
    """
    common = (
        "# Tidehost box defaults; a project's Vagrantfile may override any of them.\n"
        'Vagrant.configure("2") do |config|\n'
        '  config.vm.synced_folder ".", "/vagrant", disabled: true\n'
        '  config.ssh.username = "vagrant"\n'
    )
    if provider is BoxProvider.LIBVIRT:
        body = (
            "  # KVM where it runs guests, else QEMU's emulation (TCG), which boots slower.\n"
            '  driver = ENV.fetch("TIDEHOST_LIBVIRT_DRIVER") '
            '{ File.writable?("/dev/kvm") ? "kvm" : "qemu" }\n'
            '  config.vm.boot_timeout = driver == "qemu" ? 1200 : 300\n'
            "  config.vm.provider :libvirt do |lv|\n"
            "    lv.driver = driver\n"
            '    lv.machine_type = "q35"\n'
            "    # UEFI: OVMF's code read-only (pflash) plus this machine's own variable store\n"
            "    # (an empty path: libvirt copies the firmware's template per domain).\n"
            f'    lv.loader = ENV.fetch("TIDEHOST_OVMF_CODE", "{OVMF_CODE}")\n'
            '    lv.nvram = ""\n'
            '    lv.disk_bus = "virtio"\n'
            '    lv.nic_model_type = "virtio"\n'
            "    lv.memory = 2048\n"
            "    lv.cpus = 2\n"
            "  end\n"
        )
    else:
        body = (
            "  config.vm.provider :virtualbox do |vb|\n"
            '    vb.customize ["modifyvm", :id, "--firmware", "efi"]\n'
            '    vb.customize ["modifyvm", :id, "--nictype1", "virtio"]\n'
            "    vb.memory = 2048\n"
            "    vb.cpus = 2\n"
            "  end\n"
        )
    return common + body + "end\n"


def virtual_size(image: Path) -> int:
    info = json.loads(output(["qemu-img", "info", "--output=json", image]))
    return int(info["virtual-size"])


def _pack(box: Path, folder: Path, names: list[str]) -> Path:
    run(["tar", "-C", folder, "-cf", box, *names])
    return box


def libvirt_box(ctx: BuildContext, disk: Path, box: Path) -> Path:
    require("qemu-img", "tar")
    folder = ctx.work / "box-libvirt"
    folder.mkdir()
    img = folder / "box.img"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", disk, img])
    meta = libvirt_metadata(virtual_size(img))
    (folder / "metadata.json").write_text(json.dumps(meta) + "\n")
    (folder / "Vagrantfile").write_text(box_vagrantfile(BoxProvider.LIBVIRT))
    return _pack(box, folder, ["metadata.json", "Vagrantfile", "box.img"])


def virtualbox_box(ctx: BuildContext, disk: Path, box: Path) -> Path:
    require("qemu-img", "tar")
    folder = ctx.work / "box-virtualbox"
    folder.mkdir()
    vmdk = folder / VMDK_NAME
    run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk",
         "-o", "adapter_type=ide,subformat=streamOptimized", disk, vmdk])  # fmt: skip
    spec = OvfSpec(name=ctx.config.artifact_stem, disk_file=VMDK_NAME,
                   capacity=disk.stat().st_size)  # fmt: skip
    (folder / "box.ovf").write_text(ovf_descriptor(spec))
    (folder / "metadata.json").write_text(json.dumps({"provider": "virtualbox"}) + "\n")
    (folder / "Vagrantfile").write_text(box_vagrantfile(BoxProvider.VIRTUALBOX))
    return _pack(box, folder, ["metadata.json", "Vagrantfile", "box.ovf", VMDK_NAME])
