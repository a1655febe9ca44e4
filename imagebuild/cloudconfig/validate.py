"""Validate user-data with the real ``cloud-init schema`` of the build machine."""

from __future__ import annotations

from pathlib import Path

from imagebuild.core.errors import ConfigError
from imagebuild.core.run import require, run


def validate_user_data(path: Path) -> str:
    """Run ``cloud-init schema -c PATH``; return its report, raise ConfigError if invalid."""
    require("cloud-init")
    proc = run(["cloud-init", "schema", "-c", path], check=False, capture=True, timeout=120)
    out = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    if proc.returncode != 0 or "Invalid" in out:
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        detail = "; ".join(ln for ln in lines if "Deprecat" not in ln)[-400:]
        raise ConfigError(f"{path}: cloud-init schema: {detail or f'exit {proc.returncode}'}")
    return out
