"""The Redis store: sessions shared by every node of a deployment (``BABEL_REDIS_URL``).

Keys of session S (``{S}`` is a hash tag: one slot per session):

- ``babel:{S}:meta``: hash: id, code, token, source, created, seq (highest seqId
  published), hostSeen, awaySince (ms since no node owns it), ended, endMessage
- ``babel:{S}:owner``: the owning node's name, with a TTL its heartbeat renews
- ``babel:{S}:aud:NODE``: NODE's listeners per language (0: wanted), with a TTL;
  ``babel:{S}:auds``: the set of such nodes
- ``babel:{S}:log``: stream of finals, one entry per (final, language): seq, lang,
  live, msg; trimmed to ``redis_stream_maxlen``
- ``babel:code:CODE``: the id of the live session with that code
- channel ``babel:{S}:bus``: captions and control events, each published once

Every key expires ``redis_retention_s`` after its last write. Each write that must be
atomic with a publication is one Lua script, so a final is in the log exactly when
(and before) it is on the bus. Standalone Redis 7+, Valkey, or ElastiCache with
cluster mode disabled: two scripts name keys they were not given.

Backpressure: ``publish_*`` append to an outbox drained by one task in pipelined
batches; while Redis is unreachable the outbox keeps up to ``redis_outbox`` finals and
controls (partials are dropped) and is flushed, in order, when Redis returns.
Cancellation: the store's tasks run in the nursery of ``open_redis_store``.
Error handling: coredis errors and timeouts become ``StoreUnavailable`` at the
boundary of ``redis_link``, and ``health()`` says since when Redis has been
unreachable. The bus's subscriptions and message format are in ``redis_bus``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import coredis
import trio
from coredis.tokens import PureToken

from babel_actors.clock import now_ms
from babel_actors.config import Config
from babel_actors.store import redis_scripts as scripts
from babel_actors.store.base import (
    BusEvent,
    SessionRecord,
    SessionState,
    StoredFinal,
    StoreUnavailable,
)
from babel_actors.store.redis_bus import RedisBus, caption_header, control_message
from babel_actors.store.redis_link import RedisLink, redacted

log = logging.getLogger(__name__)

_PAGE = 256
_BATCH = 128

def _key(session_id: str, part: str) -> str:
    return f"babel:{{{session_id}}}:{part}"


def _code_key(code: str) -> str:
    return f"babel:code:{code}"


@asynccontextmanager
async def open_redis_store(config: Config, node: str) -> AsyncIterator[RedisStore]:
    """A ``RedisStore`` with its tasks running for the duration of the block.

    Redis need not be reachable at start: the store reports it in ``health()`` and
    connects when it can.
    """
    # coredis logs every reconnection attempt at INFO; the store reports outages itself.
    logging.getLogger("coredis").setLevel(logging.WARNING)
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        config.redis_url,
        decode_responses=False,
        connect_timeout=config.redis_timeout_s,
        stream_timeout=config.redis_timeout_s,
    )
    async with client, trio.open_nursery() as nursery:
        store = RedisStore(config, node, client, nursery)
        nursery.start_soon(store._publish_loop)
        nursery.start_soon(store._bus.run)
        nursery.start_soon(store._link.probe_loop)
        try:
            yield store
        finally:
            # What was published last (an owner's last finals, an end) gets a moment
            # to reach Redis before the process goes.
            with trio.move_on_after(config.redis_timeout_s) as flushing:
                flushing.shield = True
                await store.flushed()
            nursery.cancel_scope.cancel()


class RedisStore:
    """The ``SessionStore`` on Redis. See the module docstring."""

    name = "redis"
    shared = True

    def __init__(
        self, config: Config, node: str, client: coredis.Redis[bytes], nursery: trio.Nursery
    ) -> None:
        self.config = config
        self.node = node
        self._client = client
        self._link = RedisLink(config, client)
        self._bus = RedisBus(config, client, self._link, nursery)
        self._ttl_ms = int(config.redis_owner_ttl_s * 1000)
        self._retention_ms = int(config.redis_retention_s * 1000)
        self._publish = client.register_script(scripts.PUBLISH)
        self._end = client.register_script(scripts.END)
        self._claim = client.register_script(scripts.CLAIM)
        self._tick = client.register_script(scripts.TICK)
        self._set_audience = client.register_script(scripts.SET_AUDIENCE)
        self._audience = client.register_script(scripts.AUDIENCE)
        self._scripts = {"publish": self._publish, "end": self._end}
        self._outbox: deque[tuple[bool, str, list[str], list[str | bytes | int]]] = deque()
        """Queued writes: (droppable, script or "" to publish, keys, args)."""
        self._outbox_ready = trio.Event()
        self._drained = trio.Event()
        self.dropped_partials = 0
        self.dropped_finals = 0

    def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "backend": self.name,
            "node": self.node,
            "url": redacted(self.config.redis_url),
            "connected": self._link.connected,
            "outbox": len(self._outbox),
            "subscriptions": self._bus.followed,
        }
        if not self._link.connected:
            report["error"] = self._link.last_error
            report["downSinceMs"] = self._link.down_since_ms
        return report

    # --- records -----------------------------------------------------------------

    async def create(self, record: SessionRecord) -> bool:
        with self._link.boundary():
            taken = not await self._client.set(
                _code_key(record.code), record.id.encode(), px=self._retention_ms,
                condition=PureToken.NX,
            )
            if taken:
                return False
            meta = _key(record.id, "meta")
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(
                    meta,
                    {
                        "id": record.id,
                        "code": record.code,
                        "token": record.host_token,
                        "source": record.source_lang,
                        "created": str(record.created_ms),
                    },
                )
                pipe.pexpire(meta, self._retention_ms)
        return True

    async def load(self, session_id: str) -> SessionRecord | None:
        with self._link.boundary():
            fields = await self._client.hgetall(_key(session_id, "meta"))
        meta = {k.decode(): v.decode() for k, v in fields.items()}
        if "ended" in meta or "code" not in meta:
            return None
        return SessionRecord(
            meta["id"], meta["code"], meta["token"], meta["source"], int(meta["created"])
        )

    async def resolve(self, code: str) -> str | None:
        with self._link.boundary():
            found = await self._client.get(_code_key(code))
        return found.decode() if found else None

    async def end(self, session_id: str, reason: str, message: str) -> None:
        keys, args = self._end_call(session_id, reason, message)
        with self._link.boundary():
            await self._end(keys=keys, args=args)

    def end_soon(self, session_id: str, reason: str, message: str) -> None:
        keys, args = self._end_call(session_id, reason, message)
        self._enqueue(False, "end", keys, args)

    def _end_call(
        self, session_id: str, reason: str, message: str
    ) -> tuple[list[str], list[str | bytes | int]]:
        event = control_message(self.node, "ended", {"reason": reason, "message": message})
        return (
            [_key(session_id, "meta"), _key(session_id, "owner")],
            [reason, message, _key(session_id, "bus"), event, session_id, self._retention_ms],
        )

    # --- ownership and audiences -------------------------------------------------

    async def claim(self, session_id: str) -> int:
        with self._link.boundary():
            seq: Any = await self._claim(
                keys=[_key(session_id, "meta"), _key(session_id, "owner")],
                args=[self.node, self._ttl_ms, self._retention_ms],
            )
        return int(seq)  # type: ignore[arg-type]

    async def tick(
        self,
        session_id: str,
        *,
        owner: bool,
        record: SessionRecord,
        known_seq: int,
        counts: Mapping[str, int],
    ) -> SessionState:
        args: list[str | int] = [
            self.node, self._ttl_ms, "1" if owner else "0", now_ms(), self._retention_ms,
            record.id, record.code, record.host_token, record.source_lang, record.created_ms,
            known_seq,
        ]
        for language, count in counts.items():
            args += [language, count]
        self._bus.reconcile(_key(session_id, "bus").encode())
        with self._link.boundary():
            reply: Any = await self._tick(
                keys=[_key(session_id, "meta"), _key(session_id, "owner"),
                      _key(session_id, f"aud:{self.node}"), _key(session_id, "auds"),
                      _code_key(record.code)],
                args=args,
            )
        node, seen, away, ended = (_text(item) for item in reply)  # type: ignore[union-attr]
        return SessionState(node, seen == "1", int(away or 0), ended)

    async def set_audience(self, session_id: str, counts: Mapping[str, int]) -> None:
        args: list[str | int | bytes] = [
            self.node, self._ttl_ms, _key(session_id, "bus"),
            control_message(self.node, "audience", {}), self._retention_ms,
        ]
        for language, count in counts.items():
            args += [language, count]
        with self._link.boundary():
            await self._set_audience(
                keys=[_key(session_id, f"aud:{self.node}"), _key(session_id, "auds")], args=args
            )

    async def audience(self, session_id: str) -> dict[str, dict[str, int]]:
        with self._link.boundary():
            flat: Any = await self._audience(
                keys=[_key(session_id, "auds")], args=[_key(session_id, "aud:")]
            )
        items = [_text(item) for item in flat]  # type: ignore[union-attr]
        nodes: dict[str, dict[str, int]] = {}
        for i in range(0, len(items), 3):
            nodes.setdefault(items[i], {})[items[i + 1]] = int(items[i + 2])
        return nodes

    # --- the bus and the log -------------------------------------------------------

    def publish_caption(
        self, session_id: str, lang: str, seq: int, is_final: bool, payload: bytes
    ) -> None:
        header = caption_header(self.node, lang, seq, is_final)
        self._enqueue(
            not is_final,
            "publish",
            [_key(session_id, "log"), _key(session_id, "meta")],
            [_key(session_id, "bus"), header, seq, lang, "1" if is_final else "0", payload,
             self.config.redis_stream_maxlen, self._retention_ms],
        )

    def publish_control(self, session_id: str, kind: str, data: Mapping[str, Any]) -> None:
        # The same queue as captions: an event stays behind the captions before it.
        message = control_message(self.node, kind, data)
        self._enqueue(False, "", [], [_key(session_id, "bus"), message])

    async def add_rendering(self, session_id: str, lang: str, seq: int, payload: bytes) -> None:
        with self._link.boundary():
            await self._client.xadd(
                _key(session_id, "log"),
                {"seq": str(seq), "lang": lang, "live": "0", "msg": payload},
                trim_strategy=PureToken.MAXLEN,
                threshold=self.config.redis_stream_maxlen,
                trim_operator=PureToken.APPROXIMATELY,
            )

    async def finals(self, session_id: str, *, after: int, limit: int) -> list[StoredFinal]:
        """Reads the log newest first, a page at a time, until a whole page lies at or
        below what is wanted (lanes of different languages append out of seq order)."""
        if limit <= 0:
            return []
        found: list[StoredFinal] = []
        end = "+"
        while True:
            with self._link.boundary():
                page = await self._client.xrevrange(
                    _key(session_id, "log"), end=end, start="-", count=_PAGE
                )
            if not page:
                break
            for entry in page:
                fields = {_text(k): _bytes(v) for k, v in entry.field_values.items()}
                seq = int(fields["seq"])
                if seq > after:
                    found.append(
                        StoredFinal(seq, fields["lang"].decode(), fields["msg"],
                                    fields.get("live", b"1") == b"1")
                    )
            seqs = sorted({f.seq for f in found})
            floor = max(after, seqs[-limit] if len(seqs) >= limit else after)
            if len(page) < _PAGE or all(
                int(_text(e.field_values[b"seq"])) <= floor for e in page  # type: ignore[index]
            ):
                break
            end = "(" + _text(page[-1].identifier)
        keep = set(sorted({f.seq for f in found})[-limit:])
        return sorted((f for f in found if f.seq in keep), key=lambda f: f.seq)

    async def subscribe(self, session_id: str, handler: Callable[[BusEvent], None]) -> None:
        await self._bus.subscribe(_key(session_id, "bus").encode(), handler)

    def unsubscribe(self, session_id: str) -> None:
        self._bus.unsubscribe(_key(session_id, "bus").encode())

    async def flushed(self) -> None:
        """Wait until the outbox is empty."""
        while self._outbox:
            self._drained = trio.Event()
            await self._drained.wait()

    # --- tasks ---------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        """Drain the outbox in pipelined batches, in order; on failure wait and retry
        the same batch, so nothing is reordered."""
        while True:
            if not self._outbox:
                await self._outbox_ready.wait()
                self._outbox_ready = trio.Event()
                continue
            batch = [self._outbox[i] for i in range(min(_BATCH, len(self._outbox)))]
            try:
                with self._link.boundary():
                    async with self._client.pipeline(transaction=False) as pipe:
                        for _, script, keys, args in batch:
                            if script:
                                self._scripts[script](keys=keys, args=args, client=pipe)
                            else:
                                pipe.publish(args[0], args[1])  # type: ignore[arg-type]
            except StoreUnavailable:
                await trio.sleep(self.config.redis_retry_s)
                continue
            for _ in batch:
                self._outbox.popleft()
            if not self._outbox:
                self._drained.set()

    # --- plumbing ------------------------------------------------------------------

    def _enqueue(
        self, droppable: bool, script: str, keys: list[str], args: list[str | bytes | int]
    ) -> None:
        outbox = self._outbox
        if droppable and (not self._link.connected or len(outbox) >= self.config.redis_outbox):
            self.dropped_partials += 1
            return
        outbox.append((droppable, script, keys, args))
        while len(outbox) > self.config.redis_outbox:
            dropped = outbox.popleft()
            if dropped[0]:
                self.dropped_partials += 1
            else:
                self.dropped_finals += 1
                if self.dropped_finals == 1 or self.dropped_finals % 1000 == 0:
                    log.warning("Redis outbox full: %d finals dropped", self.dropped_finals)
        self._outbox_ready.set()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
