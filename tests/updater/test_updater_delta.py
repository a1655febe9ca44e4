"""The agent stages a release by delta (issue 12, item 3): seeded from its own running slot,
the stale other slot and the ESP's kernels, through the real channel client over HTTP, into
file-backed slots; the slot only receives verified bytes, and status reports the figures."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from delta_releases import release_pair  # loaded by tests/conftest.py
from hostile_mirror import HostileMirror, Tamper

from channels.bundle import Slot, load_bundle
from channels.casync import chunker, fastchunk
from channels.casync.index import BlobIndex
from channels.casync.store import chunk_relpath
from channels.client import ChannelClient
from channels.create import create
from channels.entries import boot_entry
from channels.releases import ChannelRepository
from channels.repository import open_repository
from imagebuild.core.run import run
from updater.agent import Agent, Layout
from updater.channel import HostChannel
from updater.config import AgentConfig, Strategy
from updater.seeds import host_seeds
from updater.slots import SlotDevices
from updater.state import Phase

SLOT = 12 << 20  # bytes of each file-backed USR partition


@pytest.fixture(scope="module")
def _fast_chunker() -> None:
    fastchunk.ensure_cached_library(run)
    chunker.default_cutter.cache_clear()


def put(path: Path, data: bytes, size: int) -> None:
    """A partition of ``size`` bytes holding ``data`` at its start (the rest: zeros)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.truncate(size)


@pytest.fixture
def site(tmp_path: Path, _fast_chunker: None):  # noqa: ANN201
    """A repository with 1.0.0 and 1.1.0 served by a mirror, and a host running 1.0.0 on slot
    A (its USR-A and USR-A-VERITY partitions and ESP files as the image build wrote them);
    slot B holds nothing."""
    v1, v2 = release_pair(tmp_path / "bundles", usr_size=8 << 20, channel="stable")
    repo = tmp_path / "repo"
    create(repo, None)
    for b in (v1, v2):
        with open_repository(repo) as tuf:
            ChannelRepository(tuf).publish(b, "stable")
    disk = tmp_path / "disk"
    devices = {s: SlotDevices(disk / s.usr_label, disk / s.verity_label) for s in Slot}
    put(devices[Slot.A].usr, (v1 / "usr.img").read_bytes(), SLOT)
    put(devices[Slot.A].verity, (v1 / "usr.verity").read_bytes(), 1 << 20)
    put(devices[Slot.B].usr, b"", SLOT)
    put(devices[Slot.B].verity, b"", 1 << 20)
    esp = tmp_path / "efi"
    for name in ("vmlinuz", "initrd"):
        put(esp / "tidehost/a" / name, (v1 / name).read_bytes(), (v1 / name).stat().st_size)
    (esp / "loader/entries").mkdir(parents=True)
    m1 = load_bundle(v1)
    factory = boot_entry(m1, Slot.A, None)
    (esp / "loader/entries" / factory.filename).write_text(factory.text)
    with HostileMirror(repo / "published") as mirror:
        yield v1, v2, repo, mirror, Layout(esp, devices), m1


def agent(tmp_path: Path, site, host, fake_lock, clock) -> Agent:  # noqa: ANN001
    v1, v2, repo, mirror, layout, m1 = site
    host.roothash = m1.roothash
    cfg = AgentConfig(strategy=Strategy.OFF, channel_url=mirror.url, channel_name="stable",
                      state_dir=tmp_path / "state", metrics_file=None, esp=layout.esp)
    client = ChannelClient(mirror.url, "stable", cfg.state_dir / "channel",
                           repo / "published/metadata/1.root.json", timeout=10)
    return Agent(cfg, host, fake_lock, HostChannel(client), layout=layout, clock=clock,
                 sleep=clock.sleep, rand=lambda: 0.5)


def test_the_seeds_are_the_slots_and_the_esp_kernels(site) -> None:  # noqa: ANN001
    v1, _, _, _, layout, _ = site
    seeds = host_seeds(layout.devices, layout.esp, Slot.A)
    usr = layout.devices[Slot.A].usr
    assert seeds[0].path == usr and seeds[0].size == (v1 / "usr.img").stat().st_size
    assert [s.path.name for s in seeds[1:]] == ["vmlinuz", "initrd"]  # slot B: never written


def test_the_agent_stages_by_delta_and_reports_the_figures(
        tmp_path: Path, site, host, fake_lock, clock,  # noqa: ANN001
        caplog: pytest.LogCaptureFixture) -> None:
    v1, v2, _, mirror, layout, _ = site
    a = agent(tmp_path, site, host, fake_lock, clock)
    caplog.set_level(logging.INFO)
    s, _ = a.check_and_stage(a.startup())
    assert s.phase is Phase.STAGED and s.target_version == "1.1.0", s.last_error
    full = sum(load_bundle(v2).files[f].size for f in load_bundle(v2).files)
    assert 0 < s.fetched_bytes < full / 20 and s.reused_bytes > full * 0.9
    st = a.status()
    assert (st["fetched_bytes"], st["reused_bytes"]) == (s.fetched_bytes, s.reused_bytes)
    assert [ln.split(",")[0] for ln in st["last_download"]] == [
        "manifest.json: full download", "usr.img: delta", "usr.verity: rebuilt from usr.img",
        "vmlinuz: delta", "initrd: delta"]
    b = layout.devices[Slot.B]
    img, tree = (v2 / "usr.img").read_bytes(), (v2 / "usr.verity").read_bytes()
    assert b.usr.read_bytes()[:len(img)] == img and b.verity.read_bytes()[:len(tree)] == tree
    for name in ("vmlinuz", "initrd"):
        assert (layout.esp / "tidehost/b" / name).read_bytes() == (v2 / name).read_bytes()
    assert (layout.esp / "loader/entries/tidehost-b+3.conf").is_file()
    journal = [r.getMessage() for r in caplog.records if r.name == "channels.delta"]
    for line in ("1.1.0 usr.img: delta", "1.1.0 vmlinuz: delta", "1.1.0 initrd: delta",
                 "1.1.0 usr.verity: rebuilt from usr.img", "1.1.0 manifest.json: full"):
        assert sum(ln.startswith(line) for ln in journal) == 1, (line, journal)
    assert not [p for p, _ in mirror.seen if p.endswith((".usr.img", ".usr.verity"))]


def test_a_corrupt_chunk_gives_that_file_in_full_and_still_the_release(
        tmp_path: Path, site, host, fake_lock, clock,  # noqa: ANN001
        caplog: pytest.LogCaptureFixture) -> None:
    v1, v2, repo, mirror, layout, _ = site
    caibx = next((repo / "published/targets/stable").glob("*.tidehost-1.1.0.initrd.caibx"))
    old = {c.id for c in BlobIndex.read(next((repo / "published/targets/stable").glob(
        "*.tidehost-1.0.0.initrd.caibx"))).chunks}
    needed = next(c.id for c in BlobIndex.read(caibx).chunks if c.id not in old)
    mirror.attack(f"chunks.castr/{chunk_relpath(needed)}", Tamper())
    a = agent(tmp_path, site, host, fake_lock, clock)
    caplog.set_level(logging.INFO)
    s, _ = a.check_and_stage(a.startup())
    assert s.phase is Phase.STAGED, s.last_error
    lines = [r.getMessage() for r in caplog.records if "delta path failed" in r.getMessage()]
    assert len(lines) == 1 and ".initrd:" in lines[0] and needed in lines[0]
    assert any(r.getMessage().startswith("1.1.0 initrd: full download") for r in caplog.records)
    assert (layout.esp / "tidehost/b/initrd").read_bytes() == (v2 / "initrd").read_bytes()
    img = (v2 / "usr.img").read_bytes()
    assert layout.devices[Slot.B].usr.read_bytes()[:len(img)] == img
    assert s.fetched_bytes >= (v2 / "initrd").stat().st_size
