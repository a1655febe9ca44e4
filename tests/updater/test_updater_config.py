"""The config files: defaults in /usr, the operator's file in /etc, one-line errors."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from updater.config import AgentConfig, Drain, OnTimeout, Strategy, load
from updater.errors import ConfigError

DIST_DEFAULTS = Path(__file__).parents[2] / "updater/dist/usr/share/tidehost/update.yaml"


def write(tmp_path: Path, text: str, name: str = "update.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_defaults_parse_and_idle_without_channel(tmp_path: Path) -> None:
    cfg = load(tmp_path / "absent.yaml", DIST_DEFAULTS)
    assert cfg.strategy is Strategy.ETCD_LOCK and not cfg.channel_configured
    assert cfg.lease == 900 and cfg.boot_tries is None and cfg.window is None


def test_operator_file_over_defaults(tmp_path: Path) -> None:
    defaults = write(tmp_path, "strategy: reboot\ngroup: all\ncheck: {interval: 2h}\n", "d.yaml")
    etc = write(tmp_path, """
strategy: etcd-lock
channel: {url: "http://10.0.2.2:8080/", name: beta}
check: {jitter: 30s}
etcd:
  endpoints: http://10.0.0.1:2379,http://10.0.0.2:2379
  lease: 15m
window: {days: [Sat, sunday], start: "23:30", length: 3h, tz: Europe/Berlin}
health:
  units: [docker.service]
  commands: ["test -e /run/ok", [/bin/true, --x]]
  deadline: 120
boot_tries: 2
""")
    cfg = load(etc, defaults)
    assert cfg.strategy is Strategy.ETCD_LOCK and cfg.group == "all"
    assert (cfg.interval, cfg.jitter, cfg.lease) == (7200, 30, 900)
    assert cfg.channel_url == "http://10.0.2.2:8080/" and cfg.channel_name == "beta"
    assert cfg.etcd_endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert cfg.window is not None and cfg.window.days == (5, 6)
    assert (cfg.window.start, cfg.window.length, cfg.window.tz) == (time(23, 30), 10800,
                                                                    "Europe/Berlin")
    assert cfg.health_units == ("docker.service",)
    assert cfg.health_commands == (("test", "-e", "/run/ok"), ("/bin/true", "--x"))
    assert (cfg.health_deadline, cfg.boot_tries) == (120, 2)
    assert cfg == AgentConfig(**{**cfg.__dict__})  # frozen, comparable


@pytest.mark.parametrize("text,message", [
    ("strategy: sometimes\n", r"update.yaml: field 'strategy': 'sometimes' is not one of"),
    ("chanel: {url: x}\n", r"update.yaml: field 'chanel': unknown setting"),
    ("channel: {uri: x}\n", r"update.yaml: field 'channel.uri': unknown setting"),
    ("channel: {url: ftp://x}\n", r"field 'channel.url': 'ftp://x' is not an http\(s\) URL"),
    ("etcd: {lease: soon}\n", r"field 'etcd.lease': 'soon' is not a duration"),
    ("boot_tries: 12\n", r"field 'boot_tries': 12 is not a whole number from 1 to 9"),
    ("window: {start: '25:00', length: 1h}\n", r"field 'window.start': '25:00' is not"),
    ("window: {start: '02:00', length: 1h, tz: Mars/Base}\n", r"'window.tz'.*time zone"),
    ("window: {start: '02:00'}\n", r"field 'window': needs both"),
    ("window: {days: [funday], start: '02:00', length: 1h}\n", r"'window.days'.*funday"),
    ("group: 'a b'\n", r"field 'group'"),
    ("strategy: fleetlock\n", r"field 'fleetlock.url': required"),
    ("[1, 2]\n", r"update.yaml: the top level must be a mapping"),
    ("strategy: [\n", r"update.yaml: not valid YAML \(line"),
    ("etcd: 3\n", r"field 'etcd': must be a mapping"),
])
def test_errors_are_one_line_with_file_and_field(tmp_path: Path, text: str,
                                                 message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load(write(tmp_path, text), tmp_path / "none.yaml")
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


@pytest.mark.parametrize("text,message", [
    ("window: {days: [mon-fri, sun], start: '02:00', length: 1h}\n", None),  # mon-fri, sun
    ("window: {days: 'sat,sun', start: '02:00', length: 1h}\n", None),
    ("window: {days: [Mon..Wed, friday], start: '02:00', length: 1h}\n", None),
    ("window: {days: [monkey], start: '02:00', length: 1h}\n",
     r"field 'window.days': 'monkey': 'monkey' is not a day of the week"),
    ("window: {days: [fri-mon], start: '02:00', length: 1h}\n",
     r"field 'window.days': 'fri-mon' runs backwards"),
    ("window: {days: [mon-tue-wed], start: '02:00', length: 1h}\n",
     r"field 'window.days': 'mon-tue-wed' is not a day or a range"),
    ("window: {days: [1], start: '02:00', length: 1h}\n", r"field 'window.days': 1 is not a day"),
    ("window: {start: '02:00', length: 100000000d}\n",
     r"field 'window.length': '100000000d' is longer than 366 days"),
    ("window: {start: '02:00', length: 8d}\n",
     r"field 'window.length': '8d' is not from 1m to 7d"),
    ("window: {start: '02:00', length: 30s}\n", r"field 'window.length': '30s' is not from 1m"),
    ("channel: {name: gamma}\n", r"field 'channel.name': 'gamma' is not one of alpha, beta, st"),
    ("strategy: true\n", r"field 'strategy': True is not one of"),
    ("etcd: {lease: -5}\n", r"field 'etcd.lease': -5 is negative"),
    ("etcd: {lease: 2}\n", r"field 'etcd.lease': 2 is not from 5s to 7d"),
    ("max: 1000000000000000000000000000000\n", r"field 'max': .* is not from 1 to 10000"),
    ("max: true\n", r"field 'max': True is not a whole number"),
    ("check: {interval: 1.5}\n", r"field 'check.interval': 1.5 is not a duration"),
    ("deadline: {write: 10s}\n", r"field 'deadline.write': '10s' is not from 1m to 2d"),
    ("deadline: {nap: 1h}\n", r"field 'deadline.nap': unknown setting"),
    ("node: \"a\\nb\"\n", r"field 'node': 'a\\nb' contains a control character"),
    (f"node: {'x' * 254}\n", r"field 'node': holder id of 254 characters \(at most 253\)"),
    ("health: {units: ['a b.service']}\n", r"field 'health.units': 'a b.service' is not a "),
])
def test_settings_mean_what_they_say(tmp_path: Path, text: str, message: str | None) -> None:
    if message is None:
        cfg = load(write(tmp_path, text), tmp_path / "none.yaml")
        assert cfg.window is not None and cfg.window.days in ((0, 1, 2, 3, 4, 6), (5, 6),
                                                              (0, 1, 2, 4))
        return
    with pytest.raises(ConfigError, match=message) as e:
        load(write(tmp_path, text), tmp_path / "none.yaml")
    assert "\n" not in str(e.value)


def test_strategy_off_unquoted_is_off(tmp_path: Path) -> None:
    for text in ("strategy: off\n", "strategy: 'off'\n"):
        assert load(write(tmp_path, text), DIST_DEFAULTS).strategy is Strategy.OFF


def test_deadlines_from_the_file_and_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "deadline: {download: 3h}\n"), DIST_DEFAULTS)
    assert (cfg.deadlines.download, cfg.deadlines.write, cfg.deadlines.check) == (10800, 3600, 600)


def test_error_in_defaults_names_the_defaults_file(tmp_path: Path) -> None:
    d = write(tmp_path, "boot_tries: 0\n", "defaults.yaml")
    with pytest.raises(ConfigError, match=r"defaults.yaml: field 'boot_tries'"):
        load(tmp_path / "absent.yaml", d)


def test_yaml_sexagesimal_time_is_understood(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "window: {start: 02:30, length: 60}\n"), tmp_path / "x")
    assert cfg.window is not None and cfg.window.start == time(2, 30)


def test_cloud_config_contract(tmp_path: Path) -> None:
    """What cloud-config writes to /etc/tidehost/update.yaml parses (imagebuild renders it)."""
    import yaml

    cc = pytest.importorskip("imagebuild.cloudconfig")
    example = yaml.safe_load(
        (Path(__file__).parents[2] / "cloud-config/examples/cluster.yaml").read_text())
    example["etcd"]["tls"] = False  # no certificates needed for this contract
    example["etcd"].pop("cert_dir", None)
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(example))
    cluster = cc.parse_cluster_file(tmp_path / "cluster.yaml")
    doc = yaml.safe_load(cc.render_user_data(cluster, "node1", cc.Provider.NOCLOUD))
    text = next(f["content"] for f in doc["write_files"]
                if f["path"] == "/etc/tidehost/update.yaml")
    cfg = load(write(tmp_path, text), DIST_DEFAULTS)
    assert cfg.node == "node1" and cfg.strategy is Strategy.ETCD_LOCK
    assert cfg.channel_name == "alpha" and cfg.channel_url.startswith("http://")
    assert cfg.lock_max == 1 and cfg.window is not None and cfg.window.length == 86400
    assert cfg.channel_root == Path("/usr/share/tidehost/channel-root.json")
    assert cfg.halt_after == 2 and cfg.drain.swarm and cfg.drain.timeout == 300
    assert cfg.drain.on_timeout is OnTimeout.REBOOT


def test_halt_after_and_drain_settings(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
halt_after: 0
drain:
  swarm: true
  timeout: 2m
  on_timeout: wait
  pre_reboot: ["kubectl drain --ignore-daemonsets node1"]
  post_health: [[kubectl, uncordon, node1]]
"""), DIST_DEFAULTS)
    assert cfg.halt_after == 0
    assert cfg.drain == Drain(True, 120, OnTimeout.WAIT,
                              (("kubectl", "drain", "--ignore-daemonsets", "node1"),),
                              (("kubectl", "uncordon", "node1"),))
    assert load(write(tmp_path, "{}\n"), DIST_DEFAULTS).drain == Drain()
    for text, field in (("halt_after: -1", "halt_after"), ("halt_after: two", "halt_after"),
                        ("drain: {swarm: yes please}", "drain.swarm"),
                        ("drain: {on_timeout: later}", "drain.on_timeout"),
                        ("drain: {timeout: 0s}", "drain.timeout"),
                        ("drain: {later: 1}", "drain.later")):
        with pytest.raises(ConfigError, match=f"field '{field}'"):
            load(write(tmp_path, text + "\n"), DIST_DEFAULTS)


def test_cloud_config_readme_shape(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
node: node1
channel: {url: "http://10.77.0.1:8080/", name: alpha}
strategy: etcd-lock
etcd:
  endpoints: [https://10.77.0.11:2379]
  cacert: /etc/tidehost/etcd/ca.crt
  cert: /etc/tidehost/etcd/client.crt
  key: /etc/tidehost/etcd/client.key
  discovery_srv: example.com
group: default
max: 2
window: {days: [mon], start: "02:00", length: 1h30m, tz: UTC}
"""), DIST_DEFAULTS)
    assert cfg.etcd_ca == Path("/etc/tidehost/etcd/ca.crt") and cfg.lock_max == 2
    assert cfg.window is not None and cfg.window.length == 5400
    assert load(write(tmp_path, "window: null\n"), DIST_DEFAULTS).window is None
