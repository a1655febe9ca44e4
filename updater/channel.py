"""What the agent needs from the channel client (``channels.client``), and building one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from channels.bundle import Manifest
from updater.config import AgentConfig
from updater.errors import ChannelUnavailable


class Offer(Protocol):
    version: str
    manifest: Manifest


class Channel(Protocol):
    def offer(self, machine_id: str, current_version: str,
              now: datetime | None = None) -> Offer | None: ...

    def download(self, offer: Any, dest_dir: Path,
                 progress: Callable[[int, int], None] | None = None) -> Path: ...


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
    return ChannelClient(config.channel_url, config.channel_name, config.state_dir / "channel",
                         config.channel_root)
