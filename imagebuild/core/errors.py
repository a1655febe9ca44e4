"""The one error hierarchy of ``imagebuild`` (and the workstation commands it holds)."""


class TidehostError(Exception):
    """Base of every error the ``tidehost`` command reports; its text is one line."""

    exit_code = 1


class ConfigError(TidehostError):
    """An image file, cluster file or command-line value is wrong."""

    exit_code = 2


class ToolMissingError(TidehostError):
    """A program the build needs is not installed."""

    exit_code = 3


class StageError(TidehostError):
    """A build stage or a command it ran failed."""


class VMError(TidehostError):
    """Booting or reaching a virtual machine failed."""


class CommandTimeout(StageError):
    """A command ran longer than its caller allowed (``run(..., timeout=)``)."""
