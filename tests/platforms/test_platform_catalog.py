"""Box catalogs: pure version logic, the writer in a served tree, the CLI's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagebuild.cli import main
from imagebuild.core.errors import ConfigError
from imagebuild.core.platforms import BoxProvider
from imagebuild.vagrant.catalog import (
    BoxCatalog,
    ProviderEntry,
    add_version,
    empty_catalog,
)
from imagebuild.vagrant.catalog_io import promote_box_catalog, write_box_catalog

SHA_A = "a" * 64
SHA_B = "b" * 64
URL = "http://127.0.0.1:8080/vagrant/boxes/x.box"


def entry(sha: str = SHA_A, provider: BoxProvider = BoxProvider.LIBVIRT) -> ProviderEntry:
    return ProviderEntry(provider, URL, sha)


def test_versions_only_move_forward() -> None:
    cat = add_version(empty_catalog("tidehost", "stable"), "1.1.0", [entry()])
    cat = add_version(cat, "1.2.0", [entry(SHA_B)])
    assert [v.version for v in cat.versions] == ["1.1.0", "1.2.0"]
    with pytest.raises(ConfigError, match="older than 1.2.0.*never goes backwards"):
        add_version(cat, "1.0.5", [entry()])


def test_same_version_is_idempotent_and_gains_providers_but_not_other_bits() -> None:
    cat = add_version(empty_catalog("tidehost", "alpha"), "1.0.0", [entry()])
    assert add_version(cat, "1.0.0", [entry()]) == cat
    both = add_version(cat, "1.0.0", [entry(SHA_B, BoxProvider.VIRTUALBOX)])
    assert {p.name for p in both.versions[0].providers} == set(BoxProvider)
    with pytest.raises(ConfigError, match="already listed with other bits"):
        add_version(cat, "1.0.0", [entry(SHA_B)])


def test_catalog_json_round_trip_has_vagrant_fields() -> None:
    cat = add_version(empty_catalog("tidehost", "beta"), "2.0.0", [entry()])
    doc = json.loads(cat.to_json())
    assert doc["name"] == "tidehost-beta"
    prov = doc["versions"][0]["providers"][0]
    assert prov == {"name": "libvirt", "url": URL, "checksum_type": "sha256",
                    "checksum": SHA_A, "architecture": "amd64"}  # fmt: skip
    assert BoxCatalog.from_json(cat.to_json(), "x") == cat


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "not a Vagrant box catalog"),
        ('{"name": "t", "versions": [{"version": "1.x"}]}', "versions\\[0\\]: '1.x' is not"),
        ('{"name": "t", "versions": [{"version": "1.0.0", "providers": [{"name": "hyperv"}]}]}',
         "not a box provider entry"),
    ],
)  # fmt: skip
def test_bad_catalogs_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        BoxCatalog.from_json(text, "cat.json")
    assert "\n" not in str(e.value)


def _box(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def test_writer_publishes_and_promotes_without_copying(tmp_path: Path) -> None:
    repo = tmp_path / "pub"
    repo.mkdir()
    lv = _box(tmp_path, "lv.box", b"libvirt box")
    base = "http://127.0.0.1:9/"
    dest = write_box_catalog(repo, channel="alpha", version="1.0.0",
                             boxes={BoxProvider.LIBVIRT: lv}, box_url_base=base)  # fmt: skip
    assert dest == repo / "vagrant/alpha.json"
    doc = json.loads(dest.read_text())
    url = doc["versions"][0]["providers"][0]["url"]
    assert url == "http://127.0.0.1:9/vagrant/boxes/tidehost-1.0.0-libvirt.box"
    assert (repo / "vagrant/boxes/tidehost-1.0.0-libvirt.box").read_bytes() == b"libvirt box"
    stable = promote_box_catalog(repo, version="1.0.0", src="alpha", dst="stable")
    assert json.loads(stable.read_text())["versions"] == doc["versions"]
    assert json.loads(stable.read_text())["name"] == "tidehost-stable"
    # Newer on alpha, then promoting the old one to stable again is fine (same bits) ...
    lv2 = _box(tmp_path, "lv2.box", b"libvirt box 2")
    write_box_catalog(repo, channel="alpha", version="1.1.0",
                      boxes={BoxProvider.LIBVIRT: lv2}, box_url_base=base)  # fmt: skip
    promote_box_catalog(repo, version="1.1.0", src="alpha", dst="stable")
    # ... but going back is not.
    promote_box_catalog(repo, version="1.1.0", src="alpha", dst="beta")
    with pytest.raises(ConfigError, match="never goes backwards"):
        promote_box_catalog(repo, version="1.0.0", src="alpha", dst="beta")
    with pytest.raises(ConfigError, match="older than 1.1.0"):
        write_box_catalog(repo, channel="stable", version="1.0.1",
                          boxes={BoxProvider.LIBVIRT: lv}, box_url_base=base)  # fmt: skip
    # a republished box with other bits under the same version is refused
    with pytest.raises(ConfigError, match="other bits"):
        write_box_catalog(repo, channel="alpha", version="1.1.0",
                          boxes={BoxProvider.LIBVIRT: lv}, box_url_base=base)  # fmt: skip


def test_promote_missing_version(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="1.0.0 is not in the alpha box catalog"):
        promote_box_catalog(tmp_path, version="1.0.0", src="alpha", dst="beta")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["catalog", "publish", "{repo}", "--channel", "nightly", "--version", "1.0.0",
          "--box", "libvirt={box}", "--box-url-base", "http://x/"], "'nightly' is not one of"),
        (["catalog", "publish", "{repo}", "--channel", "alpha", "--version", "1.0.0",
          "--box", "hyperv={box}", "--box-url-base", "http://x/"], "--box: 'hyperv="),
        (["catalog", "publish", "{repo}", "--channel", "alpha", "--version", "1.0.0",
          "--box", "libvirt={box}", "--box-url-base", "ftp://x/"], "not an http"),
        (["catalog", "publish", "{repo}", "--channel", "alpha", "--version", "1.0.0",
          "--box", "libvirt=/nonexistent.box", "--box-url-base", "http://x/"], "no such file"),
        (["catalog", "promote", "{repo}", "1.0.0", "--from", "alpha", "--to", "alpha"],
         "both 'alpha'"),
    ],
)  # fmt: skip
def test_catalog_cli_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    box = _box(tmp_path, "b.box", b"x")
    args = [a.format(repo=tmp_path, box=box) for a in argv]
    assert main(["vagrant", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tidehost: error:") and message in err and "\n" not in err


def test_catalog_cli_publish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    box = _box(tmp_path, "b.box", b"x")
    rc = main(["vagrant", "catalog", "publish", str(tmp_path), "--channel", "beta",
               "--version", "3.0.0", "--box", f"virtualbox={box}",
               "--box-url-base", "http://127.0.0.1:1/"])  # fmt: skip
    assert rc == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "vagrant/beta.json")


def test_catalog_cli_publish_from_build_dir(tmp_path: Path) -> None:
    build = tmp_path / "out"
    build.mkdir()
    _box(build, "tidehost-1.2.0-vagrant-libvirt.box", b"lv")
    _box(build, "tidehost-1.2.0-vagrant-virtualbox.box", b"vb")
    _box(build, "tidehost-1.1.0-vagrant-libvirt.box", b"old")
    repo = tmp_path / "repo"
    repo.mkdir()
    rc = main(["vagrant", "catalog", "publish", str(repo), "--channel", "alpha",
               "--version", "1.2.0", "--build-dir", str(build),
               "--box-url-base", "http://127.0.0.1:1/"])  # fmt: skip
    assert rc == 0
    doc = json.loads((repo / "vagrant/alpha.json").read_text())
    assert [p["name"] for p in doc["versions"][0]["providers"]] == ["libvirt", "virtualbox"]
    assert main(["vagrant", "catalog", "publish", str(repo), "--channel", "alpha",
                 "--version", "1.3.0", "--build-dir", str(build),
                 "--box-url-base", "http://127.0.0.1:1/"]) == 2  # fmt: skip


def test_catalog_lands_in_a_channel_repositorys_published_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDEHOST_KEY_PASSPHRASE", "test")
    repo = tmp_path / "repo"
    assert main(["channel", "init", str(repo)]) == 0
    box = _box(tmp_path, "b.box", b"x")
    write_box_catalog(repo, channel="alpha", version="1.0.0",
                      boxes={BoxProvider.LIBVIRT: box}, box_url_base="http://h/")  # fmt: skip
    assert (repo / "published/vagrant/alpha.json").is_file()
    assert (repo / "published/vagrant/boxes/tidehost-1.0.0-libvirt.box").is_file()
    assert not (repo / "vagrant").exists()
