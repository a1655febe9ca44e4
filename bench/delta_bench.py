#!/usr/bin/env python3
"""Delta update figures (issue 12, item 5), from real image builds:

- bytes a host fetches, as a fraction of the full release, seeded with the reference
  release (what its active slot and ESP hold), for (a) a rebuild with only the version
  changed, (b) the reference image plus one package (jq), (c) one package removed
  (etcd-client), (d) a changed kernel command line;
- publish time of the reference release into an empty store, and of (a) after it;
- chunking speed of a 200 MB device (a loop device when one can be set up, else a file),
  read cold (dropped from the page cache) and warm;
- delta apply time (seeded download, assembly, usr.verity rebuilt, slot write) against a
  full download plus the same write, of release (a), over loopback HTTP in one run.

    flock /tmp/tidehost-vm.lock .venv/bin/python bench/delta_bench.py [--out DIR]

Builds use the root-tree cache (~/.cache/tidehost); a new package set bootstraps its own
tree (about a minute). Prints one line per figure.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from channels import delta
from channels.bundle import load_bundle
from channels.casync.chunker import DEFAULT_PARAMS
from channels.casync.seed import index_seed
from channels.client import ChannelClient
from channels.create import create
from channels.releases import ChannelRepository
from channels.repository import open_repository
from channels.serve import ChannelServer
from imagebuild.core.chunker import fast_cutter
from imagebuild.core.run import run
from imagebuild.image.config import parse_image_file
from imagebuild.image.pipeline import build
from updater.verity import write_through

MB = 1_000_000


def builds(out: Path) -> dict[str, Path]:
    base = parse_image_file(None).with_overrides(version="1.0.0", formats="raw")
    cmdline = (*base.kernel_cmdline, "quiet")
    variants = {
        "reference": base,
        "(a) version only": base.with_overrides(version="1.0.1"),
        "(b) + jq": base.with_overrides(version="1.0.1", packages=[*base.packages, "jq"]),
        "(c) - etcd-client": base.with_overrides(
            version="1.0.1", packages=[p for p in base.packages if p != "etcd-client"]),
        "(d) kernel cmdline": base.with_overrides(version="1.0.1", kernel_cmdline=list(cmdline)),
    }
    bundles = {}
    for name, cfg in variants.items():
        t = time.monotonic()
        result = build(cfg, out / name.split()[0].strip("()"))
        bundles[name] = result.artifacts["release"]
        print(f"built {name:<20} in {time.monotonic() - t:6.1f} s", flush=True)
    return bundles


def publish(repo: Path, bundle: Path) -> tuple[float, str]:
    cutter = fast_cutter()
    t = time.monotonic()
    with open_repository(repo) as tuf:
        _, stats = ChannelRepository(tuf).publish(bundle, "alpha", cutter=cutter)
    assert stats.chunks is not None
    return time.monotonic() - t, stats.chunks.summary()


def case(tmp: Path, base: Path, new: Path) -> tuple[delta.DeltaReport, float, float]:
    """Publish base and new in a fresh repository; fetch new seeded with base, then in full;
    each followed by writing usr.img into a slot file. Returns the report and both times."""
    repo = tmp / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    create(repo, None)
    publish(repo, base)
    publish(repo, new)
    server = ChannelServer(repo / "published", "127.0.0.1", 0)
    server.start()
    slot = tmp / "slot"
    try:
        root = repo / "published/metadata/1.root.json"
        # what a host on base holds: its /usr slot and its boot files (kernel and initrd, or UKIs)
        seeds = [delta.SeedSource(base / f) for f in load_bundle(base, verify=False).files]
        client = ChannelClient(server.url, "alpha", tmp / "state-delta", root)
        t = time.monotonic()
        path, report = delta.download(client, client.offer("m", "1.0.0"), tmp / "dl-delta",
                                      seeds)
        write_through(path / "usr.img", _slot(slot))
        t_delta = time.monotonic() - t
        full = ChannelClient(server.url, "alpha", tmp / "state-full", root)
        t = time.monotonic()
        path = full.download(full.offer("m", "1.0.0"), tmp / "dl-full")
        write_through(path / "usr.img", _slot(slot))
        t_full = time.monotonic() - t
    finally:
        server.stop()
        for d in ("dl-delta", "dl-full", "state-delta", "state-full"):
            shutil.rmtree(tmp / d, ignore_errors=True)
    return report, t_delta, t_full


def _slot(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(768 << 20)
    return path


def chunking_speed(tmp: Path, usr_img: Path) -> None:
    dev = tmp / "device.img"
    with open(dev, "wb") as f:  # the release's usr.img, then random bytes up to 200 MB
        f.write(usr_img.read_bytes()[: 200 * MB])
        while f.tell() < 200 * MB:
            f.write(os.urandom(min(8 << 20, 200 * MB - f.tell())))
    fast_cutter()
    target, loop = dev, None
    try:
        loop = run(["losetup", "-f", "--show", "-r", dev], capture=True).stdout.decode().strip()
        target = Path(loop)
    except Exception as e:  # noqa: BLE001 - no loop devices here: a file it is
        print(f"(no loop device: {e}; chunking a file)")
    try:
        for label in ("cold", "warm"):
            if label == "cold":
                fd = os.open(target, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            t = time.monotonic()
            seed = index_seed(target, DEFAULT_PARAMS, size=200 * MB)
            s = time.monotonic() - t
            print(f"chunking a 200 MB {'loop device' if loop else 'file'} ({label}): "
                  f"{s:5.2f} s, {200 / s:6.0f} MB/s, {len(seed.chunks)} distinct chunks")
    finally:
        if loop:
            run(["losetup", "-d", loop], check=False)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, help="keep the builds here (default: a temporary dir)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tidehost-delta-bench-") as tmpdir:
        tmp = Path(tmpdir)
        bundles = builds(args.out or tmp / "out")
        ref = bundles.pop("reference")
        m = load_bundle(ref, verify=False)
        full = sum(f.size for f in m.files.values())
        print(f"full release: {full / MB:.1f} MB (" + ", ".join(
            f"{n} {f.size / MB:.1f}" for n, f in m.files.items()) + ")")
        repo = tmp / "pubrepo"
        create(repo, None)
        for name, bundle in (("reference", ref), ("(a) after it", bundles["(a) version only"])):
            s, summary = publish(repo, bundle)
            print(f"publish {name}: {s:5.1f} s; {summary}")
        for name, bundle in bundles.items():
            report, t_delta, t_full = case(tmp, ref, bundle)
            per = ", ".join(f"{f.name} {f.method} {f.fetched_bytes / MB:.2f}"
                            for f in report.files)
            pct = 100 * report.fetched_bytes / report.full_bytes
            print(f"{name:<20} fetched {report.fetched_bytes / MB:7.2f} MB of "
                  f"{report.full_bytes / MB:6.1f} MB = {pct:5.2f}%  [{per}]")
            if name.startswith("(a)"):
                print(f"(a) apply: delta download + slot write {t_delta:5.1f} s, "
                      f"full download + slot write {t_full:5.1f} s (loopback HTTP)")
        chunking_speed(tmp, ref / "usr.img")
    return 0


if __name__ == "__main__":
    sys.exit(main())
