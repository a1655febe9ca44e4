"""commands: one thin module per verb of the ``tidehost`` command.

Each exposes ``register(subparsers)``, which adds the verb's parser and sets ``func`` to a
handler that turns the parsed flags into calls of the wings below and returns an exit status.
"""
