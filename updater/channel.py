"""What the agent needs from the channel client (``channels.client``), and building one.

``HostChannel`` is the client as the agent uses it: ``download`` takes the delta path of
``channels.delta`` (the very code ``tidehost channel check --seed`` runs) with the seeds the
agent passes (``updater.seeds``), and keeps what came how in ``last_report``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from channels.bundle import Manifest
from updater.config import AgentConfig
from updater.errors import ChannelUnavailable

if TYPE_CHECKING:
    from channels.client import ChannelClient
    from channels.delta import DeltaReport, SeedSource


class Offer(Protocol):
    version: str
    manifest: Manifest


class Channel(Protocol):
    last_report: DeltaReport | None  # of the last download; None: not known

    def offer(self, machine_id: str, current_version: str,
              now: datetime | None = None) -> Offer | None: ...

    def download(self, offer: Any, dest_dir: Path,
                 progress: Callable[[int, int], None] | None = None, *,
                 seeds: Sequence[SeedSource] = ()) -> Path: ...


class HostChannel:
    """``ChannelClient`` with the delta download (``channels.delta.download``)."""

    def __init__(self, client: ChannelClient) -> None:
        self.client = client
        self.last_report: DeltaReport | None = None

    def offer(self, machine_id: str, current_version: str,
              now: datetime | None = None) -> Any:
        return self.client.offer(machine_id, current_version, now)

    def download(self, offer: Any, dest_dir: Path,
                 progress: Callable[[int, int], None] | None = None, *,
                 seeds: Sequence[SeedSource] = ()) -> Path:
        from channels import delta

        self.last_report = None
        path, self.last_report = delta.download(self.client, offer, dest_dir, seeds,
                                                progress=progress)
        return path


def make_channel(config: AgentConfig) -> Channel | None:
    """The channel client for ``config``; None when no channel is configured.

    Raises:
        ChannelUnavailable: the client is not installed.
        channels.errors.ChannelError: its state directory or root.json is unusable.
    """
    if not config.channel_configured:
        return None
    try:
        from channels.client import ChannelClient
    except ImportError as e:
        raise ChannelUnavailable(f"the channel client is not installed ({e})") from None
    return HostChannel(ChannelClient(config.channel_url, config.channel_name,
                                     config.state_dir / "channel", config.channel_root))
