"""The one error hierarchy of the ``channels`` package."""


class ChannelError(Exception):
    """Base of every error raised by ``channels``; its text is one line for the user."""


class BundleError(ChannelError):
    """A release bundle is malformed or its files do not match its manifest."""
