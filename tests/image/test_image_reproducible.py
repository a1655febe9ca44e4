"""Two real builds of the same inputs give the same release, byte for byte: usr.img,
usr.verity (fixed salt), the kernel and the initrd (dracut's reproducible mode, cached with
the tree), so a rebuild costs a delta update nothing and anyone can check a release."""

from __future__ import annotations

import pytest

from channels.bundle import load_bundle
from imagebuild.image.pipeline import BuildResult

pytestmark = [pytest.mark.slow]


def test_a_second_build_of_the_same_inputs_is_byte_identical(
    reference_image: BuildResult, platform_image: BuildResult
) -> None:
    again = platform_image  # the same image file and version, built again (more formats)
    first = load_bundle(reference_image.artifacts["release"], verify=False)
    second = load_bundle(again.artifacts["release"], verify=True)
    assert second.files == first.files  # name -> (size, sha256) of usr.img, verity, kernel, initrd
    assert (second.roothash, second.build_id) == (first.roothash, first.build_id)
    total = sum(f.size for f in first.files.values())
    print(f"release payload: {total / 1e6:.1f} MB in all: "
          + ", ".join(f"{n} {f.size / 1e6:.1f}" for n, f in first.files.items()))  # fmt: skip
    # The payload's size is a benchmark figure, not a test: the suite builds at zstd level 3
    # (tests/conftest.py); `bench/build.py` builds the reference image as shipped (level 19)
    # and prints its payload against issue 12's goal of 160 MB (171.7 MB measured).
    assert "uki.efi" in first.files and "uki-b.efi" not in first.files
