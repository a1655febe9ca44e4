"""A cluster CA, per-node etcd certificates (ECDSA P-256) and etcd passwords, written
atomically; keys and passwords 0600 in 0700 folders.

Layout of the certificate folder::

    ca.crt ca.key                       # the cluster CA (kept if it exists)
    admin.crt admin.key                 # the operator's etcdctl identity: CN root, etcd's
                                        #   root user by certificate (gRPC); never on a node
    gateway.crt gateway.key             # the operator's JSON-gateway certificate: no CN;
    root.password                       #   with etcd's root password (set it once the
                                        #   cluster formed: cloud-config/README.md); never
                                        #   on a node
    NODE/server.crt NODE/server.key     # etcd client-facing TLS (serverAuth + clientAuth)
    NODE/peer.crt NODE/peer.key         # etcd peer TLS (serverAuth + clientAuth)
    NODE/client.crt NODE/client.key     # the node's etcdctl identity (clientAuth): CN NODE,
                                        #   etcd's user NODE by certificate (gRPC)
    NODE/agent.crt NODE/agent.key       # the agent's gateway certificate: no CN (with auth
                                        #   on, etcd's gateway refuses a CN; SPECS 11.3)
    NODE/etcd.password                  # user NODE's password: the agent's gateway token

Server and peer certificates name the node's address, its name (and NAME.DOMAIN when the
cluster or the etcd discovery has a domain), localhost and 127.0.0.1. Nothing that exists is
replaced: a run fills gaps (a new node, a removed file).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imagebuild.cloudconfig.model import Cluster, Node
from imagebuild.core.errors import ConfigError
from imagebuild.core.fields import read_text
from imagebuild.core.files import private_dir, write_atomic

NODE_FILES = ("server", "peer", "client", "agent")
PASSWORD = "etcd.password"  # a node's, in its folder
ROOT_PASSWORD = "root.password"
ROOT_USER = "root"
CA_DAYS = 3650
CERT_DAYS = 825


@dataclass(frozen=True)
class NodeCerts:
    """PEM text of what a node needs: the CA certificate and its own certificates and keys."""

    ca: str
    files: tuple[tuple[str, str], ...]  # (file name, PEM), e.g. ("server.key", "-----BEGIN")
    password: str = ""  # the node's etcd password


def generate_certs(cluster: Cluster, out: Path) -> list[Path]:
    """Create the CA (unless it exists), every missing certificate and password; return what
    was written."""
    private_dir(out)
    written: list[Path] = []
    ca_crt, ca_key = out / "ca.crt", out / "ca.key"
    if ca_crt.exists() != ca_key.exists():
        raise ConfigError(f"{out}: has only one of ca.crt and ca.key; remove it or restore both")
    if ca_crt.exists():
        ca_cert, key = _load_ca(ca_crt, ca_key)
    else:
        ca_cert, key = _new_ca(cluster.name)
        _write(ca_key, _key_pem(key), 0o600)
        _write(ca_crt, ca_cert.public_bytes(serialization.Encoding.PEM).decode(), 0o644)
        written += [ca_key, ca_crt]
    written += _issue_if_missing(out / "admin", ca_cert, key, ROOT_USER, [], client=True)
    written += _issue_if_missing(out / "gateway", ca_cert, key, None,
                                 [x509.DNSName(f"{cluster.name}-operator")], client=True)
    written += _password_if_missing(out / ROOT_PASSWORD)
    for node in cluster.nodes:
        sans = _sans(cluster, node)
        d = private_dir(out / node.name)
        written += _issue_if_missing(d / "server", ca_cert, key, node.name, sans, client=False)
        written += _issue_if_missing(d / "peer", ca_cert, key, node.name, sans, client=False)
        written += _issue_if_missing(d / "client", ca_cert, key, node.name, [], client=True)
        written += _issue_if_missing(d / "agent", ca_cert, key, None, [x509.DNSName(node.name)],
                                     client=True)  # fmt: skip
        written += _password_if_missing(d / PASSWORD)
    return written


def _password_if_missing(path: Path) -> list[Path]:
    if path.exists():
        return []
    _write(path, secrets.token_urlsafe(32) + "\n", 0o600)
    return [path]


def read_password(path: Path) -> str:
    """A password file's one line; ConfigError if it is missing, unreadable or empty."""
    text = read_text(path, "password file").strip()
    if not text or "\n" in text:
        raise ConfigError(f"{path}: expected one line, the password")
    return text


def load_node_certs(cluster: Cluster, node: Node) -> NodeCerts:
    """Read a node's certificates; a missing file is a ConfigError naming it."""
    d = cluster.etcd.cert_dir
    assert d is not None
    paths = [d / "ca.crt"] + [
        d / node.name / f"{n}.{ext}" for n in NODE_FILES for ext in ("crt", "key")
    ]
    for p in [*paths, d / node.name / PASSWORD]:
        if not p.is_file():
            raise ConfigError(
                f"{cluster.source}: etcd.cert_dir: {p} is missing "
                f"(run `tidehost cloud-config certs {cluster.source}`)"
            )
    return NodeCerts(
        ca=read_text(paths[0], "CA certificate"),
        files=tuple((p.name, read_text(p, "certificate")) for p in paths[1:]),
        password=read_password(d / node.name / PASSWORD),
    )


def node_passwords(cluster: Cluster) -> dict[str, str]:
    """Every node's etcd password (the first etcd member creates their users)."""
    d = cluster.etcd.cert_dir
    assert d is not None
    out = {}
    for node in cluster.nodes:
        p = d / node.name / PASSWORD
        if not p.is_file():
            raise ConfigError(f"{cluster.source}: etcd.cert_dir: {p} is missing "
                              f"(run `tidehost cloud-config certs {cluster.source}`)")  # fmt: skip
        out[node.name] = read_password(p)
    return out


def _sans(cluster: Cluster, node: Node) -> list[x509.GeneralName]:
    names = {node.name, cluster.fqdn(node), cluster.etcd_host(node), "localhost"}
    names.discard(node.address)
    out: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(names)]
    for ip in sorted({node.address, "127.0.0.1"}):
        out.append(x509.IPAddress(ipaddress.IPv4Address(ip)))
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_ca(cluster: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} etcd CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tidehost"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


def _load_ca(crt: Path, key: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        pkey = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except ValueError as e:
        raise ConfigError(f"{crt.parent}: cannot read the CA ({e})") from None
    if not isinstance(pkey, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key}: the CA key is not an ECDSA key")
    return cert, pkey


def _issue_if_missing(
    stem: Path,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str | None,
    sans: list[x509.GeneralName],
    *,
    client: bool,
) -> list[Path]:
    """A key and certificate at ``stem``.crt/.key unless both exist; ``common_name`` None:
    a subject without CN (O=Tidehost), the holder named by its SAN."""
    crt, keyfile = stem.with_suffix(".crt"), stem.with_suffix(".key")
    if crt.exists() and keyfile.exists():
        return []
    key = ec.generate_private_key(ec.SECP256R1())
    usages = (
        [ExtendedKeyUsageOID.CLIENT_AUTH]
        if client
        else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name
                        else [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tidehost")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )  # fmt: skip
    # Client certificates name their holder too: strict verifiers require a SAN.
    sans = sans or [x509.DNSName(common_name or "tidehost")]
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    stem.parent.mkdir(parents=True, exist_ok=True)
    _write(keyfile, _key_pem(key), 0o600)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM).decode(), 0o644)
    return [keyfile, crt]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _write(path: Path, text: str, mode: int) -> None:
    write_atomic(path, text, mode)
