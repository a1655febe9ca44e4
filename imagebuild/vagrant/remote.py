"""What ``tidehost vagrant init`` asks the channel server: the root it trusts, the catalog.

- ``fetch_root``: the channel repository's ``metadata/root.json`` (trust on first use, said
  so: pass ``--channel-root`` to pin a copy you trust instead). The nodes' agents need a
  root to verify the channel; without one they would report
  ``/usr/share/tidehost/channel-root.json: No such file or directory``.
- ``check_catalog``: the channel's box catalog answers and lists a box for the provider,
  so that ``vagrant up`` does not stop later on it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from imagebuild.core.errors import ConfigError
from imagebuild.core.platforms import BoxProvider
from imagebuild.vagrant.catalog import BoxCatalog, catalog_problem

TIMEOUT = 15


class Unreachable(ConfigError):
    """The server does not answer at all (refused, timed out, no route)."""


class NotFound(ConfigError):
    """The server answers 404."""


def get(url: str, what: str, timeout: float = TIMEOUT) -> bytes:
    """The body at ``url``.

    Raises:
        Unreachable: nothing answers there.
        NotFound: ``what`` is not there (404).
        ConfigError: another HTTP error.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - http(s) only
            return r.read(64 << 20)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise NotFound(f"{url}: no {what} there (HTTP 404)") from None
        raise ConfigError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"{url} does not answer ({reason})") from None


def fetch_root(channel_url: str) -> bytes:
    """The repository's root.json at ``channel_url`` (a TUF root, checked to be one).

    Raises:
        Unreachable, ConfigError: not there, or not a root.
    """
    url = f"{channel_url.rstrip('/')}/metadata/root.json"
    data = get(url, "channel root (metadata/root.json)")
    try:
        signed = json.loads(data)["signed"]
        ok = signed["_type"] == "root" and isinstance(signed["keys"], dict)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ConfigError(f"{url}: not a TUF root (signed._type is not root)")
    return data


def check_catalog(url: str, box_name: str, provider: BoxProvider) -> BoxCatalog:
    """The catalog at ``url``, which must be ``box_name``'s and list a ``provider`` box.

    Raises:
        Unreachable: nothing answers at ``url``.
        ConfigError: no catalog there, another box's, or none for ``provider``.
    """
    try:
        text = get(url, "box catalog for this channel").decode(errors="replace")
    except NotFound as e:
        raise ConfigError(f"{e}: publish the channel's boxes (tidehost vagrant catalog "
                          "publish REPO --channel CHANNEL ...)") from None
    catalog = BoxCatalog.from_json(text, url)
    problem = catalog_problem(catalog, box_name, provider)
    if problem:
        raise ConfigError(f"{url}: {problem}")
    return catalog
