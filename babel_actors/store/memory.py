"""The in-process store: the default, for one server process.

A registry on a ``MemoryStore`` that is not ``shared`` runs every session as a plain
``Session``, as babel-actors always has; the store only answers ``/health``. Siblings
made with ``sibling(node)`` share one state and are ``shared``: several registries in
one process then behave as nodes of a cluster, which is how the cluster logic is
tested without Redis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from babel_actors.clock import now_ms
from babel_actors.store.base import (
    BusCaption,
    BusControl,
    BusEvent,
    SessionRecord,
    SessionState,
    StoredFinal,
)


@attrs.define
class _Entry:
    record: SessionRecord
    ended: str = ""
    seq: int = 0
    host_seen: bool = False
    away_since_ms: int = 0
    owner: str = ""
    owner_until: float = 0.0
    audiences: dict[str, tuple[float, dict[str, int]]] = attrs.field(factory=dict)
    log: deque[StoredFinal] = attrs.field(factory=deque)


@attrs.define
class _State:
    sessions: dict[str, _Entry] = attrs.field(factory=dict)
    codes: dict[str, str] = attrs.field(factory=dict)
    handlers: dict[tuple[str, str], Callable[[BusEvent], None]] = attrs.field(factory=dict)
    pending: deque[tuple[str, BusEvent]] = attrs.field(factory=deque)
    delivering: bool = False


class MemoryStore:
    """Sessions in this process's memory. See the module docstring."""

    name = "memory"

    def __init__(
        self,
        *,
        node: str = "local",
        shared: bool = False,
        owner_ttl_s: float = 6.0,
        log_size: int = 5000,
        state: _State | None = None,
    ) -> None:
        self.node = node
        self.shared = shared
        self.owner_ttl_s = owner_ttl_s
        self.log_size = log_size
        self._state = state or _State()

    def sibling(self, node: str) -> MemoryStore:
        """Another node's view of the same sessions; both become ``shared``."""
        self.shared = True
        return MemoryStore(
            node=node,
            shared=True,
            owner_ttl_s=self.owner_ttl_s,
            log_size=self.log_size,
            state=self._state,
        )

    def health(self) -> dict[str, Any]:
        return {"backend": self.name, "node": self.node, "connected": True}

    async def create(self, record: SessionRecord) -> bool:
        await trio.lowlevel.checkpoint()
        if record.code in self._state.codes:
            return False
        self._state.codes[record.code] = record.id
        self._state.sessions[record.id] = _Entry(record)
        return True

    async def load(self, session_id: str) -> SessionRecord | None:
        await trio.lowlevel.checkpoint()
        entry = self._state.sessions.get(session_id)
        return None if entry is None or entry.ended else entry.record

    async def resolve(self, code: str) -> str | None:
        await trio.lowlevel.checkpoint()
        return self._state.codes.get(code)

    async def end(self, session_id: str, reason: str, message: str) -> None:
        await trio.lowlevel.checkpoint()
        self.end_soon(session_id, reason, message)

    def end_soon(self, session_id: str, reason: str, message: str) -> None:
        entry = self._state.sessions.get(session_id)
        if entry is None or entry.ended:
            return
        entry.ended = reason
        entry.owner = ""
        self._state.codes.pop(entry.record.code, None)
        self.publish_control(session_id, "ended", {"reason": reason, "message": message})

    async def claim(self, session_id: str) -> int:
        await trio.lowlevel.checkpoint()
        entry = self._entry(session_id)
        if entry.ended:
            return -1
        entry.owner = self.node
        entry.owner_until = trio.current_time() + self.owner_ttl_s
        entry.host_seen = True
        entry.away_since_ms = 0
        return entry.seq

    async def tick(
        self,
        session_id: str,
        *,
        owner: bool,
        record: SessionRecord,
        known_seq: int,
        counts: Mapping[str, int],
    ) -> SessionState:
        await trio.lowlevel.checkpoint()
        entry = self._entry(session_id)
        now = trio.current_time()
        entry.seq = max(entry.seq, known_seq)
        if entry.ended:
            return SessionState("", False, 0, entry.ended)
        if entry.owner and entry.owner_until <= now:
            entry.owner = ""
        if owner and entry.owner in (self.node, ""):
            entry.owner = self.node
            entry.owner_until = now + self.owner_ttl_s
            entry.host_seen = True
            entry.away_since_ms = 0
        entry.audiences[self.node] = (now + self.owner_ttl_s, dict(counts))
        if not entry.owner and entry.host_seen and not entry.away_since_ms:
            entry.away_since_ms = now_ms()
        return SessionState(entry.owner, entry.host_seen, entry.away_since_ms, entry.ended)

    async def set_audience(self, session_id: str, counts: Mapping[str, int]) -> None:
        await trio.lowlevel.checkpoint()
        entry = self._entry(session_id)
        entry.audiences[self.node] = (trio.current_time() + self.owner_ttl_s, dict(counts))
        self.publish_control(session_id, "audience", {})

    async def audience(self, session_id: str) -> dict[str, dict[str, int]]:
        await trio.lowlevel.checkpoint()
        entry = self._entry(session_id)
        now = trio.current_time()
        for node, (until, _) in list(entry.audiences.items()):
            if until <= now:
                del entry.audiences[node]
        return {node: dict(counts) for node, (_, counts) in entry.audiences.items()}

    def publish_caption(
        self, session_id: str, lang: str, seq: int, is_final: bool, payload: bytes
    ) -> None:
        entry = self._state.sessions.get(session_id)
        if entry is None:
            return
        entry.seq = max(entry.seq, seq)
        if is_final:
            entry.log.append(StoredFinal(seq, lang, payload, True))
            while len(entry.log) > self.log_size:
                entry.log.popleft()
        self._deliver(session_id, BusCaption(self.node, lang, seq, is_final, payload))

    def publish_control(self, session_id: str, kind: str, data: Mapping[str, Any]) -> None:
        self._deliver(session_id, BusControl(self.node, kind, dict(data)))

    async def add_rendering(self, session_id: str, lang: str, seq: int, payload: bytes) -> None:
        await trio.lowlevel.checkpoint()
        entry = self._entry(session_id)
        entry.log.append(StoredFinal(seq, lang, payload, False))
        while len(entry.log) > self.log_size:
            entry.log.popleft()

    async def finals(self, session_id: str, *, after: int, limit: int) -> list[StoredFinal]:
        await trio.lowlevel.checkpoint()
        entry = self._state.sessions.get(session_id)
        if entry is None or limit <= 0:
            return []
        found = [f for f in entry.log if f.seq > after]
        keep = set(sorted({f.seq for f in found})[-limit:])
        return sorted((f for f in found if f.seq in keep), key=lambda f: f.seq)

    async def subscribe(self, session_id: str, handler: Callable[[BusEvent], None]) -> None:
        await trio.lowlevel.checkpoint()
        self._state.handlers[(self.node, session_id)] = handler

    def unsubscribe(self, session_id: str) -> None:
        self._state.handlers.pop((self.node, session_id), None)

    def _entry(self, session_id: str) -> _Entry:
        entry = self._state.sessions.get(session_id)
        if entry is None:
            raise KeyError(session_id)
        return entry

    def _deliver(self, session_id: str, event: BusEvent) -> None:
        """Hand ``event`` to every subscribed node; an event published by a handler
        waits until the current one has reached everyone, so order holds."""
        state = self._state
        state.pending.append((session_id, event))
        if state.delivering:
            return
        state.delivering = True
        try:
            while state.pending:
                sid, queued = state.pending.popleft()
                for (_, subscribed), handler in list(state.handlers.items()):
                    if subscribed == sid:
                        handler(queued)
        finally:
            state.delivering = False
