"""One image built with every output format, shared by the platform tests of a session."""

from __future__ import annotations

import os

import pytest

from imagebuild.core.platforms import OutputFormat
from imagebuild.image.config import parse_image_file
from imagebuild.image.pipeline import BuildResult, build

PLATFORM_VERSION = "1.0.0"
ALL_FORMATS = ",".join(f.value for f in OutputFormat)


@pytest.fixture(scope="session")
def platform_image(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """raw, qcow2 and every platform artifact of the reference image (version 1.0.0, alpha)."""
    if os.geteuid() != 0:
        pytest.fail("the image build needs root (mmdebstrap --mode=root)")
    out = tmp_path_factory.mktemp("platforms")
    config = parse_image_file(None).with_overrides(
        version=PLATFORM_VERSION, channel="alpha", formats=ALL_FORMATS
    )
    return build(config, out)

