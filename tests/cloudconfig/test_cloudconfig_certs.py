"""Certificates: they chain to the CA with the right names, and real etcd accepts them.

The etcd test renders a one-member cluster on 127.0.0.1, writes the user-data's files under a
temporary root, starts Debian's etcd with the flags of the rendered drop-in and the embedded
certificates, and runs the rendered publish and swarm scripts against it (docker is a stub).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from cloudconfig_helpers import EXAMPLE, SSH_KEY, host_env, materialise, write_cluster
from cryptography import x509
from cryptography.x509 import verification as v
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imagebuild.cloudconfig import Provider, generate_certs, parse_cluster_file, render_user_data
from imagebuild.core.run import run


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_node_certs_verify_against_ca(certs_dir: Path) -> None:
    ca = _load(certs_dir / "ca.crt")
    store = v.Store([ca])
    for name, addr in (("node1", "10.77.0.11"), ("node3", "10.77.0.13")):
        for kind in ("server", "peer"):
            cert = _load(certs_dir / name / f"{kind}.crt")
            for subject in (
                v.DNSName(name),
                v.IPAddress(ipaddress.IPv4Address(addr)),
                v.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
            ):
                chain = (
                    v.PolicyBuilder().store(store).build_server_verifier(subject).verify(cert, [])
                )
                assert chain[-1] == ca
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert set(san.get_values_for_type(x509.DNSName)) >= {name, f"{name}.tidehost.test"}
            assert set(map(str, san.get_values_for_type(x509.IPAddress))) == {addr, "127.0.0.1"}
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        for kind in ("client", "agent"):
            client = _load(certs_dir / name / f"{kind}.crt")
            verified = v.PolicyBuilder().store(store).build_client_verifier().verify(client, [])
            assert verified.chain[-1] == ca
        # etcdctl is the user NAME by its CN; the agent's gateway certificate has no CN
        cn = NameOID.COMMON_NAME
        assert [a.value for a in _load(certs_dir / name / "client.crt").subject] == [name]
        assert not _load(certs_dir / name / "agent.crt").subject.get_attributes_for_oid(cn)
    assert _load(certs_dir / "admin.crt").subject.get_attributes_for_oid(cn)[0].value == "root"
    # every secret 0600, in a folder only its owner enters
    for secret in ("ca.key", "admin.key", "gateway.key", "root.password", "node1/server.key", "node1/peer.key",
                   "node1/client.key", "node1/agent.key", "node1/etcd.password"):
        assert stat.S_IMODE((certs_dir / secret).stat().st_mode) == 0o600, secret
    for folder in (certs_dir, certs_dir / "node1"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    passwords = {(certs_dir / n / "etcd.password").read_text() for n in ("node1", "node2")}
    assert len(passwords) == 2 and all(len(p.strip()) >= 40 for p in passwords)


def test_certs_keep_the_ca_and_fill_gaps(tmp_path: Path) -> None:
    cluster = parse_cluster_file(EXAMPLE)
    first = generate_certs(cluster, tmp_path)
    # CA, admin, gateway, root password, 3 nodes x (server, peer, client, agent, password)
    assert len(first) == 2 + 2 + 2 + 1 + 3 * 9
    ca_before = (tmp_path / "ca.crt").read_bytes()
    password = (tmp_path / "node2" / "etcd.password").read_bytes()
    (tmp_path / "node2" / "peer.crt").unlink()
    (tmp_path / "node3" / "etcd.password").unlink()
    again = generate_certs(cluster, tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in again) == [
        "node2/peer.crt", "node2/peer.key", "node3/etcd.password"]
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    assert (tmp_path / "node2" / "etcd.password").read_bytes() == password


# ---- real etcd ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAKE_DOCKER = r"""#!/bin/sh
echo "$*" >> "$DOCKER_LOG"
case "$*" in
  "info") exit 0 ;;
  "info --format {{.Swarm.LocalNodeState}}") echo inactive ;;
  "info --format {{.Swarm.NodeID}}") echo "id-$DOCKER_NODE" ;;
  "swarm join-token -q manager") echo SWMTKN-manager ;;
  "swarm join-token -q worker") echo SWMTKN-worker ;;
  "swarm init "*|"swarm join "*) exit 0 ;;
  *) echo "fake docker: unexpected: $*" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def solo_cluster(tmp_path: Path) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["nodes"] = [
        {"name": "solo", "address": "127.0.0.1", "roles": ["etcd", "manager"]},
        {"name": "joiner", "address": "127.0.0.2", "roles": ["worker"]},
    ]
    data["etcd"] = {"client_port": _free_port(), "peer_port": _free_port(),
                    "cert_dir": str(tmp_path / "certs")}  # fmt: skip
    data["ssh_authorized_keys"] = [SSH_KEY]
    path = write_cluster(tmp_path / "solo.yaml", data)
    run([".venv/bin/tidehost", "cloud-config", "certs", path], cwd=Path(__file__).parents[2])
    return path


def test_real_etcd_with_rendered_flags_and_certs(tmp_path: Path, solo_cluster: Path) -> None:
    cluster = parse_cluster_file(solo_cluster)
    solo_root, joiner_root = tmp_path / "solo", tmp_path / "joiner"
    files = materialise(render_user_data(cluster, "solo", Provider.NOCLOUD), solo_root)
    materialise(render_user_data(cluster, "joiner", Provider.NOCLOUD), joiner_root)
    dropin = files["/etc/systemd/system/etcd.service.d/10-tidehost.conf"].replace("\\\n", " ")
    exec_line = [ln for ln in dropin.splitlines() if ln.startswith("ExecStart=/")][-1]
    argv = shlex.split(exec_line.removeprefix("ExecStart="))
    assert argv[0] == "/usr/bin/etcd"

    log = (tmp_path / "etcd.log").open("wb")
    etcd = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        env = host_env(solo_root)
        deadline = time.monotonic() + 30
        while run(["etcdctl", "endpoint", "health"], check=False, capture=True, env=env).returncode:
            assert etcd.poll() is None, (tmp_path / "etcd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "etcd did not become healthy"
            time.sleep(0.3)

        # A client with the node's client certificate can put and get.
        run(["etcdctl", "put", "/tidehost/test", "hello"], env=env, capture=True)
        got = run(["etcdctl", "get", "--print-value-only", "/tidehost/test"], env=env, capture=True)
        assert got.stdout.decode().strip() == "hello"
        # Without a client certificate the server refuses.
        bare = {k: val for k, val in env.items() if k not in ("ETCDCTL_CERT", "ETCDCTL_KEY")}
        cmd = ["etcdctl", "--dial-timeout=2s", "--command-timeout=3s", "get", "/tidehost/test"]
        refused = run(cmd, check=False, capture=True, env=bare)
        assert refused.returncode != 0

        # The rendered publish script registers the node.
        run(
            [solo_root / "etc/tidehost/bin/tidehost-node-publish"],
            env=env,
            capture=True,
            timeout=30,
        )
        got = run(["etcdctl", "get", "--print-value-only", "/tidehost/nodes/solo"], env=env,
                  capture=True)  # fmt: skip
        entry = json.loads(got.stdout)
        assert entry["address"] == "127.0.0.1" and entry["roles"] == ["etcd", "manager"]
        assert entry["metadata_address"] == "127.0.0.1"

        # Swarm through etcd: the first manager initialises and writes the tokens, the worker
        # (another node's user-data, a client without an etcd role) reads them and joins.
        bindir = tmp_path / "fakebin"
        bindir.mkdir()
        (bindir / "docker").write_text(FAKE_DOCKER)
        (bindir / "docker").chmod(0o755)
        dlog = tmp_path / "docker.log"
        path = f"{bindir}:{os.environ['PATH']}"
        run(
            [solo_root / "etc/tidehost/bin/tidehost-swarm"],
            capture=True,
            timeout=30,
            env=host_env(solo_root, {"PATH": path, "DOCKER_LOG": str(dlog), "DOCKER_NODE": "solo"}),
        )
        run(
            [joiner_root / "etc/tidehost/bin/tidehost-swarm"],
            capture=True,
            timeout=30,
            env=host_env(joiner_root, {"PATH": path, "DOCKER_LOG": str(dlog), "DOCKER_NODE": "joiner"}),
        )
        calls = dlog.read_text().splitlines()
        assert (
            "swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 "
            "--data-path-addr 127.0.0.1"
        ) in calls
        assert (
            "swarm join --token SWMTKN-worker --advertise-addr 127.0.0.2 --listen-addr "
            "127.0.0.2:2377 --data-path-addr 127.0.0.2 127.0.0.1:2377"
        ) in calls
        got = run(["etcdctl", "get", "--prefix", "/tidehost/swarm/"], env=env, capture=True)
        kv = got.stdout.decode().splitlines()
        pairs = dict(zip(kv[::2], kv[1::2], strict=True))
        assert pairs["/tidehost/swarm/worker-token"] == "SWMTKN-worker"
        assert pairs["/tidehost/swarm/manager-addr"] == "127.0.0.1:2377"
        assert pairs["/tidehost/swarm/members/joiner"] == "id-joiner"
    finally:
        etcd.terminate()
        etcd.wait(timeout=15)
        log.close()


def _etcd_argv(files: dict[str, str]) -> list[str]:
    dropin = files["/etc/systemd/system/etcd.service.d/10-tidehost.conf"].replace("\\\n", " ")
    exec_line = [ln for ln in dropin.splitlines() if ln.startswith("ExecStart=/")][-1]
    return shlex.split(exec_line.removeprefix("ExecStart="))


def test_real_three_member_cluster(tmp_path: Path) -> None:
    """Three members on 127.0.0.1-3 bootstrap from the rendered static member list over TLS."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["nodes"] = [
        {
            "name": f"m{i}",
            "address": f"127.0.0.{i}",
            "roles": ["etcd", "manager" if i == 1 else "worker"],
        }
        for i in (1, 2, 3)
    ]
    client_port = _free_port()
    data["etcd"] = {"client_port": client_port, "peer_port": _free_port(),
                    "cert_dir": str(tmp_path / "certs")}  # fmt: skip
    cluster_path = write_cluster(tmp_path / "three.yaml", data)
    cluster = parse_cluster_file(cluster_path)
    generate_certs(cluster, tmp_path / "certs")
    procs, roots = [], []
    try:
        for node in cluster.nodes:
            root = tmp_path / node.name
            files = materialise(render_user_data(cluster, node.name, Provider.NOCLOUD), root)
            argv = _etcd_argv(files)
            if node.address != "127.0.0.1":
                # On real hosts each member also listens on its own 127.0.0.1; here the three
                # share one loopback, so only m1 may.
                argv = [a.replace(f",https://127.0.0.1:{client_port}", "") for a in argv]
            log = (tmp_path / f"{node.name}.log").open("wb")
            procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
            roots.append(root)
        env = host_env(roots[2])
        deadline = time.monotonic() + 60
        health = ["etcdctl", "endpoint", "health", "--cluster"]
        while run(health, check=False, capture=True, env=env).returncode:
            for (p, _), n in zip(procs, cluster.nodes, strict=True):
                assert p.poll() is None, (tmp_path / f"{n.name}.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the etcd cluster did not become healthy"
            time.sleep(0.5)
        members = run(["etcdctl", "member", "list"], env=env, capture=True).stdout.decode()
        assert sorted(ln.split(", ")[2] for ln in members.splitlines()) == ["m1", "m2", "m3"]
        for root in roots:
            run([root / "etc/tidehost/bin/tidehost-node-publish"], env=host_env(root), capture=True,
                timeout=30)  # fmt: skip
        got = run(["etcdctl", "get", "--prefix", "--keys-only", "/tidehost/nodes/"], env=env,
                  capture=True)  # fmt: skip
        keys = [k for k in got.stdout.decode().splitlines() if k]
        assert keys == ["/tidehost/nodes/m1", "/tidehost/nodes/m2", "/tidehost/nodes/m3"]
    finally:
        for p, _ in procs:
            p.terminate()
        for p, log in procs:
            p.wait(timeout=15)
            log.close()
