"""The one error hierarchy of ``updater``: every message is one line for the journal."""

from __future__ import annotations


class UpdaterError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(UpdaterError):
    """The configuration file is malformed: the text names the file and the field."""


class StateError(UpdaterError):
    """A state transition that the state machine does not allow, or an unreadable state file."""


class ChannelUnavailable(UpdaterError):
    """No channel is configured, or the channel could not be reached."""


class DownloadError(UpdaterError):
    """The release could not be fetched (refused, interrupted, disk full)."""


class VerificationError(UpdaterError):
    """A bundle, a written partition or a root hash does not match what was promised."""


class SlotError(UpdaterError):
    """The slots cannot be written or switched (wrong device, active slot, missing entry)."""


class LockError(UpdaterError):
    """The reboot lock service is unreachable or answered something unexpected."""


class LockBusy(LockError):
    """Every slot of the semaphore is taken (locksmith's "semaphore is at 0")."""


class LockExists(LockError):
    """The id already holds the lock (locksmith's ErrExist)."""


class LockNotHeld(LockError):
    """The id does not hold the lock (locksmith's ErrNotExist)."""


class CommandError(UpdaterError):
    """An external command failed; ``returncode`` is its exit status."""

    def __init__(self, message: str, returncode: int = 1) -> None:
        super().__init__(message)
        self.returncode = returncode


class HolderConflict(LockError):
    """Another host presents the same holder id (its liveness key carries another host's
    token): two hosts must never share one slot."""


class StepBusy(UpdaterError):
    """Another process holds the agent's step lock (the daemon mid-step, or another verb)."""


class BadRelease(VerificationError):
    """The release's own signed bytes are inconsistent (usr.img against its hash tree or root
    hash, the bundle against its offer): downloading the same bytes again cannot help."""
