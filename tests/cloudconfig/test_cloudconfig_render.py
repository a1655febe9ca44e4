"""Rendering: every provider x role passes the real `cloud-init schema`; the content is right."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from cloudconfig_helpers import EXAMPLE, MATRIX_NODES, SSH_KEY, cloud_init_schema, matrix_data

from imagebuild.cloudconfig import Provider, parse_cluster_file, render_user_data
from imagebuild.core.errors import ConfigError
from imagebuild.core.run import run

ROLE_NODES = [n["name"] for n in MATRIX_NODES]


def files_of(doc: dict) -> dict[str, dict]:
    return {f["path"]: f for f in doc["write_files"]}


def etcd_exec_flags(dropin: str) -> list[str]:
    """The flags of the drop-in's (last) ExecStart=, continuation lines joined."""
    text = dropin.replace("\\\n", " ")
    line = [ln for ln in text.splitlines() if ln.startswith("ExecStart=") and ln != "ExecStart="]
    return shlex.split(line[-1].removeprefix("ExecStart="))[1:]


def render_to(
    tmp_path: Path, cluster_path: Path, node: str, provider: Provider
) -> tuple[Path, dict]:
    text = render_user_data(parse_cluster_file(cluster_path), node, provider)
    out = tmp_path / f"{provider.value}-{node}.yaml"
    out.write_text(text)
    assert text.startswith("#cloud-config\n")
    return out, yaml.safe_load(text)


@pytest.mark.parametrize("provider", list(Provider), ids=[p.value for p in Provider])
def test_every_role_passes_cloud_init_schema(
    tmp_path: Path, cluster_file, provider: Provider
) -> None:
    path = cluster_file(matrix_data())
    for node in ROLE_NODES:
        out, doc = render_to(tmp_path, path, node, provider)
        cloud_init_schema(out)
        files = files_of(doc)
        is_etcd = "etcd" in next(n["roles"] for n in MATRIX_NODES if n["name"] == node)
        assert ("/etc/systemd/system/etcd.service.d/10-tidehost.conf" in files) == is_etcd
        assert ("/etc/systemd/system/tidehost-swarm.service" in files) == (node != "e")
        assert doc["hostname"] == node
        assert doc["users"][0]["name"] == "core"
        assert doc["users"][0]["ssh_authorized_keys"] == [SSH_KEY]
        ds = files["/etc/cloud/cloud.cfg.d/95-tidehost-datasource.cfg"]["content"]
        assert yaml.safe_load(ds)["datasource_list"][-1] == "None"


@pytest.mark.parametrize("provider", list(Provider), ids=[p.value for p in Provider])
def test_kubeadm_every_role_passes_schema(tmp_path: Path, cluster_file, provider: Provider) -> None:
    path = cluster_file(matrix_data(scheduler={"kind": "kubeadm"}))
    for node in ROLE_NODES:
        out, doc = render_to(tmp_path, path, node, provider)
        cloud_init_schema(out)
        files = files_of(doc)
        assert "/etc/tidehost/bin/tidehost-swarm" not in files
        if node != "e":
            script = files["/etc/tidehost/bin/tidehost-kubeadm"]["content"]
            assert ("kubeadm init --config" in script) == (node == "em")
        if node == "em":
            docs = list(yaml.safe_load_all(files["/etc/tidehost/kubeadm.yaml"]["content"]))
            etcd = docs[1]["etcd"]["external"]
            assert etcd["endpoints"] == [
                "https://10.77.0.21:2379",
                "https://10.77.0.22:2379",
                "https://10.77.0.25:2379",
            ]
            assert etcd["certFile"] == "/etc/tidehost/etcd/client.crt"


def test_example_node1_content(tmp_path: Path, cluster_file) -> None:
    path = cluster_file(yaml.safe_load(EXAMPLE.read_text()))
    out, doc = render_to(tmp_path, path, "node1", Provider.NOCLOUD)
    cloud_init_schema(out)
    files = files_of(doc)

    flags = etcd_exec_flags(files["/etc/systemd/system/etcd.service.d/10-tidehost.conf"]["content"])
    assert "--name=node1" in flags
    assert (
        "--initial-cluster=node1=https://10.77.0.11:2380,node2=https://10.77.0.12:2380,"
        "node3=https://10.77.0.13:2380" in flags
    )
    assert "--initial-cluster-state=new" in flags
    assert "--listen-peer-urls=https://10.77.0.11:2380" in flags
    assert "--initial-advertise-peer-urls=https://10.77.0.11:2380" in flags
    assert "--advertise-client-urls=https://10.77.0.11:2379" in flags
    assert "--listen-client-urls=https://10.77.0.11:2379,https://127.0.0.1:2379" in flags
    for f in (
        "--client-cert-auth",
        "--peer-client-cert-auth",
        "--cert-file=/etc/tidehost/etcd/server.crt",
        "--peer-key-file=/etc/tidehost/etcd/peer.key",
    ):
        assert f in flags
    assert files["/etc/tidehost/etcd/server.key"]["owner"] == "etcd:etcd"
    assert files["/etc/tidehost/etcd/server.key"]["permissions"] == "0600"
    assert "BEGIN PRIVATE KEY" in files["/etc/tidehost/etcd/peer.key"]["content"]
    assert "BEGIN CERTIFICATE" in files["/etc/tidehost/etcd/ca.crt"]["content"]

    swarm = files["/etc/tidehost/bin/tidehost-swarm"]["content"]
    assert 'docker swarm init --advertise-addr "$ADDR"' in swarm
    assert "ADDR=10.77.0.11" in swarm
    assert 'etcdctl put "${PREFIX}worker-token"' in swarm
    assert "PREFIX=/tidehost/swarm/" in swarm
    assert "docker swarm join " not in swarm

    update = yaml.safe_load(files["/etc/tidehost/update.yaml"]["content"])
    assert update == {
        "node": "node1",
        "channel": {"url": "http://10.77.0.1:8080/", "name": "alpha"},
        "strategy": "etcd-lock",
        "etcd": {
            "endpoints": ["https://10.77.0.11:2379", "https://10.77.0.12:2379",
                          "https://10.77.0.13:2379"],
            "cacert": "/etc/tidehost/etcd/ca.crt",
            "cert": "/etc/tidehost/etcd/agent.crt",  # no CN: the gateway refuses one
            "key": "/etc/tidehost/etcd/agent.key",
            "user": "node1",
            "password_file": "/etc/tidehost/etcd/password",
        },
        "group": "default",
        "max": 1,
        "window": {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                   "start": "00:00", "length": "24h", "tz": "UTC"},
        "check": {"interval": 60, "jitter": 10},
        "health": {"units": ["etcd.service", "docker.service"],
                   "commands": ["etcdctl --endpoints=https://127.0.0.1:2379"
                                " --cacert=/etc/tidehost/etcd/ca.crt"
                                " --cert=/etc/tidehost/etcd/client.crt"
                                " --key=/etc/tidehost/etcd/client.key endpoint health"],
                   "deadline": 900},
        "halt_after": 2,
        "drain": {"swarm": True, "timeout": 300, "on_timeout": "reboot", "pre_reboot": [],
                  "post_health": []},
    }  # fmt: skip
    daemon = json.loads(files["/etc/docker/daemon.json"]["content"])
    assert daemon == {"log-driver": "journald", "insecure-registries": ["10.77.0.1:5000"]}
    assert "10.77.0.13 node3.tidehost.test node3" in files["/etc/hosts"]["content"]
    env = files["/etc/tidehost/etcdctl.env"]["content"]
    assert "ETCDCTL_ENDPOINTS=https://10.77.0.11:2379,https://10.77.0.12:2379," in env

    runcmd = doc["runcmd"]  # one enable (one reload of systemd), then the starts
    assert runcmd[:3] == [
        ["systemctl", "enable", "etcd.service", "docker.service", "tidehost-etcd-auth.service",
         "tidehost-node-publish.service", "tidehost-swarm.service"],
        ["systemctl", "restart", "--no-block", "etcd.service"],
        ["systemctl", "start", "--no-block", "tidehost-etcd-auth.service",
         "tidehost-node-publish.service", "tidehost-swarm.service"]]  # fmt: skip
    assert sum(1 for c in runcmd if "enable" in c or "daemon-reload" in c) == 1, runcmd


def test_joining_nodes_wait_for_tokens(tmp_path: Path, cluster_file) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["nodes"][2]["roles"] = ["etcd", "worker"]
    path = cluster_file(data)
    for node, role in (("node2", "manager"), ("node3", "worker")):
        _, doc = render_to(tmp_path, path, node, Provider.VAGRANT)
        swarm = files_of(doc)["/etc/tidehost/bin/tidehost-swarm"]["content"]
        assert "docker swarm init" not in swarm
        assert f"ROLE={role}" in swarm
        assert 'etcdctl get --print-value-only "${PREFIX}$ROLE-token"' in swarm
        assert 'docker swarm join --token "$token"' in swarm


def test_cloud_providers_ask_metadata(tmp_path: Path, cluster_file) -> None:
    path = cluster_file(yaml.safe_load(EXAMPLE.read_text()))
    expect = {
        Provider.EC2: "latest/meta-data/local-ipv4",
        Provider.GCE: "computeMetadata/v1/instance/network-interfaces/0/ip",
        Provider.DIGITALOCEAN: "metadata/v1/interfaces/private/0/ipv4/address",
    }
    for provider, url in expect.items():
        _, doc = render_to(tmp_path, path, "node2", provider)
        script = files_of(doc)["/etc/tidehost/bin/tidehost-metadata"]["content"]
        assert f"http://169.254.169.254/{url}" in script
    _, doc = render_to(tmp_path, path, "node2", Provider.DIGITALOCEAN)
    ds = files_of(doc)["/etc/cloud/cloud.cfg.d/95-tidehost-datasource.cfg"]["content"]
    assert yaml.safe_load(ds)["datasource_list"] == ["ConfigDrive", "DigitalOcean", "None"]


def test_dns_discovery(tmp_path: Path, cluster_file) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["etcd"] = {"bootstrap": "dns", "discovery_domain": "etcd.tidehost.test"}
    out, doc = render_to(tmp_path, cluster_file(data), "node2", Provider.GCE)
    cloud_init_schema(out)
    files = files_of(doc)
    flags = etcd_exec_flags(files["/etc/systemd/system/etcd.service.d/10-tidehost.conf"]["content"])
    assert "--discovery-srv=etcd.tidehost.test" in flags
    assert "--initial-advertise-peer-urls=https://node2.etcd.tidehost.test:2380" in flags
    assert "--listen-peer-urls=https://10.77.0.12:2380" in flags
    assert not any(f.startswith("--initial-cluster=") for f in flags)
    assert (
        "ETCDCTL_DISCOVERY_SRV=etcd.tidehost.test" in files["/etc/tidehost/etcdctl.env"]["content"]
    )


def test_tls_off_needs_no_certs(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["etcd"] = {"tls": False, "cert_dir": str(tmp_path / "none")}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    out, doc = render_to(tmp_path, p, "node1", Provider.NOCLOUD)
    cloud_init_schema(out)
    files = files_of(doc)
    assert not any(f.startswith("/etc/tidehost/etcd/") for f in files)
    flags = etcd_exec_flags(files["/etc/systemd/system/etcd.service.d/10-tidehost.conf"]["content"])
    assert "--advertise-client-urls=http://10.77.0.11:2379" in flags
    assert "--client-cert-auth" not in flags


def test_etcd_auth_files(tmp_path: Path, cluster_file, certs_dir: Path) -> None:
    """Every node gets its CN-less agent certificate and password (0600); only the first etcd
    member gets tidehost-etcd-auth (0700: every node's password) and runs it; the root
    password reaches no node. ``etcd.auth: false`` renders none of it."""
    path = cluster_file(yaml.safe_load(EXAMPLE.read_text()))
    root_password = (certs_dir / "root.password").read_text().strip()
    for node in ("node1", "node2", "node3"):
        out, doc = render_to(tmp_path, path, node, Provider.NOCLOUD)
        cloud_init_schema(out)
        files = files_of(doc)
        password = (certs_dir / node / "etcd.password").read_text().strip()
        assert files["/etc/tidehost/etcd/password"]["content"].strip() == password
        for secret in ("password", "agent.key", "client.key"):
            assert files[f"/etc/tidehost/etcd/{secret}"]["permissions"] == "0600"
        assert files["/etc/tidehost/etcd/agent.crt"]["content"] == \
            (certs_dir / node / "agent.crt").read_text()
        first = node == "node1"
        assert ("/etc/tidehost/bin/tidehost-etcd-auth" in files) == first
        assert ("tidehost-etcd-auth.service" in doc["runcmd"][0]) == first  # enabled ...
        assert ("tidehost-etcd-auth.service" in doc["runcmd"][2]) == first  # ... and started
        text = out.read_text()
        assert root_password not in text
        if first:
            script = files["/etc/tidehost/bin/tidehost-etcd-auth"]
            assert script["permissions"] == "0700"
            for other in ("node1", "node2", "node3"):
                assert (certs_dir / other / "etcd.password").read_text().strip() in \
                    script["content"]
            assert "grant node-node3 readwrite tidehost/rebootlock/groups/default/holders/node3" \
                in script["content"]
        else:
            assert all((certs_dir / o / "etcd.password").read_text().strip() not in text
                       for o in ("node1", "node2", "node3") if o != node)
    data = yaml.safe_load(EXAMPLE.read_text())
    data["etcd"]["auth"] = False
    _, doc = render_to(tmp_path, cluster_file(data), "node1", Provider.NOCLOUD)
    files = files_of(doc)
    assert not {"/etc/tidehost/etcd/password", "/etc/tidehost/bin/tidehost-etcd-auth"} & set(files)
    etcd = yaml.safe_load(files["/etc/tidehost/update.yaml"]["content"])["etcd"]
    assert etcd["cert"] == "/etc/tidehost/etcd/client.crt" and "user" not in etcd


def test_fleetlock_and_no_window(tmp_path: Path, cluster_file) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["updater"] = {
        "channel": {"url": "http://10.77.0.1:8080/"},
        "strategy": "fleetlock",
        "fleetlock_url": "http://10.77.0.1:9090/",
    }
    _, doc = render_to(tmp_path, cluster_file(data), "node3", Provider.NOCLOUD)
    update = yaml.safe_load(files_of(doc)["/etc/tidehost/update.yaml"]["content"])
    assert update["strategy"] == "fleetlock"
    assert update["fleetlock"] == {"url": "http://10.77.0.1:9090/"}
    assert update["window"] is None
    assert update["channel"] == {"url": "http://10.77.0.1:8080/", "name": "stable"}


def test_health_gate_follows_roles_and_root_is_shipped(tmp_path: Path, cluster_file) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    (tmp_path / "root.json").write_text('{"signed": {"_type": "root"}}')
    data["updater"]["channel"]["root"] = str(tmp_path / "root.json")
    data["updater"]["check"] = {"interval": "30s", "jitter": "0s"}
    data["nodes"].append({"name": "node4", "address": "10.77.0.14", "roles": ["worker"]})
    data["etcd"]["tls"] = False  # (certificates: test_example_node1_content)
    path = cluster_file(data)
    for node, etcd in (("node1", True), ("node4", False)):
        out, doc = render_to(tmp_path, path, node, Provider.NOCLOUD)
        cloud_init_schema(out)
        files = files_of(doc)
        update = yaml.safe_load(files["/etc/tidehost/update.yaml"]["content"])
        assert update["channel"]["root"] == "/etc/tidehost/channel-root.json"
        assert files["/etc/tidehost/channel-root.json"]["content"].strip() == \
            '{"signed": {"_type": "root"}}'
        assert update["check"] == {"interval": 30, "jitter": 0}
        health = update["health"]
        if etcd:  # the member must serve again before the next host may reboot
            assert health["units"] == ["etcd.service", "docker.service"]
            argv = health["commands"][0].split()
            assert argv[0] == "etcdctl" and argv[-2:] == ["endpoint", "health"]
            assert "--endpoints=http://127.0.0.1:2379" in argv
        else:
            assert health == {"units": ["docker.service"], "commands": [], "deadline": 900}


def test_unknown_node(cluster_file) -> None:
    cluster = parse_cluster_file(cluster_file(yaml.safe_load(EXAMPLE.read_text())))
    with pytest.raises(
        ConfigError, match=r"--node: no node 'node9' \(known: node1, node2, node3\)"
    ):
        render_user_data(cluster, "node9", Provider.NOCLOUD)


def test_member_list_must_include_the_node(cluster_file) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["etcd"]["members"] = ["node1", "node2"]
    cluster = parse_cluster_file(cluster_file(data))
    render_user_data(cluster, "node1", Provider.NOCLOUD)
    with pytest.raises(ConfigError, match=r"etcd.members: does not include 'node3'"):
        render_user_data(cluster, "node3", Provider.NOCLOUD)


def test_missing_certificate(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["etcd"]["cert_dir"] = str(tmp_path / "empty")
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"etcd.cert_dir: .*ca.crt is missing \(run `tidehost"):
        render_user_data(parse_cluster_file(p), "node1", Provider.NOCLOUD)


def test_strict_templates(tmp_path: Path, cluster_file) -> None:
    """An undefined variable is an error, and the sandbox refuses Python internals."""
    cluster = parse_cluster_file(cluster_file(yaml.safe_load(EXAMPLE.read_text())))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "user-data.yaml.j2").write_text("#cloud-config\nx: {{ no_such_thing }}\n")
    with pytest.raises(ConfigError, match="'no_such_thing' is undefined"):
        render_user_data(cluster, "node1", Provider.NOCLOUD, template_dir=tmp_path / "t")
    (tmp_path / "t" / "user-data.yaml.j2").write_text(
        "#cloud-config\nx: {{ cluster.__class__.__init__.__globals__ }}\n"
    )
    with pytest.raises(ConfigError, match="unsafe|undefined"):
        render_user_data(cluster, "node1", Provider.NOCLOUD, template_dir=tmp_path / "t")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path: Path, cluster_file) -> None:
    """systemd parses every rendered unit and the etcd drop-in without a complaint."""
    for scheduler in ("swarm", "kubeadm"):
        data = yaml.safe_load(EXAMPLE.read_text())
        data["scheduler"] = {"kind": scheduler}
        _, doc = render_to(tmp_path, cluster_file(data), "node1", Provider.NOCLOUD)
        unitdir = tmp_path / scheduler
        (unitdir / "etcd.service.d").mkdir(parents=True)
        (unitdir / "etcd.service").write_text(ETCD_UNIT)
        units = []
        for path, f in files_of(doc).items():
            if not path.startswith("/etc/systemd/system/"):
                continue
            # Our scripts are not installed here: any existing executable will do.
            text = f["content"].replace("/etc/tidehost/bin/", "/bin/true ")
            dest = unitdir / path.removeprefix("/etc/systemd/system/")
            dest.write_text(text)
            units.append(unitdir / ("etcd.service" if dest.suffix == ".conf" else dest.name))
        assert len(units) == 4  # node1 is the first etcd member: tidehost-etcd-auth too
        proc = run(["systemd-analyze", "verify", *units], check=False, capture=True,
                   env={"SYSTEMD_UNIT_PATH": f"{unitdir}:", "PATH": "/usr/bin:/bin"})  # fmt: skip
        out = (proc.stdout + proc.stderr).decode()
        assert proc.returncode == 0 and "Unknown" not in out and "rror" not in out, out


# Debian's etcd.service (etcd-server), which the drop-in amends.
ETCD_UNIT = """\
[Unit]
Description=etcd - highly-available key value store
After=network.target
Wants=network-online.target

[Service]
Environment=DAEMON_ARGS=
Environment=ETCD_NAME=%H
Environment=ETCD_DATA_DIR=/var/lib/etcd/default
EnvironmentFile=-/etc/default/%p
Type=notify
User=etcd
PermissionsStartOnly=true
ExecStart=/usr/bin/etcd $DAEMON_ARGS
Restart=on-abnormal
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
Alias=etcd2.service
"""


def test_scripts_parse(tmp_path: Path, cluster_file) -> None:
    """Every rendered script is valid sh (dash) or Python, for every role and scheduler."""
    for scheduler in ("swarm", "kubeadm"):
        path = cluster_file(matrix_data(scheduler={"kind": scheduler}))
        for node in ROLE_NODES:
            for provider in (Provider.NOCLOUD, Provider.EC2):
                _, doc = render_to(tmp_path, path, node, provider)
                for p, f in files_of(doc).items():
                    if not p.startswith("/etc/tidehost/bin/"):
                        continue
                    script = tmp_path / "script"
                    script.write_text(f["content"])
                    if f["content"].startswith("#!/usr/bin/python3"):
                        compile(f["content"], p, "exec")
                    else:
                        assert f["content"].startswith("#!/bin/sh\n")
                        run(["sh", "-n", script], capture=True)
