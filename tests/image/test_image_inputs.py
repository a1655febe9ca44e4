"""The image file's bytes: invalid UTF-8 and control characters are one line naming the file
and field (issue 11, item 3), never a traceback or a value that adds a line to a boot entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.core.errors import ConfigError
from imagebuild.image.config import parse_image_file


def test_invalid_utf8_image_file(tmp_path: Path) -> None:
    p = tmp_path / "image.yaml"
    p.write_bytes(b"name: tidehost\nkernel_cmdline: [console=ttyS0\xe9]\n")
    with pytest.raises(ConfigError) as err:
        parse_image_file(p)
    assert str(err.value) == f"{p}: the image file is not UTF-8 text (byte 45)"


@pytest.mark.parametrize(("value", "shown"), [
    ('"console=ttyS0\\ninitrd /evil"', r"'console=ttyS0\ninitrd /evil' contains the control "
                                       r"character '\n'"),
    ('"quiet\\u2028options init=/bin/sh"', "contains the control character '\\u2028'"),
    ('"console=ttyS0\\tquiet"', r"contains the control character '\t'"),
])  # fmt: skip
def test_kernel_cmdline_control_characters(tmp_path: Path, value: str, shown: str) -> None:
    p = tmp_path / "image.yaml"
    p.write_text(f"name: tidehost\nkernel_cmdline: [{value}]\n")
    with pytest.raises(ConfigError) as err:
        parse_image_file(p)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{p}: kernel_cmdline[0]: ") and shown in text
