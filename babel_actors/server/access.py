"""Who is asking, and what they may do: keys, browser origins, the client's address.

Sans-IO: header values in, answers out. Secrets are kept only as SHA-256 digests and
never logged; every key check compares against every key in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

ANY_ORIGIN = "*"


def split_list(value: str) -> tuple[str, ...]:
    """The non-empty items of a comma-separated setting, stripped."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


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


class TrustedProxies:
    """The peers whose ``X-Real-IP`` / ``X-Forwarded-For`` name the client
    (``BABEL_TRUST_PROXY``): none (empty, ``0``); the proxy on this machine (``1``:
    loopback peers only); or a comma-separated list of addresses and CIDRs
    (``10.0.0.0/8, 192.0.2.7``). A malformed setting raises ``ValueError``."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self.networks = tuple(networks)

    @classmethod
    def from_setting(cls, value: str) -> TrustedProxies:
        word = value.strip().lower()
        if word in ("", "0", "false", "no", "off"):
            return cls(())
        items = LOOPBACK if word in ("1", "true", "yes", "on") else split_list(value)
        return cls(ipaddress.ip_network(item, strict=False) for item in items)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` (the socket's address) is one of these proxies."""
        address = _parsed(peer)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address is not None and any(address in network for network in self.networks)


LOOPBACK = ("127.0.0.0/8", "::1/128")
"""What ``BABEL_TRUST_PROXY=1`` trusts: a proxy on this machine."""


def client_address(peer: str, headers: Mapping[str, str], *, trust_proxy: bool) -> str:
    """The client's address: the socket's peer, or when the peer is a trusted proxy
    the address it names in ``X-Real-IP`` (else the last ``X-Forwarded-For`` hop, the
    one the proxy added). A header that holds no address is ignored."""
    if trust_proxy:
        forwarded = headers.get("x-forwarded-for", "").rsplit(",", 1)[-1]
        for candidate in (headers.get("x-real-ip", ""), forwarded):
            address = _address(candidate)
            if address is not None:
                return address
    return peer


def limit_key(address: str) -> str:
    """What per-client limits count by: the address, or for IPv6 its /64, which one
    subscriber typically holds whole (one host can use any address in it)."""
    parsed = _parsed(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address


def wide_limit_key(address: str) -> str | None:
    """The /48 of an IPv6 address (a site's usual allocation: 65536 /64s), counted
    too where one client could hop between /64s; None for IPv4."""
    parsed = _parsed(address)
    if not isinstance(parsed, ipaddress.IPv6Address) or parsed.ipv4_mapped is not None:
        return None
    return str(ipaddress.IPv6Network((parsed, 48), strict=False))


def _address(text: str) -> str | None:
    parsed = _parsed(text)
    return None if parsed is None else str(parsed)


def _parsed(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None
