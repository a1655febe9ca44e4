"""Attacks with the repository's own keys or files, each refused by the client (TUF, no mocks).

What a mirror can do without keys (tamper, truncate, endless data, drip, stall, replay,
freeze, mix and match, a foreign key) is ``test_hostile_mirror.py``; here: a compromised
online key, a leaked channel key, a retired key, indexes that list another channel's files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tuf.api.metadata import MetaFile, TargetFile
from tuf.api.serialization.json import JSONSerializer

from channels.errors import (
    ChannelIndexError,
    DownloadSizeError,
    RollbackError,
    SignatureError,
    TransportError,
    VerificationError,
)
from channels.layout import atomic_write
from channels.serve import ChannelServer


@pytest.fixture
def published(open_repo, make_bundle, repo: Path) -> Path:  # noqa: ANN001
    """alpha has 1.2.0 and 1.3.0; beta and stable have 1.2.0."""
    with open_repo() as r:
        r.publish(make_bundle("1.2.0", size=50_000), "alpha")
        r.promote("1.2.0", "alpha", "beta")
        r.promote("1.2.0", "beta", "stable")
        r.publish(make_bundle("1.3.0", size=50_000), "alpha")
    return repo


def stored(repo: Path, suffix: str) -> Path:
    return next(p for p in (repo / "published/targets").iterdir() if p.name.endswith(suffix))


def nothing_under(path: Path) -> bool:
    return not path.exists() or not any(path.rglob("*"))


def test_truncated_target(published: Path, make_client, tmp_path: Path) -> None:  # noqa: ANN001
    client = make_client("alpha")
    offer = client.offer("m", "1.2.0")
    victim = stored(published, "tidehost-1.3.0.usr.verity")
    victim.write_bytes(victim.read_bytes()[:20_000])
    with pytest.raises(DownloadSizeError, match=r"ended after 20000 of \d+ bytes \(truncated\)"):
        client.download(offer, tmp_path / "dl")
    with pytest.raises(DownloadSizeError, match=r"server has only 20000 .* \(truncated\)"):
        client.download(offer, tmp_path / "dl")  # the resume attempt finds nothing more
    assert nothing_under(tmp_path / "dl")


def test_snapshot_rollback(published: Path, open_repo, make_bundle, make_client) -> None:  # noqa: ANN001
    md = published / "published/metadata"
    with open_repo() as r:
        old_snap = r.tuf.snapshot.signed.version
        r.publish(make_bundle("1.4.0"), "alpha")
    client = make_client("alpha")
    client.refresh()
    with open_repo() as r:  # a fresh timestamp (the online key) naming an old snapshot
        ts = r.tuf.timestamp
        ts.signed.version += 1
        data = (md / f"{old_snap}.snapshot.json").read_bytes()
        ts.signed.snapshot_meta = MetaFile(old_snap, len(data),
                                           {"sha256": hashlib.sha256(data).hexdigest()})
        ts.signatures.clear()
        ts.sign(r.tuf.signer("timestamp"))
        atomic_write(md / "timestamp.json", ts.to_bytes(JSONSerializer()))
    with pytest.raises(RollbackError,
                       match=r"New snapshot version must be >= \d+, got version \d+ .*rollback"):
        client.refresh()


def test_channel_role_signed_by_another_channels_key(published: Path, open_repo,  # noqa: ANN001
                                                     make_client) -> None:
    """A leaked beta key cannot sign for stable, even with valid snapshot and timestamp."""
    with open_repo() as r:
        r.tuf._signers["stable"] = r.tuf.signer("beta")  # the attacker's signature
        r.tuf.channel("stable").targets["stable/evil"] = TargetFile(1, {"sha256": "0" * 64},
                                                                    "stable/evil")
        r.tuf.commit()
    with pytest.raises(SignatureError, match="stable was signed by 0/1 keys"):
        make_client("stable").refresh()


def test_retired_key_is_refused_after_rotation(published: Path, open_repo, make_client,  # noqa: ANN001
                                               repo: Path) -> None:
    client = make_client("alpha")
    client.refresh()
    with open_repo() as r:
        r.tuf.rotate_key("alpha")
    retired = next((repo / "keys/retired").iterdir())
    from channels.keys import load

    with open_repo() as r:
        r.tuf._signers["alpha"] = load(retired, None)
        r.tuf.channel("alpha")
        r.tuf.commit()
    with pytest.raises(SignatureError, match="alpha was signed by 0/1 keys"):
        client.refresh()


def test_alpha_role_cannot_list_stable_releases(published: Path, open_repo, make_client) -> None:  # noqa: ANN001
    """Mix-and-match: the alpha key lists a stable index; stable hosts never trust it."""
    with open_repo() as r:
        alpha_index = r.index("alpha")
        evil = json.loads(alpha_index.to_bytes())
        evil["channel"] = "stable"
        evil["releases"] = [x for x in evil["releases"] if x["version"] == "1.3.0"]
        for rel in evil["releases"]:
            rel["files"] = {k: v.replace("alpha/", "stable/") for k, v in rel["files"].items()}
        data = json.dumps(evil).encode()
        sha = hashlib.sha256(data).hexdigest()
        atomic_write(r.tuf.layout.target(sha, "stable/index.json"), data)
        role = r.tuf.channel("alpha")  # signed with the real alpha key
        role.targets["stable/index.json"] = TargetFile(len(data), {"sha256": sha},
                                                       "stable/index.json")
        for path in alpha_index.get("1.3.0").files.values():  # type: ignore[union-attr]
            tf = role.targets[path]
            spath = path.replace("alpha/", "stable/")
            role.targets[spath] = TargetFile(tf.length, dict(tf.hashes), spath)
        r.tuf.commit()
    client = make_client("stable")
    assert [x.version for x in client.refresh().releases] == ["1.2.0"]  # stable's own index
    assert client.offer("m", "1.2.0") is None
    assert client.offer("m", "1.0.0").version == "1.2.0"  # type: ignore[union-attr]


def _write_raw_index(open_repo, channel: str, mutate) -> None:  # noqa: ANN001
    with open_repo() as r:
        d = json.loads(r.index(channel).to_bytes())
        mutate(d, r)
        data = json.dumps(d).encode()
        sha = hashlib.sha256(data).hexdigest()
        path = f"{channel}/index.json"
        atomic_write(r.tuf.layout.target(sha, path), data)
        r.tuf.channel(channel).targets[path] = TargetFile(len(data), {"sha256": sha}, path)
        r.tuf.commit()


def test_stable_index_pointing_at_alpha_targets(published: Path, open_repo, make_client) -> None:  # noqa: ANN001
    """Mix-and-match inside an index: stable may not hand out alpha's targets."""
    def mutate(d: dict, r) -> None:  # noqa: ANN001
        rel = json.loads(r.index("alpha").to_bytes())["releases"][-1]  # 1.3.0 as alpha lists it
        d["releases"].append(rel)

    _write_raw_index(open_repo, "stable", mutate)
    with pytest.raises(ChannelIndexError, match=r"release 1\.3\.0 file .* is target "
                       r"'alpha/tidehost-1\.3\.0\..*', outside channel stable"):
        make_client("stable").offer("m", "1.2.0")


def test_stable_index_listing_files_its_role_does_not_sign(published: Path, open_repo,  # noqa: ANN001
                                                           make_client) -> None:
    def mutate(d: dict, r) -> None:  # noqa: ANN001
        rel = json.loads(r.index("alpha").to_bytes())["releases"][-1]
        for key in ("files", "indexes"):
            rel[key] = {k: v.replace("alpha/", "stable/") for k, v in rel[key].items()}
        d["releases"].append(rel)

    _write_raw_index(open_repo, "stable", mutate)
    with pytest.raises(ChannelIndexError, match=r"lists stable/tidehost-1\.3\.0\.\S+, which "
                       "role stable does not sign"):
        make_client("stable").offer("m", "1.2.0")


def test_every_client_error_is_one_line_under_two_roots(published: Path, make_client,  # noqa: ANN001
                                                        mirror, served: ChannelServer) -> None:
    from hostile_mirror import Lie

    mirror.attack("metadata/timestamp.json", Lie())
    with pytest.raises((VerificationError, TransportError)) as e:
        make_client("alpha").refresh()
    assert "\n" not in str(e.value)
    served.stop()
    with pytest.raises(TransportError) as e2:
        make_client("alpha", host="x").refresh()
    assert "\n" not in str(e2.value) and "127.0.0.1" in str(e2.value)
