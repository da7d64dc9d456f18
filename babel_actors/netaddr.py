"""Client addresses: which peers are trusted proxies, which address a request comes
from behind them, and what the per-client limits count by.

Sans-IO and free of the server: ``Config`` checks ``BABEL_TRUST_PROXY`` with
``TrustedProxies`` when it is built, and ``server.access`` re-exports all of it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping


def split_list(value: str) -> tuple[str, ...]:
    """The non-empty items of a comma-separated setting, stripped."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


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
