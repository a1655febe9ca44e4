"""etcd's JSON gateway, its data shapes (pure): base64 keys and values, key ranges, key-values,
watch events and requests, and the API prefix of a server version."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any


def raw(text: str) -> bytes:
    """A key's bytes: keys that are not UTF-8 come back from ``_kv`` as surrogate escapes."""
    return text.encode("utf-8", "surrogateescape")


def b64(data: str | bytes) -> str:
    return base64.b64encode(raw(data) if isinstance(data, str) else data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def key_after(key: str) -> str:
    """``range_end`` for exactly the keys up to and including ``key`` (``key`` + NUL)."""
    return b64(raw(key) + b"\0")


def prefix_end(prefix: str) -> str:
    """``range_end`` for a prefix: the prefix with its last byte incremented."""
    end = bytearray(raw(prefix))
    end[-1] += 1
    return b64(bytes(end))


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    version: int
    lease: int
    create_revision: int = 0


def _kv(d: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=unb64(d["key"]).decode(errors="surrogateescape"),
        value=unb64(d.get("value", "")),
        mod_revision=int(d.get("mod_revision", 0)),
        version=int(d.get("version", 0)),
        lease=int(d.get("lease", 0)),
        create_revision=int(d.get("create_revision", 0)),
    )


@dataclass(frozen=True)
class Event:
    """One change a watch saw: ``deleted`` or put, with the key as it is now."""

    kv: KeyValue
    deleted: bool


@dataclass(frozen=True)
class Watch:
    """What to watch: one key, or keys from ``key`` up to ``range_end`` (base64, as etcd's)."""

    key: str
    range_end: str = ""
    deletes_only: bool = False

    @classmethod
    def prefix(cls, prefix: str, *, deletes_only: bool = False) -> Watch:
        return cls(prefix, prefix_end(prefix), deletes_only)

    def request(self, start_revision: int) -> dict[str, Any]:
        req: dict[str, Any] = {"key": b64(self.key), "start_revision": str(start_revision)}
        if self.range_end:
            req["range_end"] = self.range_end
        if self.deletes_only:
            req["filters"] = ["NOPUT"]
        return {"create_request": req}


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
