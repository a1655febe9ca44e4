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
from updater.lock.etcd import EtcdLockClient
from updater.lock.gateway import EtcdGateway

pytestmark = pytest.mark.slow


def _cert(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
          usage: list[x509.ObjectIdentifier] | None = None,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
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
    return d


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
