"""The Redis store's bus: the format of its messages, and one pub/sub connection for
every session channel this node follows.

A message is header fields joined by ``SEP``: a caption is ``C, node, lang, seq,
final (1/0), payload``, a control event ``K, node, kind, JSON body``.

Backpressure: none; each message is handed to its channel's handler as it is read,
so handlers must not block.
Cancellation: ``run`` runs until cancelled, in the store's nursery, where the
(un)subscriptions it cannot await are started too.
Error handling: ``subscribe`` raises ``StoreUnavailable`` while Redis is unreachable;
``run`` reports outages to the ``RedisLink`` and reconnects every ``redis_retry_s``.
Every resubscription reaches the channel's handler as ``BusResync``, since messages
may have been missed meanwhile.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import coredis
import trio
from coredis.exceptions import RedisError
from coredis.retry import ExponentialBackoffRetryPolicy

from babel_actors.config import Config
from babel_actors.store.base import BusCaption, BusControl, BusEvent, BusResync, StoreUnavailable
from babel_actors.store.redis_link import UNREACHABLE, RedisLink, first_leaf

log = logging.getLogger(__name__)

SEP = b"\x1f"
"""Separates a bus message's header fields; JSON escapes it, so payloads never hold it."""


def caption_header(node: str, lang: str, seq: int, is_final: bool) -> bytes:
    """A caption's header, to which the publishing script appends the payload."""
    return SEP.join([b"C", node.encode(), lang.encode(), str(seq).encode(),
                     b"1" if is_final else b"0", b""])


def control_message(node: str, kind: str, data: Mapping[str, Any]) -> bytes:
    body = json.dumps(dict(data), separators=(",", ":")).encode()
    return SEP.join([b"K", node.encode(), kind.encode(), body])


def parse(data: Any) -> BusEvent | None:
    """The event in a bus message, or None for what is not one."""
    if not isinstance(data, bytes):
        return None
    if data.startswith(b"C" + SEP):
        _, origin, lang, seq, final, payload = data.split(SEP, 5)
        return BusCaption(origin.decode(), lang.decode(), int(seq), final == b"1", payload)
    if data.startswith(b"K" + SEP):
        _, origin, kind, body = data.split(SEP, 3)
        return BusControl(origin.decode(), kind.decode(), json.loads(body))
    return None


class RedisBus:
    """The channels this node follows, each with its handler."""

    def __init__(
        self, config: Config, client: coredis.Redis[bytes], link: RedisLink,
        nursery: trio.Nursery,
    ) -> None:
        self.config = config
        self._client = client
        self._link = link
        self._nursery = nursery
        self._handlers: dict[bytes, Callable[[BusEvent], None]] = {}
        self._awaiting: set[bytes] = set()
        self._pubsub: Any = None

    @property
    def followed(self) -> int:
        return len(self._handlers)

    async def subscribe(self, channel: bytes, handler: Callable[[BusEvent], None]) -> None:
        self._handlers[channel] = handler
        pubsub = self._pubsub
        if pubsub is None:
            raise self._link.unavailable()
        self._awaiting.add(channel)
        try:
            with self._link.boundary():
                await pubsub.subscribe(channel)
        except StoreUnavailable:
            self._awaiting.discard(channel)
            raise

    def unsubscribe(self, channel: bytes) -> None:
        if self._handlers.pop(channel, None) is not None and self._pubsub is not None:
            self._nursery.start_soon(self._unsubscribe, self._pubsub, channel)

    def reconcile(self, channel: bytes) -> None:
        """Subscribe again to a followed channel whose subscription failed while Redis
        was unreachable; the confirmation reaches it as ``BusResync``."""
        pubsub = self._pubsub
        if (
            pubsub is not None
            and channel in self._handlers
            and channel not in pubsub.channels
            and channel not in self._awaiting
        ):
            self._nursery.start_soon(self._resubscribe, pubsub, channel)

    async def run(self) -> None:
        """Read the pub/sub connection. coredis reconnects and resubscribes by itself;
        each resubscription reaches the channel's handler as ``BusResync``."""
        policy = ExponentialBackoffRetryPolicy(
            (RedisError, TimeoutError, OSError),
            retries=None,
            base_delay=self.config.redis_retry_s / 4,
            max_delay=self.config.redis_retry_s,
            jitter=False,
        )
        while True:
            try:
                async with self._client.pubsub(retry_policy=policy) as pubsub:
                    self._pubsub = pubsub
                    for channel in list(self._handlers):
                        self._nursery.start_soon(self._resubscribe, pubsub, channel)
                    while True:
                        message = await pubsub.get_message()
                        if message is not None:
                            self._dispatch(message)
            except UNREACHABLE as exc:
                self._link.down(exc)
            except BaseExceptionGroup as group:
                unreachable, other = group.split(UNREACHABLE)
                if other is not None or unreachable is None:
                    raise
                self._link.down(first_leaf(unreachable))
            finally:
                self._pubsub = None
            await trio.sleep(self.config.redis_retry_s)

    async def _resubscribe(self, pubsub: Any, channel: bytes) -> None:
        try:
            with self._link.boundary():
                await pubsub.subscribe(channel)
        except StoreUnavailable:
            log.warning("could not resubscribe to %s", channel.decode())

    async def _unsubscribe(self, pubsub: Any, channel: bytes) -> None:
        try:
            with self._link.boundary():
                await pubsub.unsubscribe(channel)
        except StoreUnavailable:
            return

    def _dispatch(self, message: Mapping[str, Any]) -> None:
        channel = message.get("channel")
        if not isinstance(channel, bytes) or channel not in self._handlers:
            return
        handler = self._handlers[channel]
        if message["type"] == "subscribe":
            if channel in self._awaiting:
                self._awaiting.discard(channel)
            else:
                handler(BusResync())
            return
        if message["type"] != "message":
            return
        event = parse(message["data"])
        if event is not None:
            handler(event)
