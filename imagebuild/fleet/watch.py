"""``tidehost fleet watch``: pause a release in its channel once the reports cross the line.

Hosts of one group stop taking a version on their own (the halt rule in ``channels.fleet``);
a fleet spread over many clusters needs the channel to stop offering it.  Each round reads a
snapshot, finds the versions ``halt_after`` hosts of a group rolled back, and pauses each in
the channels those hosts follow (``ChannelRepository.pause``, as ``tidehost channel pause``);
a release already paused or pulled, or not in that channel, is left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from channels.bundle import CHANNELS
from channels.errors import ChannelError, EtcdError
from channels.fleet import shown

log = logging.getLogger(__name__)


def to_pause(snap: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(channel, version) → the hosts whose rollbacks halt it. Pure."""
    channel_of = {h["id"]: h["channel"] for h in snap["hosts"]}
    out: dict[tuple[str, str], set[str]] = {}
    for info in snap["groups"].values():
        for version, hosts in info["halted"].items():
            for h in hosts:
                if channel_of.get(h) in CHANNELS:
                    out.setdefault((channel_of[h], version), set()).add(h)
    return {k: sorted(v) for k, v in sorted(out.items())}


def pause(repo: Path, passphrase: bytes | None, wanted: dict[tuple[str, str], list[str]],
          done: set[tuple[str, str]]) -> list[str]:
    """Pause each (channel, version) of ``wanted`` not in ``done``; one line per change."""
    from channels.releases import ChannelRepository
    from channels.repository import open_repository

    todo = {k: v for k, v in wanted.items() if k not in done}
    if not todo:
        return []
    lines = []
    with open_repository(repo, passphrase) as tuf:
        r = ChannelRepository(tuf)
        for (channel, version), hosts in todo.items():
            done.add((channel, version))
            rel = r.index(channel).get(version)
            if rel is None or rel.pulled or rel.rollout.paused:
                state = "not in it" if rel is None else ("pulled" if rel.pulled else "paused")
                log.info("fleet watch: %s %s is %s already", channel, version, state)
                continue
            r.pause(channel, version)
            lines.append(f"paused {channel} {version}: rolled back on {len(hosts)} hosts "
                         f"({', '.join(map(shown, hosts))})")
    return lines


def watch(read: Callable[[], dict[str, Any]], repo: Path, passphrase: bytes | None, *,
          interval: float = 30.0, once: bool = False,
          say: Callable[[str], None] = print) -> int:
    """Round after round (``once``: one); etcd trouble is one line and the next round."""
    done: set[tuple[str, str]] = set()
    while True:
        try:
            for line in pause(repo, passphrase, to_pause(read()), done):
                say(line)
        except EtcdError as e:
            if once:
                raise
            log.error("fleet watch: %s (next round in %.0fs)", e, interval)
        except ChannelError as e:  # the repository refused: say it, try again next round
            if once:
                raise
            log.error("fleet watch: %s", e)
            done.clear()
        if once:
            return 0
        time.sleep(interval)
