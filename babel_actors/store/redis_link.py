"""Whether Redis is reachable, as the Redis store sees it.

Every call to Redis runs inside ``RedisLink.boundary``, which records each outage and
each return, so ``health()`` can say since when Redis has been unreachable;
``probe_loop`` keeps that current on an idle node.

Backpressure: none; nothing is queued here.
Cancellation: ``probe_loop`` runs until cancelled, in the store's nursery.
Error handling: coredis errors, socket errors and timeouts (grouped or not) become
``StoreUnavailable``; anything else propagates unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import coredis
import trio
from coredis.exceptions import RedisError

from babel_actors.clock import now_ms
from babel_actors.config import Config
from babel_actors.store.base import StoreUnavailable

log = logging.getLogger(__name__)

UNREACHABLE = (RedisError, TimeoutError, OSError, trio.TooSlowError)
"""What Redis being away (or too slow) looks like through coredis."""


def redacted(url: str) -> str:
    """``url`` without its password, for logs and ``/health``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first exception that is not a group, for the outage's report."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


class RedisLink:
    """The store's view of its connection: up or down, since when, and why."""

    def __init__(self, config: Config, client: coredis.Redis[bytes]) -> None:
        self.config = config
        self._client = client
        self.connected = False
        self.last_error = "not connected yet"
        self.down_since_ms = now_ms()

    def unavailable(self) -> StoreUnavailable:
        return StoreUnavailable(f"Redis is unreachable: {self.last_error}")

    @contextmanager
    def boundary(self) -> Iterator[None]:
        """Map coredis's errors and our own timeout to ``StoreUnavailable``."""
        try:
            with trio.fail_after(self.config.redis_timeout_s * 2):
                yield
        except UNREACHABLE as exc:
            self.down(exc)
            raise self.unavailable() from None
        except BaseExceptionGroup as group:
            # coredis runs connections in task groups, whose errors arrive grouped.
            unreachable, other = group.split(UNREACHABLE)
            if other is not None or unreachable is None:
                raise
            self.down(first_leaf(unreachable))
            raise self.unavailable() from None
        if not self.connected:
            log.info("Redis reachable at %s", redacted(self.config.redis_url))
            self.connected = True

    def down(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        if self.connected:
            log.warning("Redis unreachable: %s", self.last_error)
            self.connected = False
            self.down_since_ms = now_ms()

    async def probe_loop(self) -> None:
        """PING Redis now and then, so ``health()`` is current even on an idle node:
        every ``redis_retry_s`` while it is unreachable, every heartbeat while not."""
        while True:
            try:
                with self.boundary():
                    await self._client.ping()
            except StoreUnavailable:
                pass
            await trio.sleep(
                self.config.redis_owner_ttl_s / 3 if self.connected else self.config.redis_retry_s
            )
