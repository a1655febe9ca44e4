"""``tidehost vagrant init`` asks the channel server for the root the nodes trust and checks
the channel's box catalog (a real repository served by ``channel serve``'s server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from channels.serve import ChannelServer, published_root
from imagebuild.cli import main
from imagebuild.core.errors import ConfigError
from imagebuild.core.platforms import BoxProvider
from imagebuild.lab.net import free_port
from imagebuild.vagrant.catalog import BoxCatalog, ProviderEntry, add_version, catalog_problem
from imagebuild.vagrant.remote import Unreachable, check_catalog, fetch_root

from .conftest import make_repo


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    repo = make_repo(tmp_path / "repo", url)
    server = ChannelServer(published_root(repo), "127.0.0.1", port)
    server.start()
    yield repo, url
    server.stop()


def init(out: Path, url: str, *extra: str, channel: str = "alpha") -> int:
    return main(["vagrant", "init", "--nodes", "1", "--channel-url", url, "--channel", channel,
                 "--driver", "qemu", "-o", str(out), *extra])  # fmt: skip


def test_init_trusts_the_served_root_and_hands_it_to_the_agent(
    served: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, url = served
    out = tmp_path / "demo"
    assert init(out, url) == 0
    assert "trusting " + url + "metadata/root.json" in capsys.readouterr().err
    root = (repo / "published/metadata/root.json").read_bytes()
    assert (out / "channel-root.json").read_bytes() == root
    cluster = yaml.safe_load((out / "cluster.yaml").read_text())
    assert cluster["updater"]["channel"] == {"url": url, "name": "alpha", "root": "channel-root.json"}
    user_data = yaml.safe_load((out / "seeds/node1/user-data").read_text())
    files = {f["path"]: f for f in user_data["write_files"]}
    assert json.loads(files["/etc/tidehost/channel-root.json"]["content"]) == json.loads(root)
    update = yaml.safe_load(files["/etc/tidehost/update.yaml"]["content"])
    assert update["channel"]["root"] == "/etc/tidehost/channel-root.json"
    assert update["channel"]["url"] == url
    text = (out / "Vagrantfile").read_text()
    assert 'require_relative "tidehost"' in text and (out / "tidehost.rb").is_file()
    assert "(`init` found qemu here)" in text


def test_a_catalog_without_the_channel_is_refused_and_nothing_written(
    served: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = served
    out = tmp_path / "demo"
    assert init(out, url, channel="beta") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"tidehost: error: {url}vagrant/beta.json: no box catalog for this channel "
                   "there (HTTP 404): publish the channel's boxes (tidehost vagrant catalog "
                   "publish REPO --channel CHANNEL ...)")  # fmt: skip
    assert not (out / "Vagrantfile").exists()


def test_a_server_that_does_not_answer_is_a_warning_and_pinning_the_root_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    out = tmp_path / "demo"
    assert init(out, url) == 0
    err = capsys.readouterr().err
    assert f"{url}metadata/root.json does not answer" in err and "--channel-root" in err
    assert f"{url}vagrant/alpha.json does not answer" in err and "`vagrant up` needs it" in err
    assert not (out / "channel-root.json").exists()
    assert "root" not in yaml.safe_load((out / "cluster.yaml").read_text())["updater"]["channel"]
    pinned = make_repo(tmp_path / "repo", url) / "published/metadata/root.json"
    assert init(tmp_path / "pinned", url, "--channel-root", str(pinned), "--no-check") == 0
    assert (tmp_path / "pinned/channel-root.json").read_bytes() == pinned.read_bytes()


def test_remote_checks(served: tuple[Path, str], tmp_path: Path) -> None:
    repo, url = served
    assert fetch_root(url) == (repo / "published/metadata/root.json").read_bytes()
    catalog = check_catalog(f"{url}vagrant/alpha.json", "tidehost-alpha", BoxProvider.LIBVIRT)
    assert str(catalog.latest) == "1.0.0"
    with pytest.raises(ConfigError, match="no virtualbox box listed"):
        check_catalog(f"{url}vagrant/alpha.json", "tidehost-alpha", BoxProvider.VIRTUALBOX)
    with pytest.raises(ConfigError, match="the catalog of 'tidehost-alpha', not 'other-alpha'"):
        check_catalog(f"{url}vagrant/alpha.json", "other-alpha", BoxProvider.LIBVIRT)
    with pytest.raises(ConfigError, match="not a TUF root"):
        fetch_root(f"{url}vagrant/alpha.json#")  # a JSON document, not a root
    with pytest.raises(Unreachable):
        fetch_root(f"http://127.0.0.1:{free_port()}/")


def test_catalog_problem_is_pure() -> None:
    entry = ProviderEntry(BoxProvider.LIBVIRT, "http://h/x.box", "0" * 64)
    catalog = add_version(BoxCatalog("tidehost-beta", ""), "1.2.0", [entry])
    assert catalog_problem(catalog, "tidehost-beta", BoxProvider.LIBVIRT) is None
    assert "not 'tidehost-alpha'" in str(catalog_problem(catalog, "tidehost-alpha",
                                                         BoxProvider.LIBVIRT))  # fmt: skip
    assert catalog_problem(BoxCatalog("tidehost-beta", ""), "tidehost-beta",
                           BoxProvider.LIBVIRT) == ("no libvirt box listed "
                                                    "(publish one: --box libvirt=FILE)")  # fmt: skip
