"""Shared fixtures: certificates for the example and the matrix cluster, cluster file factory."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cloudconfig_helpers import EXAMPLE, matrix_data, write_cluster  # noqa: E402

from imagebuild.cloudconfig import generate_certs, parse_cluster_file  # noqa: E402


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates for the example and the matrix cluster (their node names differ)."""
    d = tmp_path_factory.mktemp("certs")
    generate_certs(parse_cluster_file(EXAMPLE), d)
    tmp = tmp_path_factory.mktemp("matrix")
    generate_certs(parse_cluster_file(write_cluster(tmp / "cluster.yaml", matrix_data())), d)
    return d


@pytest.fixture
def cluster_file(tmp_path: Path, certs_dir: Path):
    """A factory: write cluster data to tmp_path, its etcd.cert_dir pointing at ``certs_dir``."""

    def make(data: dict, name: str = "cluster.yaml") -> Path:
        data = dict(data)
        etcd = dict(data.get("etcd") or {})
        if etcd.get("cert_dir", "certs") == "certs":
            etcd["cert_dir"] = str(certs_dir)
        data["etcd"] = etcd
        return write_cluster(tmp_path / name, data)

    return make


@pytest.fixture(autouse=True)
def _no_stale_log_handler() -> Iterator[None]:
    """``main()`` logs to the stderr of its test (capsys); drop that handler afterwards so a
    later test's log lines (the updater's tests, run after these) do not go to a closed
    stream ("Logging error" on stderr)."""
    yield
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if type(h) is not logging.StreamHandler]
