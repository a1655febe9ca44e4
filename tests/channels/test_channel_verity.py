"""``channels.verity`` against the real ``veritysetup`` (cryptsetup), and publish's tree check."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from channels import verity
from channels.errors import BundleError, VerityError
from imagebuild.cli import main

pytestmark = pytest.mark.skipif(not shutil.which("veritysetup"),
                                reason="veritysetup (cryptsetup-bin) is needed")
SALT = "5a1701d0c0ffee"
UUID = "12345678-1234-4234-8234-123456789abc"


def veritysetup(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["veritysetup", *argv], capture_output=True, text=True)


def formatted(tmp_path: Path, blocks: int, *extra: str) -> tuple[Path, Path, str]:
    data, tree = tmp_path / f"data{blocks}", tmp_path / f"tree{blocks}"
    data.write_bytes(os.urandom(blocks * 4096))
    out = veritysetup("format", str(data), str(tree), *extra)
    assert out.returncode == 0, out.stderr
    return data, tree, re.search(r"Root hash:\s+([0-9a-f]{64})", out.stdout)[1]  # type: ignore[index]


# 1 block: no levels; 2..128: one; 129: two levels; 16385: three (the top level first)
@pytest.mark.parametrize("blocks", [1, 2, 128, 129, 16385])
def test_build_writes_what_veritysetup_format_writes(tmp_path: Path, blocks: int) -> None:
    data, tree, root = formatted(tmp_path, blocks, f"--salt={SALT}", f"--uuid={UUID}")
    mine = tmp_path / "mine"
    assert verity.build(data, mine, bytes.fromhex(SALT), uuid=uuid.UUID(UUID).bytes) == root
    assert mine.read_bytes() == tree.read_bytes()


def test_veritysetup_verify_accepts_a_built_tree_and_verify_accepts_veritysetups(
        tmp_path: Path) -> None:
    data, tree, root = formatted(tmp_path, 300)  # random salt and uuid
    verity.verify(data, tree, root)
    mine = tmp_path / "mine"
    my_root = verity.build(data, mine, os.urandom(32))
    assert veritysetup("verify", str(data), str(mine), my_root).returncode == 0
    assert veritysetup("verify", str(data), str(mine), root).returncode != 0


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 1]))


@pytest.mark.parametrize("where, message", [
    ("data:200", r"data\d+: block 200 \(byte 819200\) does not match its hash tree"),
    ("data:0", r"block 0 \(byte 0\) does not match"),
    ("tree:top", r"hash tree gives root hash [0-9a-f]{12}…, not"),
    ("tree:level0", r"level 0 of the hash tree does not match level 1"),
    ("tree:spare", r"hash tree gives root hash"),
    ("tree:salt", r"hash tree gives root hash"),
    ("root", r"hash tree gives root hash"),
])
def test_one_flipped_byte_anywhere_is_refused(tmp_path: Path, where: str, message: str) -> None:
    data, tree, root = formatted(tmp_path, 300)  # levels: top (1 block) at 4096, level 0 at 8192
    if where.startswith("data:"):
        flip(data, int(where[5:]) * 4096 + 7)
    elif where == "tree:top":
        flip(tree, 4096 + 5)
    elif where == "tree:level0":
        flip(tree, 8192 + 40)
    elif where == "tree:spare":
        flip(tree, 4096 + 3 * 32 + 1)  # 300 blocks: 3 digests in the top block, then zeros
    elif where == "tree:salt":
        flip(tree, 88)
    else:
        root = root[:-1] + ("0" if root[-1] != "0" else "1")
    with pytest.raises(VerityError, match=message):
        verity.verify(data, tree, root)
    assert veritysetup("verify", str(data), str(tree), root).returncode != 0  # the same verdict


def test_spare_area_must_be_zero_even_under_a_matching_root(tmp_path: Path) -> None:
    data, tree, _ = formatted(tmp_path, 300)
    raw = bytearray(tree.read_bytes())
    raw[4096 + 3 * 32 + 1] = 1  # after the top block's 3 digests; then a root to match
    tree.write_bytes(raw)
    salt = verity.HashTree.read(tree).sb.salt
    root = hashlib.sha256(salt + raw[4096:8192]).hexdigest()
    with pytest.raises(VerityError, match="level 1: the spare area of hash block 0 is not zero"):
        verity.verify(data, tree, root)
    assert veritysetup("verify", str(data), str(tree), root).returncode != 0


def test_single_block_data_has_no_levels(tmp_path: Path) -> None:
    data, tree, root = formatted(tmp_path, 1)
    verity.verify(data, tree, root)
    flip(data, 100)
    with pytest.raises(VerityError, match="block 0 .* does not match the root hash"):
        verity.verify(data, tree, root)


def test_data_must_be_exactly_the_blocks_the_tree_covers(tmp_path: Path) -> None:
    data, tree, root = formatted(tmp_path, 10)
    with open(data, "ab") as f:
        f.write(b"x" * 100)
    with pytest.raises(VerityError, match=r"41060 bytes, its hash tree covers 10 blocks"):
        verity.verify(data, tree, root)
    data.write_bytes(data.read_bytes()[:4096 * 9])
    with pytest.raises(VerityError, match=r"36864 bytes, its hash tree covers 10 blocks"):
        verity.verify(data, tree, root)
    with pytest.raises(VerityError, match="not a whole number of 4096-byte blocks"):
        b = verity.TreeBuilder(b"")
        b.update(b"x" * 5000)
        b.finish()


def test_not_a_tree(tmp_path: Path) -> None:
    data, tree, root = formatted(tmp_path, 10)
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(VerityError, match="junk: no dm-verity superblock"):
        verity.verify(data, junk, root)
    tree.write_bytes(tree.read_bytes()[:6000])
    with pytest.raises(VerityError, match=r"6000 bytes, the tree of 10 data blocks needs 8192"):
        verity.verify(data, tree, root)


@pytest.mark.parametrize("chunk", [1000, 4096, 5000, 1 << 20])
def test_blocks_are_checked_as_they_stream_by(tmp_path: Path, chunk: int) -> None:
    data, tree, root = formatted(tmp_path, 400)
    raw = bytearray(data.read_bytes())
    t = verity.HashTree.read(tree)
    check = t.checker(root, "stream")
    for off in range(0, len(raw), chunk):
        check.update(raw[off:off + chunk])
    check.done()
    raw[4096 * 300 + 9] ^= 0xFF
    check = t.checker(root, "stream")
    fed = 0
    with pytest.raises(VerityError, match=r"stream: block 300 \(byte 1228800\)"):
        for off in range(0, len(raw), chunk):
            check.update(raw[off:off + chunk])
            fed = off + chunk
    assert fed < 4096 * 302  # it failed as soon as block 300 was whole, not at the end


def test_builder_streams_like_build(tmp_path: Path) -> None:
    data, tree, root = formatted(tmp_path, 129, f"--salt={SALT}", f"--uuid={UUID}")
    b = verity.TreeBuilder(bytes.fromhex(SALT), uuid=uuid.UUID(UUID).bytes)
    raw = data.read_bytes()
    for off in range(0, len(raw), 3333):
        b.update(raw[off:off + 3333])
    assert b.finish() == (tree.read_bytes(), root)


# --- channel publish refuses a bundle whose tree does not match its data ------------------


def resign(bundle: Path, fname: str) -> None:
    """What a careless publisher's tooling does: fix the manifest's sha256 after a change."""
    m = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / fname).read_bytes()
    m["files"][fname] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_publish_refuses_usr_img_that_does_not_match_its_tree(open_repo, make_bundle,  # noqa: ANN001
                                                               repo: Path) -> None:
    bundle = make_bundle("1.0.0", size=40_000)
    flip(bundle / "usr.img", 4096 * 5 + 17)
    resign(bundle, "usr.img")
    before = sorted(p.relative_to(repo) for p in (repo / "published").rglob("*"))
    with open_repo() as r, pytest.raises(BundleError, match=r"usr.img: block 5 \(byte 20480\) "
                                                            r"does not match its hash tree"):
        r.publish(bundle, "alpha")
    assert sorted(p.relative_to(repo) for p in (repo / "published").rglob("*")) == before


def test_channel_publish_says_it_in_one_line(tmp_path: Path, make_bundle, capsys) -> None:  # noqa: ANN001
    repo = str(tmp_path / "r")
    assert main(["channel", "init", repo]) == 0
    bundle = make_bundle("1.0.0", size=40_000)
    m = json.loads((bundle / "manifest.json").read_text())
    m["roothash"] = hashlib.sha256(b"another tree").hexdigest()  # a signed, wrong root hash
    (bundle / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert main(["channel", "publish", repo, str(bundle), "--channel", "alpha"]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(r"usr.verity: hash tree gives root hash", err), err
