"""Signed update channels (alpha, beta, stable) and the release bundle format.

``bundle``/``version``: the release contract. ``repository``/``releases``/``keys``/``layout``:
the release engineer's side. ``client`` (with ``fetch``, ``index``, ``policy``, ``rollout``):
the host's side. ``serve``: a static HTTP server with Range. See README.md.
"""
