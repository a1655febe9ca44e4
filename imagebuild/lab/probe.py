"""Probe a replicated HTTP service across nodes: one line per round, for ``clusterupdate``.

    python -m imagebuild.lab.probe URL [URL ...]      # run inside the cluster's namespace

Every ``--every`` seconds it asks the URLs in turn until one answers and prints
``<unix time> <answer>`` (the first word of the body), or ``<unix time> -`` when none did.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request


def probe(urls: list[str], timeout: float) -> str:
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - http only
                words = r.read(200).decode(errors="replace").split()
            return words[0] if words else "(empty)"
        except OSError:
            continue
    return "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imagebuild.lab.probe", description=__doc__)
    p.add_argument("urls", nargs="+")
    p.add_argument("--every", type=float, default=1.0, help="seconds between rounds")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per URL")
    a = p.parse_args(argv)
    while True:
        t = time.time()
        print(f"{t:.3f} {probe(a.urls, a.timeout)}", flush=True)
        time.sleep(max(0.0, a.every - (time.time() - t)))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
