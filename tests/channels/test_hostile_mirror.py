"""A hostile mirror in front of a real published repository: every client path survives.

Each attack is run twice, through ``tidehost channel check --download`` (the CLI: exit 4,
one ``tidehost: error:`` line, no traceback) and through ``ChannelClient`` (one
``ChannelError`` of one line), by a host that has polled the honest repository before. Both
must fail within a bounded time (``--timeout 5``) and leave no byte in the download
directory. The mirror is ``tests/hostile_mirror.py``; the repository is signed for real.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hostile_mirror import (
    Drip,
    DripHeaders,
    Endless,
    HostileMirror,
    Lie,
    Serve,
    Stall,
    Tamper,
    Truncate,
)
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from channels.client import ChannelClient
from channels.errors import (
    ChannelError,
    DownloadSizeError,
    ExpiredMetadataError,
    MetadataVerificationError,
    RollbackError,
    SignatureError,
    SlowRetrievalError,
    TargetVerificationError,
    TransportError,
    VerificationError,
)
from imagebuild.cli import main

TIMEOUT = 5.0
BOUND = 20.0  # seconds: any attack must be over by then (the slowest deadline is ~8 s)


@dataclass
class Scene:
    repo: Path
    mirror: HostileMirror
    open_repo: Callable
    earlier: dict[str, bytes]  # the metadata as it was before 1.3.0 was published

    @property
    def md(self) -> Path:
        return self.repo / "published/metadata"

    def version(self, role: str) -> int:
        snap = json.loads((self.md / "timestamp.json").read_bytes())["signed"]["meta"]
        if role == "snapshot":
            return snap["snapshot.json"]["version"]
        sv = snap["snapshot.json"]["version"]
        return json.loads((self.md / f"{sv}.snapshot.json").read_bytes())["signed"]["meta"][
            f"{role}.json"]["version"]

    def target(self, glob: str) -> str:
        (found,) = self.mirror.targets(glob)
        return found

    def current(self, target_path: str) -> str:
        """Where the mirror serves the file the repository now signs as ``target_path``."""
        with self.open_repo() as r:
            tf = r.tuf.channels[target_path.split("/")[0]].signed.targets[target_path]
            return str(r.tuf.target_file(tf).relative_to(self.repo / "published"))

    def advance(self, channel: str) -> None:
        """Re-sign ``channel``'s role: new role metadata, snapshot and timestamp to fetch."""
        with self.open_repo() as r:
            r.tuf.channel(channel)
            r.tuf.commit()


@pytest.fixture
def scene(open_repo, make_bundle, repo: Path, mirror: HostileMirror) -> Scene:  # noqa: ANN001
    """alpha has 1.2.0 and 1.3.0; beta and stable have 1.2.0."""
    with open_repo() as r:
        r.publish(make_bundle("1.2.0", size=50_000), "alpha")
        r.promote("1.2.0", "alpha", "beta")
        r.promote("1.2.0", "beta", "stable")
    earlier = mirror.capture()
    with open_repo() as r:
        r.publish(make_bundle("1.3.0", size=50_000), "alpha")
    return Scene(repo, mirror, open_repo, earlier)


# --- the attacks: (name, channel, set-up, the error, what its line says) ---------------


def tamper_target(s: Scene) -> None:
    s.mirror.attack(s.target("alpha/*.tidehost-1.3.0.usr.img"), Tamper())


def tamper_timestamp(s: Scene) -> None:
    s.mirror.attack("metadata/timestamp.json", Tamper(at=0.9))


def truncate_target(s: Scene) -> None:
    # usr.img, not usr.verity: a seeded download rebuilds usr.verity instead of fetching it
    s.mirror.attack(s.target("alpha/*.tidehost-1.3.0.usr.img"), Truncate(1000))


def endless_timestamp(s: Scene) -> None:
    s.mirror.attack("metadata/timestamp.json", Endless())


def endless_target(s: Scene) -> None:
    s.mirror.attack(s.target("alpha/*.tidehost-1.3.0.initrd"), Endless())


def lie_target(s: Scene) -> None:
    s.mirror.attack(s.target("alpha/*.tidehost-1.3.0.initrd"), Lie())


def drip_timestamp(s: Scene) -> None:  # the case: one byte every 2 s
    s.mirror.attack("metadata/timestamp.json", Drip(interval=2.0))


def drip_snapshot(s: Scene) -> None:
    s.advance("alpha")
    s.mirror.attack(f"metadata/{s.version('snapshot')}.snapshot.json", Drip(interval=0.5, step=8))


def drip_target(s: Scene) -> None:  # 64 bytes every 0.5 s: ~6 minutes for 50 KB
    s.mirror.attack(s.target("alpha/*.tidehost-1.3.0.usr.img"), Drip(interval=0.5, step=64))


def drip_headers(s: Scene) -> None:
    s.mirror.attack("metadata/timestamp.json", DripHeaders(interval=1.0))


def stall_snapshot(s: Scene) -> None:
    s.advance("alpha")
    s.mirror.attack("metadata/*.snapshot.json", Stall(60))


def replay(s: Scene) -> None:  # yesterday's whole metadata, validly signed
    s.mirror.replay(s.earlier)


def freeze(s: Scene) -> None:  # the mirror stopped syncing 3 days ago; the origin goes on
    stale = datetime.now(UTC) - timedelta(days=3)
    with s.open_repo(clock=lambda: stale) as r:
        r.tuf.refresh()
    s.mirror.freeze()
    with s.open_repo() as r:
        r.tuf.refresh()


def mix_snapshot(s: Scene) -> None:  # the previous snapshot under the current one's name
    s.advance("alpha")
    v = s.version("snapshot")
    s.mirror.serve_as(f"metadata/{v}.snapshot.json", f"metadata/{v - 1}.snapshot.json")


def mix_target(s: Scene) -> None:  # 1.2.0's usr.img (validly signed, for 1.2.0) as 1.3.0's
    s.mirror.serve_as(s.target("alpha/*.tidehost-1.3.0.usr.img"),
                      s.target("alpha/*.tidehost-1.2.0.usr.img"))


def mix_index(s: Scene) -> None:  # alpha's (signed) index, padded to stable's signed length
    with s.open_repo() as r:
        r.pause("stable", "1.2.0")  # a new stable index for the host to fetch
    alpha = (s.repo / "published" / s.current("alpha/index.json")).read_bytes()
    stable = s.current("stable/index.json")
    n = (s.repo / "published" / stable).stat().st_size
    s.mirror.serve_as(stable, alpha[:n].ljust(n))


def wrong_key_timestamp(s: Scene) -> None:  # a newer timestamp, signed by the mirror's key
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


def wrong_channel_role(s: Scene) -> None:  # beta's role metadata served as stable's
    s.advance("stable")
    s.mirror.serve_as(f"metadata/{s.version('stable')}.stable.json",
                      f"metadata/{s.version('beta')}.beta.json")


ATTACKS = [
    ("tamper target", "alpha", tamper_target, TargetVerificationError,
     r"target alpha/tidehost-1\.3\.0\.usr\.img from .*: length or sha256 differs from what role "
     r"alpha signed \(tampered\?\); discarded"),
    ("tamper timestamp", "alpha", tamper_timestamp, VerificationError,
     r"channel alpha at http://127\.0\.0\.1:\d+/: timestamp\.json: "),
    ("truncate target", "alpha", truncate_target, DownloadSizeError,
     r"usr\.img .*: response ended after 1000 of \d+ bytes \(truncated\)"),
    ("endless timestamp", "alpha", endless_timestamp, DownloadSizeError,
     r"timestamp\.json: Downloaded \d+ bytes exceeding the maximum allowed length of 16384"),
    ("endless target", "alpha", endless_target, DownloadSizeError,
     r"initrd .*: response is longer than the \d+ bytes signed \(endless data\)"),
    ("lie about length", "alpha", lie_target, DownloadSizeError,
     r"initrd .*: server announces 1099511627776 bytes, more than the \d+ signed"),
    ("drip timestamp", "alpha", drip_timestamp, SlowRetrievalError,
     r"timestamp\.json: \d+ of 16384 bytes in \d+ s, slower than the 16384 B/s minimum "
     r"\(slow retrieval\)"),
    ("drip snapshot", "alpha", drip_snapshot, SlowRetrievalError,
     r"snapshot\.json: .* \(slow retrieval\)"),
    ("drip target", "alpha", drip_target, SlowRetrievalError,
     r"usr\.img .* \(slow retrieval\); gave up at the \d+ s deadline; the next download resumes"),
    ("drip headers", "alpha", drip_headers, SlowRetrievalError,
     r"timestamp\.json: 0 of 16384 bytes .*\(slow retrieval\)"),
    ("stall", "alpha", stall_snapshot, TransportError, r"snapshot\.json: timed out"),
    ("replay", "alpha", replay, RollbackError,
     r"timestamp version \d+ must be >= \d+ .*\(older than what this host already trusts"),
    ("freeze", "alpha", freeze, ExpiredMetadataError,
     r"timestamp\.json is expired .*\(stale repository or freeze attack\)"),
    ("mix-and-match snapshot", "alpha", mix_snapshot, ChannelError, r"snapshot"),
    ("mix-and-match target", "alpha", mix_target, TargetVerificationError,
     r"target alpha/tidehost-1\.3\.0\.usr\.img from .* differs from what role alpha signed"),
    ("mix-and-match index", "stable", mix_index, TargetVerificationError,
     r"target stable/index\.json .* \(tampered\?\)"),
    ("wrong key timestamp", "alpha", wrong_key_timestamp, SignatureError,
     r"timestamp was signed by 0/1 keys \(not signed by the role's trusted key\)"),
    ("wrong key root", "alpha", wrong_key_root, SignatureError, r"root was signed by 0/1 keys"),
    ("wrong channel role", "stable", wrong_channel_role, MetadataVerificationError,
     r"stable"),
]


def prime(s: Scene, state: Path, channel: str) -> None:
    """The host polled the honest repository before the mirror turned."""
    ChannelClient(s.mirror.url, channel, state, s.md / "1.root.json", timeout=TIMEOUT).refresh()


def empty(path: Path) -> bool:
    return not path.exists() or not any(path.rglob("*"))


@pytest.mark.parametrize("name, channel, attack, error, line", ATTACKS,
                         ids=[a[0].replace(" ", "-") for a in ATTACKS])
def test_channel_check_survives(name: str, channel: str, attack: Callable, error: type,  # noqa: ANN001
                                line: str, scene: Scene, tmp_path: Path, capsys) -> None:
    state, dl = tmp_path / "state", tmp_path / "dl"
    prime(scene, state, channel)
    attack(scene)
    capsys.readouterr()
    started = time.monotonic()
    code = main(["channel", "check", scene.mirror.url, "--channel", channel, "--root",
                 str(scene.md / "1.root.json"), "--state", str(state), "--machine-id", "m",
                 "--current", "1.0.0", "--download", str(dl), "--timeout", str(TIMEOUT)])
    took = time.monotonic() - started
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.startswith("tidehost: error: ")]
    assert code == 4, err
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert "Traceback" not in err
    assert re.search(line, errors[0]), errors[0]
    assert took < BOUND, f"{name}: {took:.1f} s"
    assert empty(dl)
    print(f"{name} ({took:.1f} s): {errors[0]}")  # the table of attacks, with -s


@pytest.mark.parametrize("name, channel, attack, error, line", ATTACKS,
                         ids=[a[0].replace(" ", "-") for a in ATTACKS])
def test_channel_client_survives(name: str, channel: str, attack: Callable, error: type,  # noqa: ANN001
                                 line: str, scene: Scene, tmp_path: Path) -> None:
    state, dl = tmp_path / "state", tmp_path / "dl"
    prime(scene, state, channel)
    attack(scene)
    started = time.monotonic()
    client = ChannelClient(scene.mirror.url, channel, state, scene.md / "1.root.json",
                           timeout=TIMEOUT)
    with pytest.raises(error) as e:
        offer = client.offer("m", "1.0.0")
        assert offer is not None
        client.download(offer, dl)
    took = time.monotonic() - started
    assert "\n" not in str(e.value)
    assert re.search(line, str(e.value)), str(e.value)
    assert took < BOUND, f"{name}: {took:.1f} s"
    assert empty(dl)
    bad = hashlib.sha256  # every file left in the cache is a verified one or a resumable part
    for f in client.cache.iterdir():
        if not f.name.endswith(".part"):
            assert f.name.split(".")[0] == bad(f.read_bytes()).hexdigest(), f.name


def test_drip_deadline_scales_with_min_rate(scene: Scene, tmp_path: Path) -> None:
    """A lower --min-rate gives a dripping mirror longer; the default cuts it at ~6 s."""
    prime(scene, tmp_path / "st", "alpha")
    drip_timestamp(scene)
    started = time.monotonic()
    with pytest.raises(SlowRetrievalError, match="at the 6 s deadline"):
        ChannelClient(scene.mirror.url, "alpha", tmp_path / "st", scene.md / "1.root.json",
                      timeout=TIMEOUT).refresh()
    assert 5.5 < time.monotonic() - started < 9
    scene.mirror.clear()
    scene.mirror.attack("metadata/timestamp.json", Drip(interval=0.01, step=512))  # ~50 KB/s
    ChannelClient(scene.mirror.url, "alpha", tmp_path / "st", scene.md / "1.root.json",
                  timeout=TIMEOUT, min_rate=1024).refresh()  # slow but honest: accepted


def test_slow_target_resumes(scene: Scene, tmp_path: Path) -> None:
    """A target cut off at its deadline keeps what arrived; the next download resumes it."""
    client = ChannelClient(scene.mirror.url, "alpha", tmp_path / "st", scene.md / "1.root.json",
                           timeout=1.0, min_rate=100_000)
    offer = client.offer("m", "1.0.0")
    assert offer is not None
    usr = scene.target("alpha/*.tidehost-1.3.0.usr.img")
    scene.mirror.attack(usr, Drip(interval=0.2, step=4096))  # 20 KB/s: past 1.5 s
    with pytest.raises(SlowRetrievalError, match="the next download resumes"):
        client.download(offer, tmp_path / "dl")
    part = next(client.cache.glob("*usr.img.part"))
    assert part.stat().st_size > 0
    scene.mirror.clear()
    scene.mirror.seen.clear()
    client.download(offer, tmp_path / "dl")
    ranges = [r for p, r in scene.mirror.seen if p == usr]
    assert ranges and ranges[0] and ranges[0].startswith("bytes=") and ranges[0] != "bytes=0-"


def test_mirror_serves_honestly_until_attacked(scene: Scene, tmp_path: Path) -> None:
    client = ChannelClient(scene.mirror.url, "alpha", tmp_path / "st", scene.md / "1.root.json")
    offer = client.offer("m", "1.2.0")
    assert offer is not None and offer.version == "1.3.0"
    assert client.download(offer, tmp_path / "dl").is_dir()
    assert Serve  # (re-exported for the agent's tests)
