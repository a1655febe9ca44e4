#!/usr/bin/env python3
"""Channel figures: idle-poll bytes on the wire, publish/promote time and bytes for ~200 MB.

Builds a synthetic release bundle of the reference image's size in a temporary directory,
publishes it to alpha, promotes it to beta, serves the repository on 127.0.0.1 and polls it
as a host does. Prints one line per figure.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from channels import verity  # noqa: E402
from channels.bundle import FileInfo, Manifest, sha256_file  # noqa: E402
from channels.client import ChannelClient  # noqa: E402
from channels.create import create  # noqa: E402
from channels.releases import ChannelRepository  # noqa: E402
from channels.repository import open_repository  # noqa: E402
from channels.serve import ChannelServer  # noqa: E402

MB = 1 << 20
SIZES = {"usr.img": 180 * MB, "usr.verity": int(1.5 * MB), "vmlinuz": 8 * MB,
         "initrd": int(10.5 * MB)}


def write_bundle(parent: Path, version: str) -> Path:
    bundle = parent / f"tidehost-{version}.release"
    bundle.mkdir(parents=True)
    files = {}
    for name, size in SIZES.items():
        if name == "usr.verity":  # publish checks the tree: a real one, built from usr.img
            roothash = verity.build(bundle / "usr.img", bundle / name, os.urandom(32))
            files[name] = FileInfo((bundle / name).stat().st_size, sha256_file(bundle / name))
            continue
        h = hashlib.sha256()
        with open(bundle / name, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 8 * MB))
                h.update(block)
                f.write(block)
                left -= len(block)
        files[name] = FileInfo(size, h.hexdigest())
    m = Manifest("tidehost", version, "alpha", f"bench-{version}", "x86-64", "trixie", "erofs",
                 roothash, "", 3, files)
    (bundle / "manifest.json").write_text(m.to_json())
    return bundle


def payload_bytes(targets: Path) -> tuple[int, int]:
    files = [p for p in targets.iterdir() if not p.name.endswith(".index.json")]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="channel-bench-") as tmp:
        work = Path(tmp)
        bundle = write_bundle(work / "out", "1.2.0")
        total = sum(p.stat().st_size for p in bundle.iterdir())
        repo = work / "repo"
        create(repo, None)
        targets = repo / "published/targets"

        t = time.perf_counter()
        with open_repository(repo) as tuf:
            _, stats = ChannelRepository(tuf).publish(bundle, "alpha")
        publish_s = time.perf_counter() - t

        files_before, bytes_before = payload_bytes(targets)
        t = time.perf_counter()
        with open_repository(repo) as tuf:
            _, pstats = ChannelRepository(tuf).promote("1.2.0", "alpha", "beta")
        promote_s = time.perf_counter() - t
        files_after, bytes_after = payload_bytes(targets)

        server = ChannelServer(repo / "published")
        server.start()
        try:
            client = ChannelClient(server.url, "beta", work / "state", repo /
                                   "published/metadata/root.json")
            offer = client.offer("bench-host", "1.1.0")
            assert offer is not None and offer.version == "1.2.0"
            t = time.perf_counter()
            client.download(offer, work / "dl")
            download_s = time.perf_counter() - t
            c = server.counter
            assert client.offer("bench-host", "1.2.0") is None  # warm
            sent, received, reqs = c.sent, c.received, c.requests
            assert client.offer("bench-host", "1.2.0") is None  # the idle poll measured
            idle_down, idle_up, idle_reqs = c.sent - sent, c.received - received, c.requests - reqs
        finally:
            server.stop()
        ts = (repo / "published/metadata/timestamp.json").stat().st_size

    print(f"bundle size:                      {total / MB:.1f} MiB ({total} bytes)")
    print(f"publish to alpha:                 {publish_s:.2f} s "
          f"({stats.bytes_copied} payload bytes copied into the published tree, once)")
    print(f"promote alpha -> beta:            {promote_s * 1000:.0f} ms")
    print(f"bytes copied by promotion:        {pstats.bytes_copied} "
          f"(payload files {files_before} -> {files_after}, "
          f"payload bytes {bytes_before} -> {bytes_after}; only beta's index.json is new)")
    print(f"host download + verify (loopback): {download_s:.2f} s")
    print(f"idle poll on the wire:            {idle_down + idle_up} bytes in {idle_reqs} requests "
          f"({idle_up} up, {idle_down} down; timestamp.json is {ts} bytes)")
    print(f"idle poll goal <= 2048 bytes:     {'met' if idle_down + idle_up <= 2048 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
