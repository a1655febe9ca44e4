"""Fixtures for the channel tests: synthetic bundles, repositories, a real HTTP server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from channels.bundle import FILES, FileInfo, Manifest
from channels.releases import ChannelRepository
from channels.repository import create, open_repository
from channels.serve import ChannelServer, StaticHandler

BundleMaker = Callable[..., Path]


def write_bundle(parent: Path, version: str, *, size: int = 4096, channel: str = "alpha",
                 seed: str = "", name: str = "tidehost") -> Path:
    """A small, valid release bundle: the four files with random-looking bytes + manifest."""
    bundle = parent / f"{name}-{version}{seed}.release"
    bundle.mkdir(parents=True)
    files = {}
    for i, fname in enumerate(FILES):
        data = hashlib.sha256(f"{version}{seed}{fname}".encode()).digest() * (size // 32 + i)
        (bundle / fname).write_bytes(data)
        files[fname] = FileInfo(len(data), hashlib.sha256(data).hexdigest())
    m = Manifest(
        name=name, version=version, channel=channel, build_id=f"test-{version}{seed}",
        arch="x86-64", suite="trixie", usr_filesystem="erofs",
        roothash=hashlib.sha256(version.encode()).hexdigest(), kernel_cmdline="console=ttyS0",
        boot_tries=3, files=files,
    )
    (bundle / "manifest.json").write_text(m.to_json())
    return bundle


@pytest.fixture
def make_bundle(tmp_path: Path) -> BundleMaker:
    def make(version: str, **kw: object) -> Path:
        return write_bundle(tmp_path / "bundles", version, **kw)  # type: ignore[arg-type]
    return make


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    create(path, None)
    return path


@pytest.fixture
def served(repo: Path) -> Iterator[ChannelServer]:
    server = ChannelServer(repo / "published", "127.0.0.1", 0, StaticHandler)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def root_json(repo: Path) -> Path:
    return repo / "published" / "metadata" / "1.root.json"


RepoOpener = Callable[..., AbstractContextManager[ChannelRepository]]


@pytest.fixture
def open_repo(repo: Path) -> RepoOpener:
    """``with open_repo() as r:`` gives a ChannelRepository on the test repository."""

    @contextmanager
    def ctx(path: Path = repo, passphrase: bytes | None = None,
            clock: Callable[[], datetime] | None = None) -> Iterator[ChannelRepository]:
        kw = {"clock": clock} if clock else {}
        with open_repository(path, passphrase, **kw) as tuf:
            yield ChannelRepository(tuf)
    return ctx


@pytest.fixture(autouse=True)
def _no_passphrase_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEHOST_KEY_PASSPHRASE", raising=False)
    os.environ.pop("TIDEHOST_KEY_PASSPHRASE", None)
