"""The agent behind a hostile mirror (issue 11): its check, download and stage steps survive.

A real repository, signed for real, publishes a real 2.0.0 bundle (squashfs + verity) on
stable; the agent of a host running 1.0.0 polled the honest mirror before, then the mirror
(``tests/hostile_mirror.py``) turns: it tampers, truncates, sends endless data, drips,
replays, freezes, signs with its own key or serves another channel's role. Every attack ends
the agent's step with one log line and no traceback, the state a failed check or stage with
back-off (the next step waits and asks nobody), no byte written to either slot (plain files
here: the write is never reached) nor the ESP, and nothing left in ``downloads/``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hostile_mirror import Drip, Endless, HostileMirror, Lie, Stall, Tamper, Truncate
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from channels.bundle import Slot, load_bundle
from channels.client import ChannelClient
from channels.create import create
from channels.entries import boot_entry
from channels.releases import ChannelRepository
from channels.repository import open_repository
from updater.agent import Agent, Layout
from updater.channel import HostChannel
from updater.config import AgentConfig, Strategy
from updater.slots import SlotDevices
from updater.state import Phase, StateStore

pytestmark = pytest.mark.slow
TIMEOUT = 5.0
# seconds for any step under attack: a fetch's deadline is the timeout plus its signed length
# at 16 KiB/s (the 260 KB usr.img dripped: 21 s)
BOUND = 30.0
SLOT_SIZE = 1 << 20


@dataclass
class Scene:
    repo: Path
    mirror: HostileMirror
    earlier: dict[str, bytes]  # the metadata before 2.0.0 was published

    @property
    def md(self) -> Path:
        return self.repo / "published" / "metadata"

    def open(self, clock: Callable[[], datetime] | None = None):  # noqa: ANN201
        return open_repository(self.repo, None, **({"clock": clock} if clock else {}))

    def target(self, glob: str) -> str:
        (found,) = self.mirror.targets(glob)
        return found

    def advance(self, channel: str) -> None:
        with self.open() as tuf:
            tuf.channel(channel)
            tuf.commit()

    def version(self, role: str) -> int:
        import json

        ts = json.loads((self.md / "timestamp.json").read_bytes())["signed"]["meta"]
        sv = ts["snapshot.json"]["version"]
        if role == "snapshot":
            return sv
        snap = json.loads((self.md / f"{sv}.snapshot.json").read_bytes())
        return snap["signed"]["meta"][f"{role}.json"]["version"]


@pytest.fixture
def scene(tmp_path: Path, bundles: dict[str, Path]) -> Scene:  # noqa: ANN001
    repo = tmp_path / "repo"
    create(repo, None)
    mirror = HostileMirror(repo / "published")
    earlier = mirror.capture()
    with open_repository(repo, None) as tuf:
        ChannelRepository(tuf).publish(bundles["2.0.0"], "stable")
    with mirror:
        yield Scene(repo, mirror, earlier)


# --- the attacks --------------------------------------------------------------------------


def tamper_target(s: Scene) -> None:
    s.mirror.attack(s.target("stable/*.tidehost-2.0.0.usr.img"), Tamper())


def tamper_timestamp(s: Scene) -> None:
    s.mirror.attack("metadata/timestamp.json", Tamper(at=0.9))


def truncate_target(s: Scene) -> None:
    # usr.img, not usr.verity: a seeded download rebuilds usr.verity instead of fetching it
    s.mirror.attack(s.target("stable/*.tidehost-2.0.0.usr.img"), Truncate(1000))


def endless_timestamp(s: Scene) -> None:
    s.mirror.attack("metadata/timestamp.json", Endless())


def endless_target(s: Scene) -> None:
    s.mirror.attack(s.target("stable/*.tidehost-2.0.0.initrd"), Endless())


def lie_target(s: Scene) -> None:
    s.mirror.attack(s.target("stable/*.tidehost-2.0.0.usr.img"), Lie())


def drip_timestamp(s: Scene) -> None:  # one byte every 2 s
    s.mirror.attack("metadata/timestamp.json", Drip(interval=2.0))


def drip_target(s: Scene) -> None:  # 64 bytes every 0.5 s: hours for the usr.img
    s.mirror.attack(s.target("stable/*.tidehost-2.0.0.usr.img"), Drip(interval=0.5, step=64))


def stall_snapshot(s: Scene) -> None:
    s.advance("stable")
    s.mirror.attack("metadata/*.snapshot.json", Stall(60))


def replay(s: Scene) -> None:  # the metadata of before 2.0.0, validly signed
    s.mirror.replay(s.earlier)


def freeze(s: Scene) -> None:  # the mirror stopped syncing 3 days ago; the origin goes on
    stale = datetime.now(UTC) - timedelta(days=3)
    with s.open(clock=lambda: stale) as tuf:
        tuf.refresh()
    s.mirror.freeze()
    with s.open() as tuf:
        tuf.refresh()


def mix_target(s: Scene) -> None:  # 2.0.0's initrd (validly signed, 12 bytes) as its usr.img
    s.mirror.serve_as(s.target("stable/*.tidehost-2.0.0.usr.img"),
                      s.target("stable/*.tidehost-2.0.0.initrd"))


def wrong_key_timestamp(s: Scene) -> None:
    ts = Metadata.from_bytes((s.md / "timestamp.json").read_bytes())
    ts.signed.version += 1
    ts.signatures.clear()
    ts.sign(CryptoSigner.generate_ed25519())
    s.mirror.serve_as("metadata/timestamp.json", ts.to_bytes(JSONSerializer()))


def wrong_key_root(s: Scene) -> None:  # a root rotation to the mirror's own keys
    root = Metadata[Root].from_bytes((s.md / "1.root.json").read_bytes())
    evil = CryptoSigner.generate_ed25519()
    root.signed.version = 2
    for role in ("root", "timestamp", "snapshot", "targets"):
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(evil.public_key, role)
    root.signatures.clear()
    root.sign(evil)
    s.mirror.serve_as("metadata/2.root.json", root.to_bytes(JSONSerializer()))


def wrong_channel(s: Scene) -> None:  # beta's role metadata served as stable's
    s.advance("stable")
    s.advance("beta")
    s.mirror.serve_as(f"metadata/{s.version('stable')}.stable.json",
                      f"metadata/{s.version('beta')}.beta.json")


CHECK, STAGE = r"^check failed: ", r"^staging 2\.0\.0 failed: "
ATTACKS = [
    ("tamper target", tamper_target, STAGE, r"usr\.img .*differs from what role stable signed"),
    ("tamper timestamp", tamper_timestamp, CHECK, r"timestamp\.json"),
    ("truncate target", truncate_target, STAGE, r"usr\.img .*\(truncated\)"),
    ("endless timestamp", endless_timestamp, CHECK, r"timestamp\.json: .*exceeding the maximum"),
    ("endless target", endless_target, STAGE, r"initrd .*\(endless data\)"),
    ("lie about length", lie_target, STAGE, r"usr\.img .*server announces 1099511627776 bytes"),
    ("drip timestamp", drip_timestamp, CHECK, r"timestamp\.json: .*\(slow retrieval\)"),
    ("drip target", drip_target, STAGE, r"usr\.img .*\(slow retrieval\)"),
    ("stall", stall_snapshot, CHECK, r"snapshot\.json: timed out"),
    ("replay", replay, CHECK, r"\(older than what this host already trusts"),
    ("freeze", freeze, CHECK, r"\(stale repository or freeze attack\)"),
    ("mix-and-match target", mix_target, STAGE, r"usr\.img .*: response ended after 12 of"),
    ("wrong key timestamp", wrong_key_timestamp, CHECK, r"timestamp was signed by 0/1 keys"),
    ("wrong key root", wrong_key_root, CHECK, r"root was signed by 0/1 keys"),
    ("wrong channel", wrong_channel, CHECK, r"stable"),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name, attack, step, line", ATTACKS,
                         ids=[a[0].replace(" ", "-") for a in ATTACKS])
def test_agent_survives(name: str, attack: Callable[[Scene], None], step: str, line: str,
                        scene: Scene, bundles: dict[str, Path], host, fake_lock,  # noqa: ANN001
                        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m1 = load_bundle(bundles["1.0.0"])
    host.roothash = m1.roothash
    esp = tmp_path / "efi"
    (esp / "loader/entries").mkdir(parents=True)
    factory = boot_entry(m1, Slot.A, None)
    (esp / "loader/entries" / factory.filename).write_text(factory.text)
    devices = {}
    for s in Slot:  # file-backed slots: any byte written would show
        usr, verity = tmp_path / f"{s.usr_label}.img", tmp_path / f"{s.verity_label}.img"
        for f in (usr, verity):
            f.write_bytes(b"\0" * SLOT_SIZE)
        devices[s] = SlotDevices(usr, verity)
    before = {p.name: _digest(p) for p in tmp_path.glob("USR-*.img")}
    state = tmp_path / "state"
    cfg = AgentConfig(strategy=Strategy.ETCD_LOCK, channel_url=scene.mirror.url,
                      channel_name="stable", state_dir=state, metrics_file=None, esp=esp)
    client = ChannelClient(scene.mirror.url, "stable", state / "channel",
                           scene.md / "1.root.json", timeout=TIMEOUT)
    client.refresh()  # the host polled the honest mirror before it turned
    now = [1_800_000_000.0]
    a = Agent(cfg, host, fake_lock, HostChannel(client), layout=Layout(esp, devices),
              clock=lambda: now[0], rand=lambda: 0.5)
    a.startup()
    attack(scene)

    caplog.set_level(logging.INFO)
    caplog.clear()
    started = time.monotonic()
    delay = a.step()
    took = time.monotonic() - started
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    msg = errors[0].getMessage()
    assert "\n" not in msg and errors[0].exc_info is None and "Traceback" not in caplog.text
    assert re.search(step, msg) and re.search(line, msg), msg
    assert took < BOUND, f"{name}: {took:.1f} s"

    s = StateStore(state).load()
    assert s.phase is Phase.ERROR and s.failures == 1 and s.last_error == msg
    assert delay > 0 and s.next_check == pytest.approx(now[0] + delay)
    assert {p.name: _digest(p) for p in tmp_path.glob("USR-*.img")} == before  # no slot written
    assert sorted(p.name for p in (esp / "loader/entries").iterdir()) == [factory.filename]
    downloads = state / "downloads"
    assert not downloads.exists() or not any(downloads.rglob("*"))
    assert not fake_lock.holders and host.reboots == 0

    # back-off: the next step waits, and asks the mirror nothing
    seen = len(scene.mirror.seen)
    now[0] += 1
    assert a.step() == pytest.approx(delay - 1)
    assert len(scene.mirror.seen) == seen
    print(f"{name} ({took:.1f} s): {msg}")  # the table of attacks, with -s


def test_agent_stages_through_the_honest_mirror(scene: Scene, bundles: dict[str, Path], host,  # noqa: ANN001
                                                fake_lock, tmp_path: Path) -> None:  # noqa: ANN001
    """The same rig without an attack gets to writing the slot (so the attacks above are
    what stopped it): the offer, the download and its verification succeed."""
    m1 = load_bundle(bundles["1.0.0"])
    host.roothash = m1.roothash
    esp = tmp_path / "efi"
    (esp / "loader/entries").mkdir(parents=True)
    state = tmp_path / "state"
    cfg = AgentConfig(strategy=Strategy.ETCD_LOCK, channel_url=scene.mirror.url,
                      channel_name="stable", state_dir=state, metrics_file=None, esp=esp)
    client = ChannelClient(scene.mirror.url, "stable", state / "channel",
                           scene.md / "1.root.json", timeout=TIMEOUT)
    written = []

    def write_slot(bundle: Path, manifest: object, target: Slot, **kw: object) -> None:
        written.append((load_bundle(bundle, verify=True).version, target))

    devices = {s: SlotDevices(tmp_path / "usr", tmp_path / "verity") for s in Slot}
    a = Agent(cfg, host, fake_lock, HostChannel(client), layout=Layout(esp, devices), write_slot=write_slot)
    a.startup()
    a.step()
    assert written == [("2.0.0", Slot.B)]
    assert StateStore(state).load().phase is Phase.STAGED
