"""The access rules and per-client limits of one server, and the ``Refusal`` they raise.

HTTP routes and WebSocket roles ask the ``Guard`` before they act; a check that fails
raises ``Refusal``, which the HTTP layer answers with its status (and headers) and
the WebSocket layer with an ``error`` and a close code. Every refusal is counted in
the ``babel_refusals`` metric under a short reason.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
import trio

from babel_actors.config import Config
from babel_actors.live import LiveSession
from babel_actors.metrics import Metrics
from babel_actors.netaddr import TrustedProxies, client_address, limit_key, wide_limit_key
from babel_actors.server.access import KeyRing, OriginPolicy, presented_key
from babel_actors.server.limits import (
    AudioMeter,
    ClientCounts,
    FailureWindow,
    LiveCounts,
    MessageMeter,
)
from babel_actors.wire.closes import POLICY, TRY_AGAIN_LATER
from babel_actors.wire.server import error_message as wire_error

UNAUTHORIZED = 401
FORBIDDEN = 403
REQUEST_TIMEOUT = 408
TOO_MANY = 429

JOIN_CLIENTS = 10_000
"""Clients whose failed joins are remembered at once, per table. At most about 1.4 KB
each in the /64 and IPv4 table (20 attempts), 6 KB in the /48 table (160)."""
WIDE_JOIN_FACTOR = 8
"""An IPv6 /48 may fail this many times ``join_attempts`` in a window, across its /64s."""


@attrs.frozen(kw_only=True)
class Refusal(Exception):
    """A request, connection or message refused by an access rule or a limit."""

    reason: str
    """Short label for the ``babel_refusals`` metric (``api_key``, ``audio_rate``, ...)."""
    status: int
    """The HTTP status (401, 403, 408, 429); on a WebSocket, ``error.status``."""
    message: str
    """What the client is told."""
    close_code: int = POLICY
    """The WebSocket close code, when the refusal ends a WebSocket (1008 or 1013)."""
    retry_after_s: float | None = None
    """When trying again can succeed (``Retry-After``, ``retryAfter``)."""

    @property
    def retry_after(self) -> int | None:
        """``retry_after_s`` in whole seconds, rounded up."""
        return None if self.retry_after_s is None else max(1, math.ceil(self.retry_after_s))

    def body(self) -> dict[str, Any]:
        """The HTTP error body."""
        body: dict[str, Any] = {"success": False, "error": self.message}
        if self.retry_after is not None:
            body["retryAfter"] = self.retry_after
        return body

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``WWW-Authenticate`` for 401, ``Retry-After`` when known."""
        headers = []
        if self.status == UNAUTHORIZED:
            headers.append((b"www-authenticate", b'Bearer realm="babel-actors"'))
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        return headers

    def error_message(self) -> dict[str, Any]:
        """The WebSocket ``error`` sent before closing with ``close_code``."""
        message: dict[str, Any] = {
            "type": "error",
            "message": self.message,
            "code": self.close_code,
            "closing": True,
            "status": self.status,
        }
        if self.retry_after is not None:
            message["retryAfter"] = self.retry_after
        return message


class Guard:
    """The access rules and per-client limits of ``config``, for one server.

    Clients are told apart by address (``client``); IPv6 clients by their /64, and
    for failed joins by their /48 too. Concurrent requests cannot all pass a check
    that guards an await: a new session's place is taken before it (``session_place``),
    and a join is checked again after its lookup (``check_join``).
    Backpressure: none; nothing waits. A check answers at once, and what it counts
    is bounded (see ``limits.py``).
    Cancellation: nothing here awaits; places (``connection_slot``,
    ``listener_slot``, ``session_place``) are given back in ``finally`` however their
    holder ends.
    Error handling: a failed check raises ``Refusal`` and counts it in ``metrics``.
    """

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self._refusals = metrics.refusals
        self.api_keys = KeyRing.from_setting(config.api_keys)
        self.operator_keys = KeyRing([config.operator_key] if config.operator_key else [])
        self.origins = OriginPolicy(config.allowed_origins)
        self.proxies = TrustedProxies.from_setting(config.trust_proxy)
        attempts, window_s = config.join_attempts, config.join_window_s
        self.joins = FailureWindow(limit=attempts, window_s=window_s, max_clients=JOIN_CLIENTS)
        self.wide_joins = FailureWindow(
            limit=WIDE_JOIN_FACTOR * attempts, window_s=window_s, max_clients=JOIN_CLIENTS
        )
        self.connections = ClientCounts(config.max_connections_per_ip)
        self.sessions = LiveCounts()
        self.listeners = ClientCounts(config.max_listeners_per_session)
        self.audio = AudioMeter(rate=config.audio_rate_slack, burst=config.audio_burst_s)
        self._owners: weakref.WeakKeyDictionary[LiveSession, str] = weakref.WeakKeyDictionary()

    def refuse(
        self,
        reason: str,
        status: int,
        message: str,
        *,
        close_code: int = POLICY,
        retry_after_s: float | None = None,
    ) -> Refusal:
        """A ``Refusal``, counted; the caller raises it."""
        self.count(reason)
        return Refusal(
            reason=reason,
            status=status,
            message=message,
            close_code=close_code,
            retry_after_s=retry_after_s,
        )

    def count(self, reason: str) -> None:
        """Count a refusal that is answered elsewhere (a message too big: 1009)."""
        self._refusals.labels(reason=reason).inc()

    # --- who is asking ------------------------------------------------------------

    def client(self, peer: str, headers: Mapping[str, str]) -> str:
        """The client's address (see ``netaddr.client_address``): what the headers
        name when ``peer`` is a trusted proxy, else ``peer``."""
        return client_address(peer, headers, trust_proxy=self.proxies.trusts(peer))

    def check_origin(self, headers: Mapping[str, str]) -> None:
        """Refuse (403) a browser whose ``Origin`` is not allowed."""
        origin = headers.get("origin")
        if origin is not None and not self.origins.allows(origin, headers.get("host")):
            raise self.refuse("origin", FORBIDDEN, f"origin {origin[:100]!r} is not allowed")

    def session_owner(
        self, headers: Mapping[str, str], client: str, query_key: str | None = None
    ) -> str:
        """Whom a new session counts against: the API key it presents (401 without a
        right one, when keys are configured), else the client's address."""
        if not self.api_keys:
            return f"address {limit_key(client)}"
        index = self.api_keys.match(presented_key(headers, query_key))
        if index is None:
            raise self.refuse(
                "api_key",
                UNAUTHORIZED,
                "an API key is needed: Authorization: Bearer KEY or X-API-Key: KEY",
            )
        return f"key {index}"

    def check_operator(self, headers: Mapping[str, str]) -> None:
        """Refuse (401) an operator route without the operator key, when one is set."""
        if self.operator_keys and self.operator_keys.match(presented_key(headers)) is None:
            raise self.refuse(
                "operator_key",
                UNAUTHORIZED,
                "the operator key is needed: Authorization: Bearer KEY or X-API-Key: KEY",
            )

    # --- limits ---------------------------------------------------------------------

    def check_join(self, client: str) -> None:
        """Refuse (429) any join from a client locked out for failed joins (an IPv6
        client also when its /48 is). A join checks before its lookup and again after
        it: joins in flight together all pass the first check, and any of them
        answered once the client has used up its failures is refused too, found or
        not, so they learn no more than one join at a time would."""
        if not self.config.join_attempts:
            return
        now = trio.current_time()
        waits = [
            wait
            for table, key in self._join_counts(client)
            if (wait := table.retry_after(key, now)) is not None
        ]
        if waits:
            raise self.refuse(
                "join_attempts",
                TOO_MANY,
                "too many joins of unknown sessions from your address; try again later",
                retry_after_s=max(waits),
            )

    def join_failed(self, client: str) -> None:
        """Count a join of an unknown session against the client (and its /48)."""
        if self.config.join_attempts:
            now = trio.current_time()
            for table, key in self._join_counts(client):
                table.fail(key, now)

    def _join_counts(self, client: str) -> list[tuple[FailureWindow, str]]:
        counts = [(self.joins, limit_key(client))]
        wide = wide_limit_key(client)
        if wide is not None:
            counts.append((self.wide_joins, wide))
        return counts

    @contextmanager
    def session_place(self, owner: str) -> Iterator[Callable[[LiveSession], None]]:
        """Refuse (429; close 1013) a new session past ``max_sessions_per_key``; else
        hold a place for it while it is created, so concurrent starts cannot all pass
        the check. Call the yielded function with the new session: it then counts
        against ``owner`` until it ends. A place not filled when the block exits
        (creation failed or was cancelled) is given back."""
        limit = self.config.max_sessions_per_key
        if limit and self.sessions.count(owner) >= limit:
            raise self.refuse(
                "sessions_per_key",
                TOO_MANY,
                f"at most {limit} live sessions per key (or address); end one first",
                close_code=TRY_AGAIN_LATER,
            )
        reserved = trio.Event()
        if limit:
            self.sessions.add(owner, reserved)

        def started(session: LiveSession) -> None:
            self._owners[session] = owner
            if limit:
                self.sessions.add(owner, session.ended)

        try:
            yield started
        finally:
            reserved.set()

    def check_listeners(self, session: LiveSession) -> None:
        """Refuse (429; close 1013) a listener of a full session."""
        limit = self.config.max_listeners_per_session
        if limit and self.listeners.count(session.id) >= limit:
            raise self.refuse(
                "listeners",
                TOO_MANY,
                f"this session is full ({limit} listeners); try again later",
                close_code=TRY_AGAIN_LATER,
            )

    @contextmanager
    def listener_slot(self, session: LiveSession) -> Iterator[None]:
        """Hold one of the session's listener places for the block (joining included,
        so joiners catching up at once cannot overfill it)."""
        self.check_listeners(session)
        self.listeners.acquire(session.id)
        try:
            yield
        finally:
            self.listeners.release(session.id)

    def meter_audio(self, session: LiveSession, pcm_bytes: int, *, began: float) -> None:
        """Refuse (429; close 1008) audio past what ``session``'s host may have sent
        by now on its own timeline: ``audio_burst_s`` plus ``audio_rate_slack`` times
        the time since its stream began (``began``: when this host connection
        started), per session and per owner (see ``AudioMeter``), and any one message
        longer than the burst. Audio the server reads late (it was stalled, or its
        pipeline held the host's socket back) counts when the host sent it, not when
        it was read. The meter outlives a connection: a host that reconnects, or a solo
        client that starts a new session, finds it as it left it."""
        slack, burst = self.config.audio_rate_slack, self.config.audio_burst_s
        if not slack:
            return
        seconds = pcm_bytes / (2 * session.sample_rate)
        if seconds > burst:
            raise self.refuse(
                "audio_rate",
                TOO_MANY,
                f"one message of {seconds:.1f} s of audio, more than the {burst:g} s "
                "a host may send at once; send audio in real time, in small pieces",
            )
        owner = self._owners.get(session, f"session {session.id}")
        now = trio.current_time()
        wait = self.audio.take(owner, session.ended, seconds, now, began=began)
        if wait is not None:
            raise self.refuse(
                "audio_rate",
                TOO_MANY,
                f"audio faster than real time (at most {slack:g}x, after a "
                f"{burst:g} s burst); reconnect and send in real time",
                retry_after_s=wait,
            )

    def message_meter(self) -> MessageMeter | None:
        """A new connection's meter of messages other than audio (``control_rate``
        a second after a burst of ``control_burst``), or None when there is no limit.
        Check each message with ``meter_message``."""
        rate, burst = self.config.control_rate, self.config.control_burst
        if not rate or burst <= 0:
            return None
        return MessageMeter(rate=rate, burst=burst, now=trio.current_time())

    def meter_message(self, meter: MessageMeter | None) -> dict[str, Any] | None:
        """None when the connection may send this message; else the recoverable
        ``error`` (429, with ``retryAfter``) to answer it with instead, counted. Raises
        ``Refusal`` (429; close 1008) when ``control_burst`` messages in a row were
        refused: the client does not slow down when told."""
        if meter is None:
            return None
        now = trio.current_time()
        verdict = meter.take(now)
        if verdict == MessageMeter.ADMIT:
            return None
        rate, burst = self.config.control_rate, self.config.control_burst
        if verdict == MessageMeter.CLOSE:
            raise self.refuse(
                "control_rate",
                TOO_MANY,
                f"{burst} messages refused in a row for coming too fast; closing",
                retry_after_s=meter.retry_after(now),
            )
        self.count("control_rate")
        error = wire_error(
            f"too many messages (at most {rate:g} a second after {burst} at once); "
            "this one was ignored",
            TOO_MANY,
        )
        error["retryAfter"] = max(1, math.ceil(meter.retry_after(now)))
        return error

    def connection_slot(self) -> ConnectionSlot:
        return ConnectionSlot(self)


class ConnectionSlot:
    """One connection's place in its client's count of open connections.

    The client is known from the first request on; a proxy's pooled connection that
    then carries another client's request moves its place to that client. ``release``
    when the connection closes.
    """

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._key: str | None = None

    def claim(self, client: str) -> None:
        """Count this connection for ``client``; refuse (429) past
        ``max_connections_per_ip``."""
        key = limit_key(client)
        if key == self._key:
            return
        self.release()
        if not self._guard.connections.acquire(key):
            limit = self._guard.config.max_connections_per_ip
            raise self._guard.refuse(
                "connections_per_ip",
                TOO_MANY,
                f"at most {limit} open connections per address",
                close_code=TRY_AGAIN_LATER,
            )
        self._key = key

    def release(self) -> None:
        if self._key is not None:
            self._guard.connections.release(self._key)
            self._key = None
