"""Cloud artifacts: GCE (disk.raw in an oldgnu sparse tar.gz), EC2 (raw, stream-optimized
VMDK, register-image JSON) and DigitalOcean (gzip'd qcow2). Recipes: ../shared/SPECS.md §6.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from imagebuild.core.platforms import OutputFormat
from imagebuild.core.run import require, run
from imagebuild.image.config import ImageConfig
from imagebuild.image.context import Artifact, Artifacts, BuildContext
from imagebuild.image.platforms.uefidata import aws_uefi_data

GiB = 1 << 30
SNAPSHOT_PLACEHOLDER = "SNAPSHOT_ID"


def ec2_register_image(c: ImageConfig, disk_bytes: int,
                       uefi_data: str | None = None) -> dict[str, Any]:  # fmt: skip
    """``aws ec2 register-image --cli-input-json`` parameters (pure).

    Replace ``SNAPSHOT_ID`` with the id ``aws ec2 import-snapshot`` (of the raw or VMDK)
    returns. UEFI boot (systemd-boot, no BIOS loader), ENA, IMDSv2 only. ``uefi_data``: the
    fleet's Secure Boot keys as EC2's variable store (``platforms.uefidata``); the instance
    then starts with Secure Boot on under the fleet's db, and with a NitroTPM for the PCR
    policy.
    """
    doc = {
        "Name": f"{c.name}-{c.version}-{c.channel.value}",
        "Description": f"Tidehost {c.version} ({c.channel.value})",
        "Architecture": "x86_64",
        "VirtualizationType": "hvm",
        "BootMode": "uefi",
        "EnaSupport": True,
        "SriovNetSupport": "simple",
        "ImdsSupport": "v2.0",
        "RootDeviceName": "/dev/xvda",
        "BlockDeviceMappings": [
            {
                "DeviceName": "/dev/xvda",
                "Ebs": {
                    "SnapshotId": SNAPSHOT_PLACEHOLDER,
                    "VolumeSize": -(-disk_bytes // GiB),
                    "VolumeType": "gp3",
                    "DeleteOnTermination": True,
                },
            }
        ],
    }
    if uefi_data:
        doc.update(UefiData=uefi_data, TpmSupport="v2.0")
    return doc


def ec2(ctx: BuildContext, disk: Path) -> Artifacts:
    require("qemu-img")
    stem = f"{ctx.config.artifact_stem}-ec2"
    raw = ctx.work / f"{stem}.raw"
    run(["cp", "--sparse=always", disk, raw])
    vmdk = ctx.work / f"{stem}.vmdk"
    run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk",
         "-o", "adapter_type=lsilogic,subformat=streamOptimized,compat6", disk, vmdk])  # fmt: skip
    params = ctx.work / f"{stem}.register-image.json"
    c = ctx.config
    uefi = aws_uefi_data(c.secure_boot.keys, f"{c.source}: secure_boot.keys") \
        if c.secure_boot else None  # fmt: skip
    doc = ec2_register_image(c, disk.stat().st_size, uefi)
    params.write_text(json.dumps(doc, indent=2) + "\n")
    return {Artifact.EC2_RAW: raw, Artifact.EC2_VMDK: vmdk, Artifact.EC2_REGISTER_IMAGE: params}


def gce(ctx: BuildContext, disk: Path) -> Artifacts:
    """GNU tar (not Python's tarfile, which GCE rejects), oldgnu format, sparse, gzip."""
    require("tar", "gzip")
    folder = ctx.work / "gce"
    folder.mkdir()
    run(["cp", "--sparse=always", disk, folder / "disk.raw"])
    tarball = ctx.work / f"{ctx.config.artifact_stem}-gce.tar.gz"
    run(["tar", "--format=oldgnu", "-Sczf", tarball, "-C", folder, "disk.raw"])
    os.unlink(folder / "disk.raw")
    return {OutputFormat.GCE: tarball}


def digitalocean(ctx: BuildContext, disk: Path) -> Artifacts:
    require("qemu-img", "gzip")
    qcow = ctx.work / f"{ctx.config.artifact_stem}-digitalocean.qcow2"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", disk, qcow])
    run(["gzip", "-n", "-f", qcow])
    return {OutputFormat.DIGITALOCEAN: qcow.with_name(qcow.name + ".gz")}
