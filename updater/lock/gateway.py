"""A small etcd v3 client over the JSON gateway (``requests`` only).

The gateway prefix is detected per endpoint from ``GET /version`` (``/v3`` from 3.4 on,
``/v3beta`` on 3.3); keys and values travel base64-encoded, int64 values come back as strings,
fields at their default are omitted (a failed txn has no ``succeeded``, a missing key no
``kvs``).  Every failure becomes a ``LockError`` with one line of text.

With etcd's authentication on, ``user`` and ``password`` (a callable: the password file is
read when a token is needed) get a token from ``/v3/auth/authenticate``, sent raw in the
``Authorization`` header (SPECS §11.3); a token that expired or went stale (etcd: "invalid
auth token", "revision of auth store is old") is replaced once and the request repeated.
The gateway refuses a client certificate with a CN once auth is on: use one without.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from updater.errors import LockError

log = logging.getLogger(__name__)


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """``range_end`` for a prefix: the prefix with its last byte incremented."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return b64(bytes(raw))


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    version: int
    lease: int


def _kv(d: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=unb64(d["key"]).decode(errors="replace"),
        value=unb64(d.get("value", "")),
        mod_revision=int(d.get("mod_revision", 0)),
        version=int(d.get("version", 0)),
        lease=int(d.get("lease", 0)),
    )


def api_prefix(server_version: str) -> str:
    """The gateway path for an etcd server version (``3.4.23`` → ``/v3``)."""
    try:
        major, minor = (int(x) for x in server_version.split(".")[:2])
    except ValueError:
        return "/v3"
    if (major, minor) >= (3, 4):
        return "/v3"
    if (major, minor) == (3, 3):
        return "/v3beta"
    return "/v3alpha"


class EtcdGateway:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        timeout: float = 10.0,
        user: str = "",
        password: Callable[[], str] | None = None,
    ) -> None:
        if not endpoints:
            raise LockError("no etcd endpoints configured")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.session = requests.Session()
        # per request, not on the session: requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE
        # override a session's verify (psf/requests#3829)
        self.tls: dict[str, Any] = {"verify": str(ca) if ca else True}
        if cert:
            self.tls["cert"] = (str(cert), str(key)) if key else str(cert)
        self._prefix: dict[str, str] = {}
        self._good = 0  # index of the endpoint that answered last
        self.user = user
        self._password = password
        self._token = ""  # etcd's auth token for ``user``; "" until the first request

    def _api(self, endpoint: str) -> str:
        if endpoint not in self._prefix:
            r = self.session.get(f"{endpoint}/version", timeout=self.timeout, **self.tls)
            r.raise_for_status()
            self._prefix[endpoint] = api_prefix(str(r.json().get("etcdserver", "")))
        return self._prefix[endpoint]

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``<prefix>/<path>`` on the first endpoint that answers."""
        errors = []
        n = len(self.endpoints)
        for i in range(n):
            idx = (self._good + i) % n
            ep = self.endpoints[idx]
            try:
                r = self._post(ep, path, body)
            except (requests.ConnectionError, requests.Timeout) as e:
                errors.append(f"{ep}: {type(e).__name__}")
                continue
            except requests.RequestException as e:
                errors.append(f"{ep}: {e}")
                continue
            if r.status_code >= 500 and "unavailable" in r.text.lower():
                errors.append(f"{ep}: unavailable")
                continue
            self._good = idx
            try:
                data = r.json()
            except ValueError:
                raise LockError(f"etcd {ep}/{path}: HTTP {r.status_code}, not JSON") from None
            if r.status_code != 200:
                msg = data.get("message") or data.get("error") or r.text[:200]
                raise LockError(f"etcd {path}: HTTP {r.status_code}: {msg}")
            return data
        raise LockError(f"etcd unreachable ({'; '.join(errors)})")

    # --- authentication ---------------------------------------------------------------------

    _STALE = ("invalid auth token", "auth store is old", "user name is empty")

    def _post(self, ep: str, path: str, body: dict[str, Any]) -> requests.Response:
        """POST with the token of ``user`` (got first, replaced once when etcd refuses it)."""
        url = f"{ep}{self._api(ep)}/{path}"
        for fresh in (False, True):
            headers = {}
            if self.user:
                if fresh or not self._token:
                    self._token = self._authenticate(ep)
                headers["Authorization"] = self._token
            r = self.session.post(url, json=body, headers=headers, timeout=self.timeout,
                                  **self.tls)
            stale = r.status_code == 401 or any(m in r.text for m in self._STALE)
            if not (self.user and stale) or fresh:
                return r
            log.info("etcd %s: the token of user %s expired: authenticating again", ep, self.user)
        raise AssertionError("not reached")

    def _authenticate(self, ep: str) -> str:
        try:
            password = self._password() if self._password else ""
        except (OSError, ValueError) as e:  # ValueError: not UTF-8
            raise LockError(f"etcd user {self.user}: cannot read the password: "
                            f"{getattr(e, 'strerror', None) or e}") from None
        r = self.session.post(f"{ep}{self._api(ep)}/auth/authenticate", timeout=self.timeout,
                              json={"name": self.user, "password": password}, **self.tls)
        try:
            token = r.json().get("token") if r.status_code == 200 else None
        except ValueError:
            token = None
        if not token:
            raise LockError(f"etcd {ep}: user {self.user} could not authenticate: HTTP "
                            f"{r.status_code}: {' '.join(r.text.split())[:200]}")
        return str(token)

    # --- kv -------------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        kvs = self.call("kv/range", {"key": b64(key)}).get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        d = self.call("kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix)})
        return [_kv(x) for x in d.get("kvs") or []]

    def put(self, key: str, value: str | bytes, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        self.call("kv/put", body)

    def delete(self, key: str) -> None:
        self.call("kv/deleterange", {"key": b64(key)})

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> bool:
        d = self.call("kv/txn", {"compare": compare, "success": success,
                                 "failure": failure or []})
        return d.get("succeeded") is True

    # --- txn building blocks ---------------------------------------------------------------

    @staticmethod
    def cmp_mod(key: str, revision: int) -> dict[str, Any]:
        return {"key": b64(key), "result": "EQUAL", "target": "MOD",
                "mod_revision": str(revision)}

    @staticmethod
    def cmp_absent(key: str) -> dict[str, Any]:
        return {"key": b64(key), "result": "EQUAL", "target": "VERSION", "version": "0"}

    @staticmethod
    def op_put(key: str, value: str | bytes, lease: int = 0) -> dict[str, Any]:
        req: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            req["lease"] = str(lease)
        return {"request_put": req}

    @staticmethod
    def op_delete(key: str) -> dict[str, Any]:
        return {"request_delete_range": {"key": b64(key)}}

    # --- leases ------------------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        d = self.call("lease/grant", {"TTL": str(ttl), "ID": "0"})
        if "ID" not in d:
            raise LockError(f"etcd lease/grant: no lease in the answer ({d.get('error', '')})")
        return int(d["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; its remaining TTL, 0 when it has expired."""
        d = self.call("lease/keepalive", {"ID": str(lease)})
        result = d.get("result", d)
        return int(result.get("TTL", 0)) if isinstance(result, dict) else 0

    def lease_revoke(self, lease: int) -> None:
        try:
            self.call("lease/revoke", {"ID": str(lease)})
        except LockError as e:  # already expired: nothing to revoke
            log.debug("lease revoke %x: %s", lease, e)
