"""Signing keys at signer URIs: a SoftHSM2 token holds the root (and targets) key, offline.

The token lives in a temporary directory (``SOFTHSM2_CONF``), never in /var/lib/softhsm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from channels.client import ChannelClient
from channels.keys import check_uri
from channels.serve import ChannelServer
from imagebuild.cli import main

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
LABEL = "tidehost-test"
PIN = "4321"


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A SoftHSM2 token with three P-256 key pairs (ids 2, 3, 4); the environment to use it."""
    if not MODULE.exists() or not shutil.which("softhsm2-util") or not shutil.which("pkcs11-tool"):
        pytest.skip("SoftHSM2 (softhsm2, opensc) is not installed")
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base}/tokens/\n")
    env = {"SOFTHSM2_CONF": str(conf), "PYKCS11LIB": str(MODULE)}
    run_env = {**os.environ, **env}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--so-pin",
                    "0000", "--pin", PIN], check=True, capture_output=True, env=run_env)
    for keyid in ("02", "03", "04"):
        subprocess.run(["pkcs11-tool", "--module", str(MODULE), "--token-label", LABEL,
                        "--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:prime256v1",
                        "--id", keyid, "--label", f"tidehost-{keyid}"],
                       check=True, capture_output=True, env=run_env)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield env


def hsm(keyid: int) -> str:
    return f"hsm:{keyid}?label={LABEL}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what earlier steps logged
    code = main(["channel", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    return err.startswith("tidehost: error: ") and err.count("\n") == 1


def test_root_and_targets_keys_on_an_hsm(softhsm: dict[str, str], tmp_path: Path, make_bundle,  # noqa: ANN001
                                         capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    monkeypatch.setenv("TIDEHOST_HSM_PIN", PIN)
    code, _, err = run(capsys, "init", str(repo), "--signer", f"root={hsm(2)}",
                       "--signer", f"targets={hsm(3)}")
    assert code == 0, err
    assert not (repo / "keys/root.pem").exists() and not (repo / "keys/targets.pem").exists()
    config = json.loads((repo / "tidehost-channels.json").read_text())
    assert config["signers"]["root"] == hsm(2) and config["signers"]["targets"] == hsm(3)
    assert config["signers"]["alpha"] == "pemfile:keys/alpha.pem"
    assert PIN not in (repo / "tidehost-channels.json").read_text()
    root = json.loads((repo / "published/metadata/root.json").read_text())
    root_key = root["signed"]["keys"][root["signed"]["roles"]["root"]["keyids"][0]]
    assert root_key["keytype"] == "ecdsa" and root_key["scheme"] == "ecdsa-sha2-nistp256"

    # the root key is offline (no PIN here): releases are published with the online keys
    monkeypatch.delenv("TIDEHOST_HSM_PIN")
    code, _, err = run(capsys, "publish", str(repo), str(make_bundle("1.2.0")), "--channel", "alpha")
    assert code == 0, err
    assert run(capsys, "refresh", str(repo))[0] == 0
    code, _, err = run(capsys, "refresh", str(repo), "--all")  # re-signing targets needs the HSM
    assert code == 4 and one_line(err) and "needs its PIN: set TIDEHOST_HSM_PIN" in err, err
    monkeypatch.setenv("TIDEHOST_HSM_PIN", "0000")
    code, _, err = run(capsys, "refresh", str(repo), "--all")
    assert code == 4 and one_line(err) and f"signer {hsm(2)}: wrong PIN" in err, err
    monkeypatch.setenv("TIDEHOST_HSM_PIN", PIN)
    code, _, err = run(capsys, "refresh", str(repo), "--all")
    assert code == 0, err
    status = json.loads(run(capsys, "status", str(repo), "--json")[1])
    assert status["roles"]["root"]["signer"] == hsm(2)

    server = ChannelServer(repo)
    server.start()
    try:
        c = ChannelClient(server.url, "alpha", tmp_path / "st",
                          repo / "published/metadata/1.root.json")
        offer = c.offer("m", "1.0.0")
        assert offer is not None and offer.version == "1.2.0"
        c.download(offer, tmp_path / "dl")
    finally:
        server.stop()


def test_rotate_root_onto_an_hsm(softhsm: dict[str, str], repo: Path, open_repo, make_bundle,  # noqa: ANN001
                                 make_client, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_repo() as r:
        r.publish(make_bundle("1.2.0"), "alpha")
    client = make_client("alpha")
    client.refresh()  # trusts root v1 (a file key)
    monkeypatch.setenv("TIDEHOST_HSM_PIN", PIN)
    code, out, err = run(capsys, "rotate-key", str(repo), "--role", "root", "--key-uri", hsm(4))
    assert code == 0, err
    assert not (repo / "keys/root.pem").exists()  # the file key is retired, not left behind
    assert len(list((repo / "keys/retired").glob("root-*.pem"))) == 1
    assert json.loads((repo / "tidehost-channels.json").read_text())["signers"]["root"] == hsm(4)
    monkeypatch.delenv("TIDEHOST_HSM_PIN")
    with open_repo() as r:
        r.publish(make_bundle("1.3.0"), "alpha")
    assert client.offer("m", "1.2.0").version == "1.3.0"  # type: ignore[union-attr]
    assert json.loads((repo / "published/metadata/2.root.json").read_text())["signed"]["version"] == 2
    code, _, err = run(capsys, "rotate-key", str(repo), "--role", "stable", "--key-uri", hsm(4))
    assert code == 4 and one_line(err) and "needs its PIN" in err, err


@pytest.mark.parametrize("uri", [
    "awskms:arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "gcpkms:projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
    "azurekms:tidehost.vault.azure.net/keys/root/0123456789abcdef",
])
def test_kms_uris_are_taken_through_the_same_mechanism(uri: str, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    scheme = uri.split(":")[0]
    assert check_uri(uri)[0] == scheme
    code, _, err = run(capsys, "init", str(tmp_path / "r"), "--signer", f"root={uri}")
    assert code == 4 and one_line(err), err  # no KMS client library (or cloud) here
    assert f"signer {uri}:" in err
    assert not (tmp_path / "r").exists()  # nothing half-written


@pytest.mark.parametrize("item, why", [
    ("root=file:/tmp/k.pem", "use one of pemfile:, hsm:, awskms:, gcpkms:, azurekms:"),
    ("root=hsm:two", "the HSM key id must be a number"),
    ("root=hsm:2?pin=1234", "only ?label=TOKEN is understood"),
    ("root=awskms:", "names no key"),
    ("mirror=hsm:2", "ROLE one of root"),
    ("root", "give ROLE=URI"),
])
def test_bad_signer_uris(item: str, why: str, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    code, _, err = run(capsys, "init", str(tmp_path / "r"), "--signer", item)
    assert code in (2, 4) and one_line(err) and why in err, err
    assert not (tmp_path / "r").exists()


def test_file_keys_stay_the_default(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("TIDEHOST_KEY_PASSPHRASE", "s3cret")
    assert run(capsys, "init", str(tmp_path / "r"))[0] == 0
    signers = json.loads((tmp_path / "r/tidehost-channels.json").read_text())["signers"]
    assert signers == {r: f"pemfile:keys/{r}.pem" for r in signers} and len(signers) == 7
    assert b"ENCRYPTED" in (tmp_path / "r/keys/root.pem").read_bytes()
