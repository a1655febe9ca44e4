#!/usr/bin/env python3
"""Platform artifact figures: time per platform format and each artifact's size.

    .venv/bin/python bench/platforms_bench.py

One warm build with every output format (the root-tree cache filled); the time of each
platform step comes from the build's own timed steps.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

from imagebuild.core.platforms import OutputFormat
from imagebuild.image.config import parse_image_file
from imagebuild.image.pipeline import build

MB = 1_000_000
_STEP = re.compile(r"✓ (\S+) \(.* OEM\) \(([\d.]+)s\)")


class _Steps(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if m := _STEP.search(record.getMessage()):
            self.seconds[m[1]] = float(m[2])


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    steps = _Steps()
    logging.getLogger("tidehost").addHandler(steps)
    logging.getLogger("tidehost").setLevel(logging.INFO)
    formats = ",".join(f.value for f in OutputFormat)
    config = parse_image_file(None).with_overrides(version="1.0.0", formats=formats)
    with tempfile.TemporaryDirectory(prefix="tidehost-platforms-bench-") as tmp:
        result = build(config, Path(tmp))
        print(f"build with every format: {result.seconds:.0f}s")
        for fmt, secs in steps.seconds.items():
            print(f"  {fmt:<20} {secs:6.1f}s")
        for kind, path in sorted(result.artifacts.items()):
            if path.is_file():
                size, used = path.stat().st_size / MB, path.stat().st_blocks * 512 / MB
                print(f"  {kind:<20} {size:8.0f} MB  ({used:.0f} MB on disk)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
