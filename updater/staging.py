"""The agent's staging phase: check the channel, download, verify, write the other slot.

A release whose files match their signed hashes and still fail verification (usr.img
against its own hash tree or root hash, the bundle against its offer: ``BadRelease``) is
removed from ``downloads/`` and its fingerprint (the sha256 of its manifest, which names
every file's sha256 and the root hash) is remembered in the state, so the same bytes are not
downloaded again every interval; a release with other bytes is tried as usual.  Whatever
else fails after the download (a file that does not match its hash, a write error) is
removed as well, and retried: nothing that failed is kept.

The download is the delta path (``channels.delta`` through ``updater.channel.HostChannel``)
seeded with what this host has (``updater.seeds``): the assembled files are the verified
files of the release, and go through the same verify and write steps as a full download.
Its figures (``fetched_bytes``, ``reused_bytes``) are kept in the state for ``status``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from channels.bundle import Manifest, load_bundle
from channels.errors import ChannelError
from updater.decide import Decision, decide
from updater.errors import BadRelease, ChannelUnavailable, UpdaterError
from updater.schedule import next_check
from updater.seeds import host_seeds
from updater.state import Phase, State

if TYPE_CHECKING:
    from channels.bundle import Slot
    from updater.channel import Channel
    from updater.config import AgentConfig
    from updater.host import Host

log = logging.getLogger(__name__)


def fingerprint(manifest: Manifest) -> str:
    """``version@sha256`` of a release's manifest: it names the sha256 of every file and the
    root hash, so equal fingerprints are equal bytes."""
    text = json.dumps(manifest.to_dict(), sort_keys=True, separators=(",", ":"))
    return f"{manifest.version}@{hashlib.sha256(text.encode()).hexdigest()}"


class Staging:
    """``Agent``'s check-and-stage step (a mixin: the attributes are the agent's)."""

    config: AgentConfig
    host: Host
    channel: Channel | None
    clock: Callable[[], float]
    rand: Callable[[], float]
    write_slot: Callable[..., object]

    if TYPE_CHECKING:
        layout: object
        holder_id: str
        version: str
        booted: Slot

        def save(self, s: State) -> State: ...
        def _failed(self, s: State, error: str) -> tuple[State, float]: ...

    def check_and_stage(self, s: State) -> tuple[State, float]:
        """Ask the channel; stage a newer version into the other slot."""
        if self.channel is None:
            raise ChannelUnavailable("no channel configured")
        now = self.clock()
        staged = s.target_version if s.phase is Phase.STAGED else None
        s = self.save(s.to(Phase.CHECKING, now))
        current = self.version
        try:
            offer = self.channel.offer(self.holder_id, current)
            offered = offer.version if offer else None
            decision = decide(current, offered, s.bad_versions, staged)
        except (ChannelError, UpdaterError, OSError, ValueError) as e:
            return self._failed(s, f"check failed: {e}")
        nxt = next_check(now, self.config.interval, self.config.jitter, self.rand)
        s = replace(s, last_check=now, next_check=nxt, failures=0, last_error="")
        if decision is Decision.STAGED:
            return self.save(s.to(Phase.STAGED, now)), 0.0
        if offer is not None and decision.wants_apply() and \
                fingerprint(offer.manifest) in s.bad_releases:
            log.info("check: %s offered, but these bytes (%s…) failed verification here; "
                     "waiting for the channel to offer others", offer.version,
                     fingerprint(offer.manifest).split("@")[1][:12])
            return self.save(s.to(Phase.IDLE, now)), nxt - now
        if offer is None or not decision.wants_apply():
            log.info("check: running %s, channel offers %s: %s", current, offered or "nothing",
                     decision)
            return self.save(s.to(Phase.IDLE, now)), nxt - now
        log.info("check: %s offered (running %s)", offer.version, current)
        bundle: Path | None = None
        try:
            target = self.booted.other
            dest = self.config.state_dir / "downloads"
            s = self.save(s.to(Phase.DOWNLOADING, now, target_version=offer.version))
            seeds = host_seeds(self.layout.devices, self.layout.esp,  # type: ignore[attr-defined]
                               self.booted)
            bundle = self.channel.download(offer, dest, seeds=seeds)
            report = getattr(self.channel, "last_report", None)
            fetched = report.fetched_bytes if report is not None else \
                sum(i.size for i in offer.manifest.files.values())
            s = self.save(s.to(
                Phase.VERIFYING, self.clock(), fetched_bytes=fetched,
                reused_bytes=report.reused_bytes if report is not None else 0,
                last_download=tuple(f.line() for f in report.files) if report else ()))
            manifest = load_bundle(bundle, verify=True)
            if (manifest.version, manifest.roothash) != (offer.version, offer.manifest.roothash):
                raise BadRelease(f"{bundle}: bundle is {manifest.version}, "
                                 f"not the offered {offer.version}")
            s = self.save(s.to(Phase.WRITING, self.clock(), target_slot=target.value,
                               target_roothash=manifest.roothash).mark_attempted(offer.version))
            devices = self.layout.devices  # type: ignore[attr-defined]
            self.write_slot(bundle, manifest, target, active=self.booted,
                            devices=devices[target], active_devices=devices[target.other],
                            esp=self.layout.esp,  # type: ignore[attr-defined]
                            tries=self.config.boot_tries or manifest.boot_tries)
        except BadRelease as e:  # the files match their signed hashes, and still fail
            _remove(bundle)
            s = s.mark_bad_release(fingerprint(offer.manifest))
            return self._failed(s, f"staging {offer.version} failed: {e}; these bytes are not "
                                   "downloaded again")
        except OSError as e:
            _remove(bundle)
            return self._failed(s, f"staging {offer.version} failed: {e.strerror or e}")
        except (ChannelError, UpdaterError) as e:
            _remove(bundle)
            return self._failed(s, f"staging {offer.version} failed: {e}")
        _remove(bundle)
        log.info("staged %s on slot %s%s", offer.version, target.name,
                 "" if self.config.strategy.reboots() else "; strategy off: reboot when you like")
        return self.save(s.to(Phase.STAGED, self.clock(), failures=0,
                               reboot_boot_id=self.host.boot_id())), 0.0


def _remove(bundle: Path | None) -> None:
    if bundle is not None:
        shutil.rmtree(bundle, ignore_errors=True)
