"""BuildContext: the configuration plus the workspace paths every stage works in."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from imagebuild.core.platforms import OutputFormat
from imagebuild.image.config import ImageConfig
from imagebuild.image.keys import SigningKeys


class Artifact(StrEnum):
    """What a build publishes besides one file per output format (``OutputFormat``)."""

    RELEASE = "release"  # the release bundle, a folder
    EC2_RAW = "ec2-raw"  # EC2 has three: the raw disk, a VMDK, register-image parameters
    EC2_VMDK = "ec2-vmdk"
    EC2_REGISTER_IMAGE = "ec2-register-image"


Artifacts = dict[OutputFormat | Artifact, Path]


def default_cache_dir() -> Path:
    """Where slow, deterministic results (root trees) are kept, outside any checkout."""
    if env := os.environ.get("TIDEHOST_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tidehost"


@dataclass
class BuildContext:
    config: ImageConfig
    output_dir: Path
    cache_dir: Path
    work: Path  # a private folder inside output_dir, removed after the build
    # Filled in by stages as they run.
    build_id: str = ""  # from the inputs, once the root tree is in place (image.epoch)
    epoch: int = 0  # seconds: /usr's time and the newest time in it
    roothash: str = ""
    kernel_version: str = ""
    signing: SigningKeys | None = None  # the fleet's keys, unlocked into work (secure_boot)
    artifacts: Artifacts = field(default_factory=dict)

    @property
    def tree(self) -> Path:
        """The image's whole root tree, as built by mmdebstrap and then configured."""
        return self.work / "tree"

    @property
    def staging(self) -> Path:
        """What goes onto ROOT: /etc, /var, /home, mount points (no /usr contents)."""
        return self.work / "root-staging"

    @property
    def parts(self) -> Path:
        """Partition images and the bundle's files before they are published."""
        return self.work / "parts"
