"""Fixtures for the channel tests: synthetic bundles, repositories, a real HTTP server."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path

import pytest
from delta_releases import release_pair  # loaded by tests/conftest.py
from hostile_mirror import HostileMirror

from channels import verity
from channels.bundle import FILES, FileInfo, Manifest
from channels.client import ChannelClient
from channels.create import create
from channels.releases import ChannelRepository
from channels.repository import open_repository
from channels.serve import ChannelServer

BundleMaker = Callable[..., Path]


def write_bundle(parent: Path, version: str, *, size: int = 4096, channel: str = "alpha",
                 seed: str = "", name: str = "tidehost") -> Path:
    """A small, valid release bundle: the four files with random-looking bytes + manifest."""
    bundle = parent / f"{name}-{version}{seed}.release"
    bundle.mkdir(parents=True)
    data = {f: hashlib.sha256(f"{version}{seed}{f}".encode()).digest() * (size // 32 + i)
            for i, f in enumerate(FILES)}
    data["usr.img"] += bytes(-len(data["usr.img"]) % verity.BLOCK)  # whole blocks, as mksquashfs
    tree = verity.TreeBuilder(f"{version}{seed}".encode(), uuid=bytes(16))
    tree.update(data["usr.img"])
    hashes, roothash = tree.finish()  # the real tree (publish checks it), in a file at
    data["usr.verity"] = hashes.ljust(len(data["usr.verity"]), b"\0")  # least as long as before
    files = {}
    for fname in FILES:
        (bundle / fname).write_bytes(data[fname])
        files[fname] = FileInfo(len(data[fname]), hashlib.sha256(data[fname]).hexdigest())
    m = Manifest(
        name=name, version=version, channel=channel, build_id=f"test-{version}{seed}",
        arch="x86-64", suite="trixie", usr_filesystem="erofs",
        roothash=roothash, kernel_cmdline="console=ttyS0",
        boot_tries=3, files=files,
    )
    (bundle / "manifest.json").write_text(m.to_json())
    return bundle


@pytest.fixture
def delta_pair(tmp_path: Path, fast_chunker: None) -> tuple[Path, Path]:
    """1.0.0 and 1.1.0 that differ a little (tests/delta_releases.py)."""
    return release_pair(tmp_path / "bundles")


@pytest.fixture(scope="session")
def fast_chunker() -> None:
    """casync's chunker with its C scanner, built into the cache as the workstation does."""
    from channels.casync import chunker, fastchunk
    from imagebuild.core.run import run

    fastchunk.ensure_cached_library(run)
    chunker.default_cutter.cache_clear()


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
def mirror(repo: Path) -> Iterator[HostileMirror]:
    """The test repository served on a free port of 127.0.0.1 by ``channel serve``'s server,
    turned into a hostile mirror: ``mirror.attack(pattern, Attack)`` (tests/hostile_mirror.py)."""
    with HostileMirror(repo / "published") as m:
        yield m


@pytest.fixture
def served(mirror: HostileMirror) -> ChannelServer:
    """The mirror's server (honest until attacked); ``served.seen`` records every GET."""
    return mirror.server


ClientMaker = Callable[..., ChannelClient]


@pytest.fixture
def make_client(served: ChannelServer, root_json: Path, tmp_path: Path) -> ClientMaker:
    """A ChannelClient on ``served``; the same ``host`` keeps the same state directory."""

    def make(channel: str = "alpha", host: str = "host1", timeout: float = 5.0) -> ChannelClient:
        return ChannelClient(served.url, channel, tmp_path / "state" / host, root_json,
                             timeout=timeout)
    return make


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
def _no_stale_log_handler() -> Iterator[None]:
    """``main()`` logs to the stderr of its test (capsys); drop that handler afterwards so a
    later test's log lines do not go to a closed stream ("Logging error" on stderr)."""
    yield
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if type(h) is not logging.StreamHandler]


@pytest.fixture(autouse=True)
def _no_passphrase_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEHOST_KEY_PASSPHRASE", raising=False)
    os.environ.pop("TIDEHOST_KEY_PASSPHRASE", None)
