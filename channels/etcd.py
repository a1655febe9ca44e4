"""A small etcd v3 client over the JSON gateway (``requests`` only), for the host's reboot lock
and fleet report and for the workstation's fleet view.

The gateway prefix is detected per endpoint from ``GET /version`` (``/v3`` from 3.4 on,
``/v3beta`` on 3.3); keys and values travel base64-encoded, int64 values come back as strings,
fields at their default are omitted (a failed txn has no ``succeeded``, a missing key no
``kvs``).  Every failure is an ``EtcdError`` with one line of text (``EtcdUnavailable`` when
no endpoint answered).

With etcd's authentication on, ``user`` and ``password`` (a callable: the password file is
read when a token is needed) get a token from ``/v3/auth/authenticate``, sent raw in the
``Authorization`` header (SPECS §11.3); a token that expired or went stale (etcd: "invalid
auth token", "revision of auth store is old") is replaced once and the request repeated.
The gateway refuses a client certificate with a CN once auth is on: use one without.

``wait_change`` opens the gateway's watch stream (``POST /v3/watch``, SPECS §11.1): one HTTP
request that costs etcd nothing until a watched key changes; it returns the first batch of
events, or ``None`` when its time is up (the caller re-reads: a long, jittered safety net).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests

from channels.errors import EtcdError, EtcdUnavailable
from channels.etcdkv import (  # noqa: F401 - re-exported: the names importers use
    Event,
    KeyValue,
    Watch,
    _kv,
    api_prefix,
    b64,
    key_after,
    prefix_end,
    raw,
    unb64,
)

log = logging.getLogger(__name__)


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
            raise EtcdError("no etcd endpoints configured")
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
        self.calls: Counter[str] = Counter()  # requests sent, by API path (for the bench)
        self.user = user
        self._password = password
        self._token = ""  # etcd's auth token for ``user``; "" until the first request

    def _api(self, endpoint: str) -> str:
        if endpoint not in self._prefix:
            r = self.session.get(f"{endpoint}/version", timeout=self.timeout, **self.tls)
            r.raise_for_status()
            try:
                version = str(r.json().get("etcdserver", ""))
            except (ValueError, AttributeError):
                raise EtcdError(f"etcd {endpoint}/version: not etcd's answer") from None
            self._prefix[endpoint] = api_prefix(version)
        return self._prefix[endpoint]

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._good + i) % n for i in range(n)]

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``<prefix>/<path>`` on the first endpoint that answers.

        Raises: EtcdUnavailable (no endpoint answered), EtcdError (an error answer).
        """
        errors = []
        for idx in self._order():
            ep = self.endpoints[idx]
            self.calls[path] += 1
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
                raise EtcdError(f"etcd {ep}/{path}: HTTP {r.status_code}, not JSON") from None
            if not isinstance(data, dict):
                raise EtcdError(f"etcd {ep}/{path}: HTTP {r.status_code}, not a JSON object")
            if r.status_code != 200:
                msg = data.get("message") or data.get("error") or r.text[:200]
                raise EtcdError(f"etcd {path}: HTTP {r.status_code}: {msg}")
            return data
        raise EtcdUnavailable(f"etcd unreachable ({'; '.join(errors)})")

    # --- authentication ---------------------------------------------------------------------

    _STALE = ("invalid auth token", "auth store is old", "user name is empty")

    def _headers(self, ep: str, fresh: bool = False) -> dict[str, str]:
        if not self.user:
            return {}
        if fresh or not self._token:
            self._token = self._authenticate(ep)
        return {"Authorization": self._token}

    def _post(self, ep: str, path: str, body: dict[str, Any]) -> requests.Response:
        """POST with the token of ``user`` (got first, replaced once when etcd refuses it)."""
        url = f"{ep}{self._api(ep)}/{path}"
        for fresh in (False, True):
            r = self.session.post(url, json=body, headers=self._headers(ep, fresh),
                                  timeout=self.timeout, **self.tls)
            stale = r.status_code == 401 or any(m in r.text for m in self._STALE)
            if not (self.user and stale) or fresh:
                return r
            log.info("etcd %s: the token of user %s expired: authenticating again", ep, self.user)
        raise AssertionError("not reached")

    def _authenticate(self, ep: str) -> str:
        try:
            password = self._password() if self._password else ""
        except (OSError, ValueError) as e:  # ValueError: not UTF-8
            raise EtcdError(f"etcd user {self.user}: cannot read the password: "
                            f"{getattr(e, 'strerror', None) or e}") from None
        r = self.session.post(f"{ep}{self._api(ep)}/auth/authenticate", timeout=self.timeout,
                              json={"name": self.user, "password": password}, **self.tls)
        try:
            token = r.json().get("token") if r.status_code == 200 else None
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise EtcdError(f"etcd {ep}: user {self.user} could not authenticate: HTTP "
                            f"{r.status_code}: {' '.join(r.text.split())[:200]}")
        return str(token)

    # --- kv -------------------------------------------------------------------------------

    def range(self, key: str, range_end: str = "", **options: Any) -> tuple[list[KeyValue], int]:
        """Keys from ``key`` (to ``range_end``, base64) and the store revision of the read;
        ``options`` are RangeRequest fields (``limit``, ``sort_order``, ...)."""
        body: dict[str, Any] = {"key": b64(key), **options}
        if range_end:
            body["range_end"] = range_end
        d = self.call("kv/range", body)
        rev = int((d.get("header") or {}).get("revision", 0))
        return [_kv(x) for x in d.get("kvs") or []], rev

    def get(self, key: str) -> KeyValue | None:
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def get_prefix(self, prefix: str, *, keys_only: bool = False) -> list[KeyValue]:
        opts = {"keys_only": True} if keys_only else {}
        return self.range(prefix, prefix_end(prefix), **opts)[0]

    def get_prefix_paged(self, prefix: str, page: int = 1000) -> list[KeyValue]:
        """Every key under ``prefix``, read ``page`` keys at a time at one revision (a large
        fleet's reports would not fit one gRPC message)."""
        out: list[KeyValue] = []
        start, rev = prefix, 0
        while True:
            opts: dict[str, Any] = {"limit": str(page)}
            if rev:
                opts["revision"] = str(rev)
            kvs, read_rev = self.range(start, prefix_end(prefix), **opts)
            rev = rev or read_rev
            out += kvs
            if len(kvs) < page:
                return out
            start = kvs[-1].key + "\0"

    def put(self, key: str, value: str | bytes, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        self.call("kv/put", body)

    def delete(self, key: str) -> None:
        self.call("kv/deleterange", {"key": b64(key)})

    def delete_prefix(self, prefix: str) -> None:
        self.call("kv/deleterange", {"key": b64(prefix), "range_end": prefix_end(prefix)})

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
            raise EtcdError(f"etcd lease/grant: no lease in the answer ({d.get('error', '')})")
        return int(d["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; its remaining TTL, 0 when it has expired."""
        d = self.call("lease/keepalive", {"ID": str(lease)})
        result = d.get("result", d)
        return int(result.get("TTL", 0)) if isinstance(result, dict) else 0

    def lease_revoke(self, lease: int) -> None:
        try:
            self.call("lease/revoke", {"ID": str(lease)})
        except EtcdError as e:  # already expired: nothing to revoke
            log.debug("lease revoke %x: %s", lease, e)

    # --- watch -------------------------------------------------------------------------------

    def wait_change(self, watches: Sequence[Watch], start_revision: int,
                    timeout: float) -> list[Event] | None:
        """Block until one of ``watches`` sees a change at or after ``start_revision``; those
        events.  ``None``: ``timeout`` passed (or the stream ended: re-read); ``[]``: etcd
        compacted past ``start_revision`` (re-read, then watch again).

        Raises: EtcdUnavailable (no endpoint accepted the watch), EtcdError (refused).
        """
        body = "".join(json.dumps(w.request(start_revision)) for w in watches)
        end = time.monotonic() + timeout
        errors = []
        for idx in self._order():
            ep = self.endpoints[idx]
            self.calls["watch"] += 1
            try:
                r = self.session.post(f"{ep}{self._api(ep)}/watch", data=body, stream=True,
                                      headers=self._headers(ep),
                                      timeout=(self.timeout, max(timeout, 0.1)), **self.tls)
            except (requests.ConnectionError, requests.Timeout) as e:
                errors.append(f"{ep}: {type(e).__name__}")
                continue
            if r.status_code != 200:
                r.close()
                raise EtcdError(f"etcd watch: HTTP {r.status_code}")
            self._good = idx
            try:
                return self._read_stream(r, len(watches), end)
            except EtcdError as e:
                if any(m in str(e) for m in self._STALE):
                    self._token = ""  # expired: the caller's next call authenticates again
                raise
            finally:
                r.close()  # closing the connection cancels the watchers (SPECS §11.1)
        raise EtcdUnavailable(f"etcd unreachable ({'; '.join(errors)})")

    @staticmethod
    def _read_stream(r: requests.Response, n: int, end: float) -> list[Event] | None:
        created = 0
        try:
            for line in r.iter_lines():
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    raise EtcdError("etcd watch: a message that is not JSON") from None
                if "error" in msg:
                    err = msg["error"]
                    text = err.get("message", "") if isinstance(err, dict) else str(err)
                    raise EtcdError(f"etcd watch: {text}")
                res = msg.get("result") or {}
                if res.get("created"):
                    created += 1
                if res.get("canceled"):
                    if res.get("compact_revision"):
                        return []
                    raise EtcdError(f"etcd watch refused: {res.get('cancel_reason', '?')}")
                events = res.get("events") or []
                if events:
                    return [Event(_kv(e["kv"]), e.get("type") == "DELETE") for e in events]
                if time.monotonic() >= end:
                    return None
        except requests.RequestException:
            pass  # the read timeout (no change within the time) or a dropped stream
        if time.monotonic() < end - 1 and created < n:
            time.sleep(random.uniform(0.5, 1.5))  # a stream that ends at once: do not spin
        return None
