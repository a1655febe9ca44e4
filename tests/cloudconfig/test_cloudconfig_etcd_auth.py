"""etcd's authentication in the rendered cluster (issue 11, item 5), on a real 3-member TLS etcd.

Three members on 127.0.0.1-3 start from the rendered flags; the first member's rendered
``tidehost-etcd-auth`` creates a user per node and turns authentication on. Then a worker,
with its own credentials (etcdctl by its certificate's CN, the agent through the JSON gateway
with a CN-less certificate and its password), may do what it must: publish itself, join the
swarm, take and release the reboot lock, write its fleet report; and is refused what it must
not: read the swarm manager token, write another node's keys, delete another node's liveness
key or the lock's keys as a range, use a certificate with a CN on the gateway. root, the
operator, may do all: by the admin certificate, and by the root password once it is set.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from cloudconfig_helpers import EXAMPLE, host_env, materialise, write_cluster

from channels import fleet
from imagebuild.cloudconfig import Provider, generate_certs, parse_cluster_file, render_user_data
from imagebuild.cloudconfig.auth import lock_keys
from imagebuild.core.run import run
from imagebuild.lab import fleet as fleetview
from imagebuild.lab.net import free_port
from updater.errors import LockError
from updater.lock import password_reader
from updater.lock.etcd import ROOT, EtcdLockClient
from updater.lock.gateway import EtcdGateway

pytestmark = pytest.mark.slow

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


def test_lock_keys_are_the_agents() -> None:
    assert fleet.LOCK_GROUPS == f"{ROOT}/groups/"
    gw = EtcdGateway(["http://127.0.0.1:1"])
    c = EtcdLockClient(gw, "web")
    base, semaphore, holder, waiter = lock_keys("web", "node1")
    assert (semaphore, holder) == (c.key, c.holder_key("node1"))
    assert holder.startswith(c.holder_prefix) and c.holder_prefix.startswith(base)
    assert waiter == c.waiter_key("node1")


def _etcdctl(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str]:
    proc = subprocess.run(["etcdctl", "--dial-timeout=3s", "--command-timeout=5s", *args],
                          env=env, capture_output=True, text=True, input=stdin, timeout=30)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_three_members_with_authentication(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["nodes"] = [{"name": "m1", "address": "127.0.0.1", "roles": ["etcd", "manager"]},
                     {"name": "m2", "address": "127.0.0.2", "roles": ["etcd", "worker"]},
                     {"name": "m3", "address": "127.0.0.3", "roles": ["etcd", "worker"]}]
    client_port = free_port()
    certs = tmp_path / "certs"
    data["etcd"] = {"client_port": client_port, "peer_port": free_port(), "cert_dir": str(certs)}
    cluster = parse_cluster_file(write_cluster(tmp_path / "three.yaml", data))
    assert cluster.etcd_auth and cluster.forms_etcd(cluster.node("m1"))
    generate_certs(cluster, certs)
    procs, roots = [], {}
    try:
        for node in cluster.nodes:
            root = tmp_path / node.name
            files = materialise(render_user_data(cluster, node.name, Provider.NOCLOUD), root)
            assert ("/etc/tidehost/bin/tidehost-etcd-auth" in files) == (node.name == "m1")
            dropin = files["/etc/systemd/system/etcd.service.d/10-tidehost.conf"]
            line = [ln for ln in dropin.replace("\\\n", " ").splitlines()
                    if ln.startswith("ExecStart=/")][-1]
            argv = shlex.split(line.removeprefix("ExecStart="))
            if node.address != "127.0.0.1":  # the three share one loopback: only m1 on .1
                argv = [a.replace(f",https://127.0.0.1:{client_port}", "") for a in argv]
            log = (tmp_path / f"{node.name}.log").open("wb")
            procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
            roots[node.name] = root
        env = {n: host_env(r) for n, r in roots.items()}
        deadline = time.monotonic() + 60
        while _etcdctl(env["m3"], "endpoint", "health", "--cluster")[0]:
            for (p, _), n in zip(procs, cluster.nodes, strict=True):
                assert p.poll() is None, (tmp_path / f"{n.name}.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the etcd cluster did not become healthy"
            time.sleep(0.5)

        # the first member turns authentication on (after a run that died half-way: m2's user
        # exists already); a second run finds it on and is done
        assert _etcdctl(env["m1"], "user", "add", "m2", "--interactive=false",
                        stdin=(certs / "m2/etcd.password").read_text())[0] == 0
        auth = [roots["m1"] / "etc/tidehost/bin/tidehost-etcd-auth"]
        out = run(auth, env=env["m1"], capture=True, timeout=120)
        assert b"authentication is on: 3 node users" in out.stderr
        again = run(auth, env=env["m1"], capture=True, timeout=60)
        assert again.stderr.decode().strip() == "tidehost-etcd-auth: authentication is on"
        code, text = _etcdctl(env["m3"], "user", "list")
        assert code and "permission denied" in text
        # an etcd member's health gate (update.yaml) still passes: "permission denied" on the
        # key "health" is an answer from a quorum
        update = yaml.safe_load((roots["m1"] / "etc/tidehost/update.yaml").read_text())
        run(shlex.split(update["health"]["commands"][0]), capture=True, timeout=30)
        assert _etcdctl(env["m3"], "endpoint", "health", "--cluster")[0] == 0  # vm cluster status

        # every node registers itself and the swarm forms, under its own user
        bindir = tmp_path / "fakebin"
        bindir.mkdir()
        (bindir / "docker").write_text(FAKE_DOCKER)
        (bindir / "docker").chmod(0o755)
        extra = {"PATH": f"{bindir}:{os.environ['PATH']}", "DOCKER_LOG": str(tmp_path / "d.log")}
        for name in ("m1", "m2", "m3"):
            bin_ = roots[name] / "etc/tidehost/bin"
            run([bin_ / "tidehost-node-publish"], env=env[name], capture=True, timeout=30)
            run([bin_ / "tidehost-swarm"], env={**env[name], **extra, "DOCKER_NODE": name},
                capture=True, timeout=30)  # fmt: skip
        calls = (tmp_path / "d.log").read_text()
        assert "swarm join --token SWMTKN-worker" in calls and "swarm init" in calls

        # a worker with its etcdctl identity (CN m3): refused what it must not do
        refused = [
            ("get", "/tidehost/swarm/manager-token"),
            ("put", "/tidehost/swarm/manager-token", "SWMTKN-evil"),
            ("put", "/tidehost/nodes/m1", "{}"),
            ("put", "/tidehost/swarm/members/m1", "x"),
            ("del", "--prefix", "tidehost/rebootlock/"),
            ("del", "--prefix", "/tidehost/"),
            ("user", "add", "evil", "--new-user-password=x"),
            ("auth", "disable"),
        ]
        for args in refused:
            code, text = _etcdctl(env["m3"], *args)
            assert code and "permission denied" in text, (args, text)
        assert _etcdctl(env["m3"], "get", "--print-value-only",
                        "/tidehost/swarm/worker-token")[1] == "SWMTKN-worker"
        assert _etcdctl(env["m1"], "get", "--print-value-only",
                        "/tidehost/swarm/manager-token")[1] == "SWMTKN-manager"

        # the agents, through the gateway: CN-less certificate and the node's password
        endpoints = list(cluster.client_endpoints())

        def agent(name: str, **kw: object) -> EtcdGateway:
            d = certs / name
            opts = {"cert": d / "agent.crt", "key": d / "agent.key", "user": name,
                    "password": password_reader(d / "etcd.password"), **kw}
            return EtcdGateway(endpoints, ca=certs / "ca.crt", timeout=5, **opts)  # type: ignore[arg-type]

        m1 = EtcdLockClient(agent("m1"), "default", 60, init_max=2, token="m1-secret")
        m3 = EtcdLockClient(agent("m3"), "default", 60, init_max=2, token="m3-secret")
        m2 = EtcdLockClient(agent("m2"), "default", 60, init_max=2, token="m2-secret")
        assert m1.acquire("m1") and m3.acquire("m3")
        assert not m2.acquire("m2")  # max 2: busy (m2's user, made half-way, works)
        assert m3.status().holders == ("m1", "m3")
        m3.gw.put("tidehost/fleet/hosts/m3", '{"version": "1.0.0"}')
        m3.release("m3")
        assert m3.status().holders == ("m1",)
        for attempt in (lambda: m3.gw.delete(m3.holder_key("m1")),  # another's liveness key
                        lambda: m3.unlock("m1", force=True),  # the operator's unlock
                        lambda: m3.gw.put(m3.holder_key("m1"), "{}"),
                        lambda: m3.gw.put("tidehost/fleet/hosts/m1", "{}"),
                        lambda: EtcdLockClient(m3.gw, "other").status(),  # another group
                        lambda: m3.gw.call("kv/deleterange", {  # the lock's keys, as a range
                            "key": "dGlkZWhvc3Qv", "range_end": "dGlkZWhvc3Qw"}),
                        lambda: m3.gw.get("/tidehost/swarm/manager-token")):
            with pytest.raises(LockError, match="permission denied"):
                attempt()
        assert m1.status().holders == ("m1",)
        # the gateway refuses a certificate with a CN once authentication is on
        with pytest.raises(LockError, match="HTTP 400"):
            agent("m3", cert=certs / "m3/client.crt", key=certs / "m3/client.key").get("x")
        with pytest.raises(LockError, match="m3 could not authenticate"):
            agent("m3", password=lambda: "wrong").get("x")

        # root: the admin certificate (CN root) may do all; it sets the root password, which
        # the operator's gateway clients then use (gateway.crt: no CN)
        admin = {**env["m1"], "ETCDCTL_CERT": str(certs / "admin.crt"),
                 "ETCDCTL_KEY": str(certs / "admin.key")}
        code, text = _etcdctl(admin, "get", "--prefix", "--keys-only", "")
        assert code == 0 and "/tidehost/swarm/manager-token" in text
        root_password = (certs / "root.password").read_text().strip()
        fleetview.grant_operator(cluster, "")  # what the demo and the cluster e2e test do
        operator = EtcdGateway(endpoints, ca=certs / "ca.crt", cert=certs / "gateway.crt",
                               key=certs / "gateway.key", user="root",
                               password=password_reader(certs / "root.password"), timeout=5)
        EtcdLockClient(operator, "default").unlock("m1", force=True)
        assert m3.status().holders == ()
        assert operator.get("/tidehost/swarm/manager-token") is not None
        # the lab's fleet view reads as that operator: every report (m3's above is not a
        # whole one, and is flagged), no lock holder left
        snap = fleetview.snapshot(cluster, "")
        assert snap["hosts"] == [] and len(snap["problems"]) == 1, snap["problems"]
        assert snap["problems"][0].startswith("tidehost/fleet/hosts/m3: not a host report")
        assert snap["groups"]["default"]["lock_holders"] == []
        assert not any(root_password in (r / "etc/tidehost").joinpath(p).read_text()
                       for r in roots.values() for p in _files(r / "etc/tidehost"))
    finally:
        for p, _ in procs:
            p.terminate()
        for p, log in procs:
            p.wait(timeout=15)
            log.close()


def _files(d: Path) -> list[Path]:
    return [p.relative_to(d) for p in d.rglob("*") if p.is_file()]
