"""TUF's consistent-snapshot target layout: a stock python-tuf client downloads our releases.

Target path ``beta/tidehost-1.2.0.usr.img`` is served at
``targets/beta/<sha256>.tidehost-1.2.0.usr.img`` (the specification's layout), a hard link
to the one stored copy; the flat ``targets/<sha256>.<name>`` of earlier clients stays.
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest
from tuf.ngclient import Updater

from channels.bundle import FILES, MANIFEST
from channels.client import ChannelClient
from channels.serve import ChannelServer
from imagebuild.cli import main


def stock_updater(served: ChannelServer, root: Path, tmp_path: Path) -> Updater:
    """python-tuf's own Updater: its default fetcher and configuration, nothing of ours."""
    md = tmp_path / "stock/metadata"
    md.mkdir(parents=True)
    (tmp_path / "stock/targets").mkdir()
    kwargs = {}
    if "bootstrap" in inspect.signature(Updater.__init__).parameters:  # tuf >= 6
        kwargs["bootstrap"] = root.read_bytes()
    else:  # tuf 5: the trusted root is the metadata directory's root.json
        shutil.copyfile(root, md / "root.json")
    return Updater(str(md), served.url + "metadata/", str(tmp_path / "stock/targets"),
                   served.url + "targets/", **kwargs)


@pytest.fixture
def promoted(open_repo, make_bundle) -> Path:  # noqa: ANN001
    bundle = make_bundle("1.2.0", size=20_000)
    with open_repo() as r:
        r.publish(bundle, "alpha")
        r.promote("1.2.0", "alpha", "beta")
    return bundle


def test_stock_tuf_updater_downloads_a_release(promoted: Path, served: ChannelServer,  # noqa: ANN001
                                               root_json: Path, tmp_path: Path) -> None:
    updater = stock_updater(served, root_json, tmp_path)
    updater.refresh()
    for fname in (MANIFEST, *FILES):
        info = updater.get_targetinfo(f"beta/tidehost-1.2.0.{fname}")
        assert info is not None, fname
        path = updater.download_target(info)
        assert Path(path).read_bytes() == (promoted / fname).read_bytes()
        sha = info.hashes["sha256"]
        assert (f"targets/beta/{sha}.tidehost-1.2.0.{fname}", None) in served.seen
    index = updater.get_targetinfo("beta/index.json")
    assert index is not None and b'"1.2.0"' in Path(updater.download_target(index)).read_bytes()
    assert updater.get_targetinfo("stable/tidehost-1.2.0.usr.img") is None  # not promoted


def test_targets_are_stored_once(promoted: Path, repo: Path) -> None:  # noqa: ANN001
    targets = repo / "published/targets"
    usr = list(targets.rglob("*.tidehost-1.2.0.usr.img"))
    assert sorted(str(p.parent.relative_to(targets)) for p in usr) == [".", "alpha", "beta"]
    assert len({p.stat().st_ino for p in usr}) == 1  # three names, one copy of the bytes
    assert usr[0].stat().st_nlink == 3


def test_a_flat_repository_keeps_working_and_refresh_migrates_it(
        promoted: Path, repo: Path, served: ChannelServer, root_json: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    targets = repo / "published/targets"
    for chan in ("alpha", "beta"):  # what a repository written before this layout holds
        shutil.rmtree(targets / chan)
    with pytest.raises(Exception, match="404"):  # a stock client cannot use it
        u = stock_updater(served, root_json, tmp_path / "a")
        u.refresh()
        u.download_target(u.get_targetinfo("beta/tidehost-1.2.0.usr.img"))
    client = ChannelClient(served.url, "beta", tmp_path / "st", root_json)  # ours falls back
    offer = client.offer("m", "1.0.0")
    assert offer is not None and client.download(offer, tmp_path / "dl").is_dir()

    capsys.readouterr()
    assert main(["channel", "refresh", str(repo)]) == 0  # links the spec layout in place
    usr = list(targets.rglob("*.tidehost-1.2.0.usr.img"))
    assert len(usr) == 3 and len({p.stat().st_ino for p in usr}) == 1
    u = stock_updater(served, root_json, tmp_path / "b")
    u.refresh()
    info = u.get_targetinfo("beta/tidehost-1.2.0.usr.img")
    assert Path(u.download_target(info)).read_bytes() == (promoted / "usr.img").read_bytes()
