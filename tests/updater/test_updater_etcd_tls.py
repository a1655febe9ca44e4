"""The etcd lock over TLS with client certificates (as cloud-config sets etcd up)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from updater.cli import main
from updater.errors import LockError
from updater.lock import password_reader
from updater.lock.etcd import EtcdLockClient
from updater.lock.gateway import EtcdGateway

pytestmark = pytest.mark.slow


def _cert(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
          usage: list[x509.ObjectIdentifier] | None = None,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """``name`` "": a subject without CN (etcd's gateway refuses a CN once auth is on)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)] if name else
                        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tidehost")])
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(issuer[0].subject if issuer else subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=1)))
    if issuer is None:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage(usage or []), critical=False)
    return b.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _write(d: Path, name: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    (d / f"{name}.crt").write_bytes(pair[0].public_bytes(serialization.Encoding.PEM))
    (d / f"{name}.key").write_bytes(pair[1].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca = _cert("tidehost-test-ca", None)
    _write(d, "ca", ca)
    _write(d, "server", _cert("etcd", ca, [ExtendedKeyUsageOID.SERVER_AUTH,
                                           ExtendedKeyUsageOID.CLIENT_AUTH]))
    _write(d, "client", _cert("client", ca, [ExtendedKeyUsageOID.CLIENT_AUTH]))
    _write(d, "agent", _cert("", ca, [ExtendedKeyUsageOID.CLIENT_AUTH]))
    _write(d, "root", _cert("root", ca, [ExtendedKeyUsageOID.CLIENT_AUTH]))
    return d


def _ports() -> tuple[int, int]:
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports[0], ports[1]


def test_lock_over_tls(pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not shutil.which("etcd"):
        pytest.skip("etcd (Debian etcd-server) is not installed")
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    url, peer = f"https://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
    log = open(tmp_path / "etcd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["etcd", "--name", "t", "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"t={peer}", "--client-cert-auth",
         "--trusted-ca-file", str(pki / "ca.crt"), "--cert-file", str(pki / "server.crt"),
         "--key-file", str(pki / "server.key")], stdout=log, stderr=subprocess.STDOUT)
    try:
        gw = EtcdGateway([url], ca=pki / "ca.crt", cert=pki / "client.crt",
                         key=pki / "client.key", timeout=5)
        for _ in range(100):
            try:
                gw.get("probe")
                break
            except LockError:
                __import__("time").sleep(0.1)
        c = EtcdLockClient(gw, "tls")
        assert c.acquire("node1") and c.status().holders == ("node1",)
        with pytest.raises(LockError):  # without a client certificate: refused
            EtcdLockClient(EtcdGateway([url], ca=pki / "ca.crt", timeout=5), "tls").status()
        with pytest.raises((LockError, requests.RequestException)):  # unknown CA
            EtcdLockClient(EtcdGateway([url], timeout=5), "tls").status()
        cfg = tmp_path / "update.yaml"
        cfg.write_text(f"etcd:\n  endpoints: [{url}]\n  cacert: {pki}/ca.crt\n"
                       f"  cert: {pki}/client.crt\n  key: {pki}/client.key\ngroup: tls\n"
                       f"state_dir: {tmp_path}/state\n")
        assert main(["--config", str(cfg), "--defaults", "/nonexistent", "lock", "status",
                     "--json"]) == 0
        assert '"holders": ["node1"]' in capsys.readouterr().out
    finally:
        proc.terminate()
        proc.wait(10)


def _etcdctl(pki: Path, url: str, *args: str, cert: str = "root",
             stdin: str | None = None) -> str:
    proc = subprocess.run(["etcdctl", f"--endpoints={url}", f"--cacert={pki}/ca.crt",
                           f"--cert={pki}/{cert}.crt", f"--key={pki}/{cert}.key", *args],
                          capture_output=True, text=True, input=stdin, timeout=30, check=True)
    return proc.stdout


def test_token_auth_and_renewal(pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """With authentication on (as cloud-config turns it on), the agent's gateway client gets
    a token for its user from its password file, and a new one when the old expired."""
    if not shutil.which("etcd"):
        pytest.skip("etcd (Debian etcd-server) is not installed")
    import logging
    import time

    client, peer_port = _ports()
    url, peer = f"https://127.0.0.1:{client}", f"http://127.0.0.1:{peer_port}"
    log = open(tmp_path / "etcd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["etcd", "--name", "t", "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"t={peer}", "--client-cert-auth", "--auth-token-ttl", "1",
         "--trusted-ca-file", str(pki / "ca.crt"), "--cert-file", str(pki / "server.crt"),
         "--key-file", str(pki / "server.key")], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                _etcdctl(pki, url, "endpoint", "health")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        (tmp_path / "password").write_text("s3cret-node1\n")
        (tmp_path / "password").chmod(0o600)
        for args, stdin in ((["role", "add", "root"], None),
                            (["user", "add", "root", "--interactive=false"], "rootpw\n"),
                            (["user", "grant-role", "root", "root"], None),
                            (["role", "add", "node1"], None),
                            (["role", "grant-permission", "--prefix=true", "node1", "readwrite",
                              "tidehost/rebootlock/groups/tls/"], None),
                            (["user", "add", "node1", "--interactive=false"], "s3cret-node1\n"),
                            (["user", "grant-role", "node1", "node1"], None),
                            (["auth", "enable"], None)):
            _etcdctl(pki, url, *args, stdin=stdin)
        gw = EtcdGateway([url], ca=pki / "ca.crt", cert=pki / "agent.crt", key=pki / "agent.key",
                         user="node1", password=password_reader(tmp_path / "password"), timeout=5)
        c = EtcdLockClient(gw, "tls")
        assert c.acquire("node1") and c.status().holders == ("node1",)
        first = gw._token
        caplog.set_level(logging.INFO, logger="channels.etcd")
        time.sleep(3)  # --auth-token-ttl 1: the token expired
        assert c.status().holders == ("node1",)
        assert gw._token and gw._token != first
        assert any("expired: authenticating again" in r.getMessage() for r in caplog.records)
        with pytest.raises(LockError, match="permission denied"):  # its role, no more
            EtcdLockClient(gw, "other").status()
        with pytest.raises(LockError, match="user nobody could not authenticate: HTTP"):
            EtcdGateway([url], ca=pki / "ca.crt", cert=pki / "agent.crt",
                        key=pki / "agent.key", user="nobody", password=lambda: "x").get("k")
        with pytest.raises(LockError, match="cannot read the password"):
            EtcdGateway([url], ca=pki / "ca.crt", cert=pki / "agent.crt", key=pki / "agent.key",
                        user="node1", password=password_reader(tmp_path / "nope")).get("k")

        # the CLI, configured as cloud-config writes update.yaml
        cfg = tmp_path / "update.yaml"
        cfg.write_text(f"etcd:\n  endpoints: [{url}]\n  cacert: {pki}/ca.crt\n"
                       f"  cert: {pki}/agent.crt\n  key: {pki}/agent.key\n  user: node1\n"
                       f"  password_file: {tmp_path}/password\ngroup: tls\n"
                       f"state_dir: {tmp_path}/state\n")
        assert main(["--config", str(cfg), "--defaults", "/nonexistent", "lock", "status",
                     "--json"]) == 0
        assert '"holders": ["node1"]' in capsys.readouterr().out
        # the operator's fleet view on the same auth-on etcd: as root, with a CN-less cert
        from imagebuild.cli import main as tidehost

        (tmp_path / "root.password").write_text("rootpw\n")
        fleet = ["fleet", "status", "--etcd", url, "--cacert", str(pki / "ca.crt"),
                 "--cert", str(pki / "agent.crt"), "--key", str(pki / "agent.key"), "--json"]
        assert tidehost([*fleet, "--user", "root",
                         "--password-file", str(tmp_path / "root.password")]) == 0
        import json

        assert json.loads(capsys.readouterr().out)["groups"]["tls"]["lock_holders"] == ["node1"]
        assert tidehost([*fleet, "--user", "root"]) == 2
        assert "--user and --password-file go together" in capsys.readouterr().err
        cfg.write_text(cfg.read_text().replace("  password_file", "  x_password_file"))
        assert main(["--config", str(cfg), "--defaults", "/nonexistent", "lock", "status"]) != 0
        assert "etcd.x_password_file" in capsys.readouterr().err
    finally:
        proc.terminate()
        proc.wait(10)


def test_etcd_user_needs_its_password_file(tmp_path: Path) -> None:
    from updater.config import load
    from updater.errors import ConfigError

    cfg = tmp_path / "update.yaml"
    cfg.write_text("etcd: {user: node1}\n")
    with pytest.raises(ConfigError, match=r"update.yaml: field 'etcd.password_file': required "
                                          "with etcd.user$"):
        load(cfg, tmp_path / "none.yaml")
    cfg.write_text("etcd: {user: node1, password_file: /etc/tidehost/etcd/password}\n")
    c = load(cfg, tmp_path / "none.yaml")
    assert (c.etcd_user, str(c.etcd_password_file)) == ("node1", "/etc/tidehost/etcd/password")
