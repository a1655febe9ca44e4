"""The agent with the real parts that need no VM: the channel client over HTTP against a
repository served by ``channels.serve``, the etcd lock on a real etcd, slot writes on loop
devices.  Only the host's side effects (reboot, bless, units) and the bootloader are faked."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from channels.bundle import Slot, load_bundle
from channels.entries import boot_entry
from updater.agent import Agent, Layout
from updater.channel import HostChannel
from updater.config import AgentConfig, Strategy
from updater.lock.etcd import EtcdLockClient
from updater.lock.gateway import EtcdGateway
from updater.slots import SlotDevices
from updater.state import Phase, StateStore

pytestmark = pytest.mark.slow
client_mod = pytest.importorskip("channels.client")
releases = pytest.importorskip("channels.releases")
repository = pytest.importorskip("channels.repository")
create = pytest.importorskip("channels.create")
serve = pytest.importorskip("channels.serve")


def test_real_channel_and_etcd(tmp_path: Path, disk, bundles, host, etcd) -> None:  # noqa: ANN001
    repo = tmp_path / "repo"
    create.create(repo, None)
    with repository.open_repository(repo, None) as tuf:
        releases.ChannelRepository(tuf).publish(bundles["2.0.0"], "stable")
    server = serve.ChannelServer(repo / "published", "127.0.0.1", 0)
    server.start()
    try:
        esp = tmp_path / "efi"
        (esp / "loader/entries").mkdir(parents=True)
        m1 = load_bundle(bundles["1.0.0"])
        factory = boot_entry(m1, Slot.A, None)
        (esp / "loader/entries" / factory.filename).write_text(factory.text)
        host.roothash = m1.roothash
        group = f"it-{uuid.uuid4().hex[:6]}"
        cfg = AgentConfig(strategy=Strategy.ETCD_LOCK, group=group, channel_url=server.url,
                          channel_name="stable", state_dir=tmp_path / "state",
                          metrics_file=None, esp=esp, lease=60)
        devices = {s: SlotDevices(disk.parts[s.usr_label], disk.parts[s.verity_label])
                   for s in Slot}

        def agent() -> Agent:
            channel = HostChannel(client_mod.ChannelClient(
                server.url, "stable", cfg.state_dir / "channel",
                repo / "published" / "metadata" / "1.root.json", timeout=10))
            lock = EtcdLockClient(EtcdGateway([etcd.url]), group, cfg.lease)
            return Agent(cfg, host, lock, channel, layout=Layout(esp, devices))

        a = agent()
        a.startup()
        for _ in range(6):
            if host.reboots:
                break
            a.step()
        s = StateStore(cfg.state_dir).load()
        assert (s.phase, s.target_version, s.target_slot) == (Phase.REBOOTING, "2.0.0", "b")
        lock = EtcdLockClient(EtcdGateway([etcd.url]), group)
        assert lock.status().holders == ("m-test",)
        assert (esp / "loader/entries/tidehost-b+3.conf").is_file()
        assert not any((cfg.state_dir / "downloads").iterdir())  # bundle removed once staged

        host.boot_into("b", load_bundle(bundles["2.0.0"]))
        a = agent()
        assert a.startup().phase is Phase.CONFIRMING
        a.step()
        s = StateStore(cfg.state_dir).load()
        assert s.phase is Phase.IDLE and s.last_result == "updated to 2.0.0"
        assert host.blessed == [True] and lock.status().holders == ()
    finally:
        server.stop()
