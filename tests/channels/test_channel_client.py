"""A host's side over real HTTP: offers, downloads with resume, rollout, pull, key rotation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from channels.bundle import load_bundle
from channels.errors import TransportError
from channels.rollout import host_position, parse_waves
from channels.serve import ChannelServer


def test_publish_offer_download(open_repo, make_bundle, make_client, tmp_path: Path) -> None:  # noqa: ANN001
    bundle = make_bundle("1.2.0")
    with open_repo() as r:
        r.publish(bundle, "alpha")
    client = make_client("alpha")
    offer = client.offer("machine-a", "1.1.0")
    assert offer is not None and offer.version == "1.2.0" and offer.channel == "alpha"
    assert offer.manifest == load_bundle(bundle)
    assert {f.name for f in offer.files} == {"manifest.json", "usr.img", "usr.verity",
                                             "vmlinuz", "initrd"}
    seen: list[tuple[int, int]] = []
    out = client.download(offer, tmp_path / "dl", progress=lambda d, t: seen.append((d, t)))
    assert out == tmp_path / "dl" / "tidehost-1.2.0.release"
    assert load_bundle(out) == offer.manifest  # verify=True: sizes and sha256 of all four
    for f in ("manifest.json", "usr.img", "usr.verity", "vmlinuz", "initrd"):
        assert (out / f).read_bytes() == (bundle / f).read_bytes()
    assert seen[-1] == (offer.size, offer.size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["tidehost-1.2.0.release"]
    assert client.offer("machine-a", "1.2.0") is None
    assert "up to date" in client.last_decision.reason


def test_empty_channel_offers_nothing(make_client) -> None:  # noqa: ANN001
    client = make_client("stable")
    assert client.refresh().releases == ()
    assert client.offer("m", "0.0.1") is None


def test_promote_reaches_beta_and_stable_hosts(open_repo, make_bundle, make_client,  # noqa: ANN001
                                               served: ChannelServer, tmp_path: Path) -> None:
    with open_repo() as r:
        r.publish(make_bundle("1.2.0"), "alpha")
    beta = make_client("beta", host="b")
    assert beta.offer("m", "1.0.0") is None
    with open_repo() as r:
        r.promote("1.2.0", "alpha", "beta")
    offer = beta.offer("m", "1.0.0")
    assert offer is not None and offer.version == "1.2.0"
    assert all(f.target.startswith("beta/") for f in offer.files)
    alpha_offer = make_client("alpha", host="a").offer("m", "1.0.0")
    assert alpha_offer is not None
    assert [f.sha256 for f in offer.files] == [f.sha256 for f in alpha_offer.files]
    load_bundle(beta.download(offer, tmp_path / "beta"))
    with open_repo() as r:
        r.promote("1.2.0", "beta", "stable")
    assert make_client("stable", host="s").offer("m", "1.0.0").version == "1.2.0"


def test_staged_rollout_pause_resume_pull(open_repo, make_bundle, make_client) -> None:  # noqa: ANN001
    with open_repo() as r:
        r.publish(make_bundle("1.1.0"), "stable")
        r.publish(make_bundle("1.2.0"), "stable", waves=parse_waves("10%@0h,50%@24h,100%@48h"))
    client = make_client("stable")
    hosts = [f"{i:032x}" for i in range(24)]  # 2 of them < 10%, 9 < 50% for 1.2.0
    now = datetime.now(UTC) + timedelta(minutes=1)

    def offered(at: datetime, current: str = "1.1.0") -> set[str]:
        return {h for h in hosts if (o := client.offer(h, current, at)) and o.version == "1.2.0"}

    first = offered(now)
    assert first == {h for h in hosts if host_position(h, "1.2.0") < 10} and first
    day = offered(now + timedelta(hours=25))
    assert first < day == {h for h in hosts if host_position(h, "1.2.0") < 50} != set(hosts)
    assert offered(now + timedelta(hours=49)) == set(hosts)
    late = next(h for h in hosts if h not in day)
    o = client.offer(late, "1.0.0", now)  # not in 1.2.0's wave: gets 1.1.0, fully open
    assert o is not None and o.version == "1.1.0" and "next wave 50%@24h" in o.reason

    with open_repo() as r:
        r.pause("stable", "1.2.0")
    assert offered(now + timedelta(hours=49)) == set()
    assert "paused" in client.last_decision.reason
    with open_repo() as r:
        r.resume("stable", "1.2.0")
    assert offered(now) == first

    with open_repo() as r:
        r.pull("stable", "1.2.0")
    assert offered(now + timedelta(hours=49)) == set()  # hosts that have not applied it stop
    assert client.offer(hosts[0], "1.2.0") is None  # hosts that did stay where they are
    assert client.offer(hosts[0], "1.0.0").version == "1.1.0"  # type: ignore[union-attr]


def test_barrier_over_http(open_repo, make_bundle, make_client) -> None:  # noqa: ANN001
    with open_repo() as r:
        r.publish(make_bundle("2.0.0"), "alpha")
        r.publish(make_bundle("3.0.0"), "alpha", min_version="2.0.0")
    client = make_client("alpha")
    o = client.offer("m", "1.5.0")
    assert o is not None and o.version == "2.0.0" and o.barrier
    o = client.offer("m", "2.0.0")
    assert o is not None and o.version == "3.0.0" and o.min_version == "2.0.0"


def test_download_resumes_with_range(open_repo, make_bundle, make_client, mirror,  # noqa: ANN001
                                     served: ChannelServer, tmp_path: Path) -> None:
    from hostile_mirror import Drop

    with open_repo() as r:
        r.publish(make_bundle("1.2.0", size=300_000), "alpha")
    client = make_client("alpha")
    offer = client.offer("m", "1.0.0")
    usr = next(f for f in offer.files if f.name == "usr.img")
    mirror.attack("targets/*usr.img", Drop(100_000))
    with pytest.raises(TransportError, match="usr.img"):
        client.download(offer, tmp_path / "dl")
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").iterdir())
    served.seen.clear()  # type: ignore[attr-defined]
    out = client.download(offer, tmp_path / "dl")
    load_bundle(out)
    ranges = [rng for name, rng in served.seen if name.endswith("usr.img")]  # type: ignore[attr-defined]
    assert len(ranges) == 1 and ranges[0].startswith("bytes=") and ranges[0].endswith("-")
    assert 0 < int(ranges[0][6:-1]) <= 100_000  # resumed from what reached the disk
    # the files fetched whole before the cut are not fetched again
    assert not [n for n, _ in served.seen if n.endswith("manifest.json")]  # type: ignore[attr-defined]
    assert int(ranges[0][6:-1]) < usr.length


def test_idle_poll_is_small(open_repo, make_bundle, make_client, served: ChannelServer) -> None:  # noqa: ANN001
    with open_repo() as r:
        r.publish(make_bundle("1.2.0"), "alpha")
    client = make_client("alpha")
    assert client.offer("m", "1.2.0") is None  # warm: metadata and index cached
    c = served.counter
    sent, received, requests = c.sent, c.received, c.requests
    assert client.offer("m", "1.2.0") is None
    wire = (c.sent - sent) + (c.received - received)
    assert c.requests - requests == 2  # the next root (404) and timestamp.json
    assert wire <= 2048, wire
    with open_repo() as r:  # something new: snapshot, alpha role and index are fetched
        r.publish(make_bundle("1.3.0"), "alpha")
    requests = c.requests
    assert client.offer("m", "1.2.0").version == "1.3.0"  # type: ignore[union-attr]
    assert c.requests - requests == 5


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets", "alpha", "root"])
def test_key_rotation_keeps_hosts_updating(role: str, open_repo, make_bundle,  # noqa: ANN001
                                           make_client, repo: Path) -> None:
    with open_repo() as r:
        r.publish(make_bundle("1.2.0"), "alpha")
    client = make_client("alpha")
    assert client.offer("m", "1.0.0").version == "1.2.0"  # type: ignore[union-attr]
    with open_repo() as r:
        old = r.tuf.role_keyids(role)
        new = r.tuf.rotate_key(role)
        assert new not in old and r.tuf.role_keyids(role) == [new]
    assert list((repo / "keys/retired").iterdir())
    with open_repo() as r:
        r.publish(make_bundle("1.3.0"), "alpha")
    assert client.offer("m", "1.0.0").version == "1.3.0"  # type: ignore[union-attr]
    fresh = make_client("alpha", host="new-host")  # bootstraps from the first root
    assert fresh.offer("m", "1.0.0").version == "1.3.0"  # type: ignore[union-attr]
