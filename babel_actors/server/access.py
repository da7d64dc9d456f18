"""Who is asking, and what they may do: keys, browser origins, the client's address.

Sans-IO: header values in, answers out. Secrets are kept only as SHA-256 digests and
never logged; every key check compares against every key in constant time. The
client's address (trusted proxies, per-client limit keys) is ``babel_actors.netaddr``'s,
which ``Config`` checks its settings with; it is re-exported here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from babel_actors.netaddr import (
    LOOPBACK,
    TrustedProxies,
    client_address,
    limit_key,
    split_list,
    wide_limit_key,
)

__all__ = [
    "ANY_ORIGIN",
    "LOOPBACK",
    "KeyRing",
    "OriginPolicy",
    "TrustedProxies",
    "client_address",
    "limit_key",
    "presented_key",
    "split_list",
    "wide_limit_key",
]

ANY_ORIGIN = "*"


class KeyRing:
    """Secret keys, any one of which grants access; empty when none are configured.

    ``match`` hashes the presented key and compares the digest with every key's,
    without stopping at the first match: how long it takes says nothing about which
    key, or how much of one, was right.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key) for key in keys)

    @classmethod
    def from_setting(cls, value: str) -> KeyRing:
        return cls(split_list(value))

    def __bool__(self) -> bool:
        return bool(self._digests)

    def match(self, presented: str | None) -> int | None:
        """The index of the key ``presented`` is, or None."""
        if not presented:
            return None
        digest = _digest(presented)
        found = None
        for index, candidate in enumerate(self._digests):
            if hmac.compare_digest(candidate, digest):
                found = index
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def presented_key(headers: Mapping[str, str], query_key: str | None = None) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY``, ``X-API-Key: KEY``, or
    (for browsers, which cannot set headers on a WebSocket) the ``apiKey`` query
    parameter."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        return api_key
    return query_key or None


class OriginPolicy:
    """Which browser origins may use the API and the WebSocket.

    ``*`` allows any. Otherwise an origin is allowed when it is listed, or when it is
    the server's own (its host is the request's ``Host``: the web client this server
    serves itself). Requests without ``Origin`` (not from a browser) are not judged.
    """

    def __init__(self, setting: str) -> None:
        listed = split_list(setting)
        self.any = not listed or ANY_ORIGIN in listed
        self._allowed = frozenset(_normal_origin(item) for item in listed)

    @property
    def varies(self) -> bool:
        """Whether answers depend on the request's ``Origin`` (``Vary: Origin``)."""
        return not self.any

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any:
            return True
        normal = _normal_origin(origin)
        if normal in self._allowed:
            return True
        return host is not None and urlsplit(normal).netloc == host.strip().lower()

    def cors_headers(self, origin: str | None, host: str | None) -> list[tuple[bytes, bytes]]:
        """``Access-Control-Allow-*`` for a response to ``origin`` (none when it is not
        allowed), plus ``Vary: Origin`` when the answer depends on it."""
        headers: list[tuple[bytes, bytes]] = []
        if self.varies:
            headers.append((b"vary", b"Origin"))
        if self.any:
            headers.append((b"access-control-allow-origin", b"*"))
        elif origin is not None and self.allows(origin, host):
            headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
        else:
            return headers
        headers += [
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", b"content-type, authorization, x-api-key"),
        ]
        return headers


def _normal_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()
