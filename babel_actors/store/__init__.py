"""Where sessions live: this process (``MemoryStore``) or Redis (``RedisStore``, which
needs the ``redis`` extra and is imported only when ``redis_url`` asks for it)."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from babel_actors.config import Config
from babel_actors.extras import require_extra
from babel_actors.store.base import (
    BusCaption,
    BusControl,
    BusEvent,
    BusResync,
    SessionRecord,
    SessionState,
    SessionStore,
    StoredFinal,
    StoreUnavailable,
)
from babel_actors.store.memory import MemoryStore

__all__ = [
    "BusCaption",
    "BusControl",
    "BusEvent",
    "BusResync",
    "MemoryStore",
    "SessionRecord",
    "SessionState",
    "SessionStore",
    "StoreUnavailable",
    "StoredFinal",
    "node_name",
    "open_store",
]


def node_name(config: Config) -> str:
    """``config.node_id``, or host name and process id."""
    return config.node_id or f"{socket.gethostname()}-{os.getpid()}"


@asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[SessionStore]:
    """The store ``config`` asks for: Redis when ``redis_url`` is set, else memory."""
    if not config.redis_url:
        yield MemoryStore(node=node_name(config))
        return
    require_extra("redis", "a Redis store (BABEL_REDIS_URL)")
    from babel_actors.store.redis import open_redis_store

    async with open_redis_store(config, node_name(config)) as store:
        yield store
