"""The session store and event bus: what nodes of one deployment share.

Two implementations: ``MemoryStore`` (one process; the default) and ``RedisStore``
(``BABEL_REDIS_URL``; any number of processes and machines). A registry whose store is
``shared`` serves coded sessions through ``ClusterSession``; otherwise every session
lives in its process as a plain ``Session``, exactly as without a store.

What a shared store holds for a session:

- its record (id, code, host token, source language, creation time), so any node can
  answer ``/session/join`` and ``/session/{code}/info`` and accept its host;
- which node owns it (runs its pipeline, because its host is connected there), as a
  claim the owner renews; an unrenewed claim means a dead node;
- each node's listener counts per language, whose union the owner translates into;
- a bus: every caption in every language, published once by the owner, and control
  events (ended, audience changed, new owner, languages in force);
- a bounded log of finals per language, for late joiners and ``lastSeq`` resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from babel_actors.errors import BabelError


class StoreUnavailable(BabelError):
    """The shared store cannot be reached right now; callers serve what they can."""


@attrs.frozen
class SessionRecord:
    """What every node needs to know of a session to serve it."""

    id: str
    """The session id (a UUID)."""
    code: str
    """The 6-character code listeners join with."""
    host_token: str
    """The secret a host connection must carry."""
    source_lang: str
    """The language the host speaks, as created."""
    created_ms: int
    """Unix milliseconds at creation."""


@attrs.frozen
class SessionState:
    """A session's cluster-wide state, as a node's periodic check reads it."""

    owner: str
    """The node that runs the pipeline; empty when no live node claims it."""
    host_seen: bool
    """Whether a host ever connected (to any node)."""
    away_since_ms: int
    """Unix ms since when no node owns the session while a host was seen; 0 otherwise."""
    ended: str
    """The end reason once ended; empty while live."""


@attrs.frozen
class BusCaption:
    """A caption the owner published: one segment in one language."""

    origin: str
    """The publishing node."""
    lang: str
    """The caption's language."""
    seq: int
    """The segment's seqId."""
    is_final: bool
    """Whether the segment is a final (also kept in the log)."""
    payload: bytes
    """The ``translation`` message, JSON, as every listener of ``lang`` reads it."""


@attrs.frozen
class BusControl:
    """A control event of one session."""

    origin: str
    """The publishing node."""
    kind: str
    """``ended``, ``audience``, ``owner``, ``languages`` or ``notice``."""
    data: Mapping[str, Any]
    """The event's fields."""


@attrs.frozen
class BusResync:
    """The node's subscription was re-established: events may have been missed."""


BusEvent = BusCaption | BusControl | BusResync
"""What a subscribed session receives, in publication order."""


@attrs.frozen
class StoredFinal:
    """One final in one language, as the log keeps it."""

    seq: int
    """The segment's seqId."""
    lang: str
    """The caption's language."""
    payload: bytes
    """The ``translation`` message, JSON."""
    live: bool
    """True when published live by the owner; False for a joiner's catch-up rendering."""


class SessionStore(Protocol):
    """Records, ownership, audiences, the bus and the log of finals.

    Every async method raises ``StoreUnavailable`` when the store cannot be reached;
    ``publish_*`` never raise and never block: they queue, in order, and the store
    delivers them when it can (finals are kept, partials may be dropped).
    """

    name: str
    """``memory`` or ``redis``."""
    node: str
    """This process's name in the cluster."""
    shared: bool
    """Whether other processes see these sessions (then sessions are ``ClusterSession``)."""

    def health(self) -> dict[str, Any]:
        """What ``/health`` reports under ``store``."""
        ...

    async def create(self, record: SessionRecord) -> bool:
        """Record a new session; False when its code is taken."""
        ...

    async def load(self, session_id: str) -> SessionRecord | None:
        """The live session ``session_id``; None when unknown or ended."""
        ...

    async def resolve(self, code: str) -> str | None:
        """The id of the live session with ``code`` (upper case); None when none."""
        ...

    async def end(self, session_id: str, reason: str, message: str) -> None:
        """End the session everywhere: the first call wins and is published."""
        ...

    def end_soon(self, session_id: str, reason: str, message: str) -> None:
        """``end``, queued after the events published before it."""
        ...

    async def claim(self, session_id: str) -> int:
        """Make this node the owner; returns the highest seqId used so far (0: none),
        or -1 when the session has ended."""
        ...

    async def tick(
        self,
        session_id: str,
        *,
        owner: bool,
        record: SessionRecord,
        known_seq: int,
        counts: Mapping[str, int],
    ) -> SessionState:
        """Renew this node's claims (ownership when ``owner``; its ``counts``) and read
        the session's state. Also re-asserts ``record`` and ``known_seq`` (the highest
        seqId this node saw), so a store that lost its data learns them again. Called
        every third of the ownership TTL by each node that serves the session."""
        ...

    async def set_audience(self, session_id: str, counts: Mapping[str, int]) -> None:
        """This node's listeners per language (0: wanted, not yet reading); publishes
        an ``audience`` event."""
        ...

    async def audience(self, session_id: str) -> dict[str, dict[str, int]]:
        """Listeners per language (0: only wanted), per live node."""
        ...

    def publish_caption(
        self, session_id: str, lang: str, seq: int, is_final: bool, payload: bytes
    ) -> None:
        """Queue a caption for every node; a final also goes into the log."""
        ...

    def publish_control(self, session_id: str, kind: str, data: Mapping[str, Any]) -> None:
        """Queue a control event for every node, after the captions queued before it."""
        ...

    async def add_rendering(self, session_id: str, lang: str, seq: int, payload: bytes) -> None:
        """Keep a catch-up rendering in the log (not published)."""
        ...

    async def finals(self, session_id: str, *, after: int, limit: int) -> list[StoredFinal]:
        """Logged finals with seqId above ``after`` (those of the last ``limit`` seqIds),
        every language, oldest seqId first."""
        ...

    async def subscribe(self, session_id: str, handler: Callable[[BusEvent], None]) -> None:
        """Deliver the session's events to ``handler`` (synchronously, in order) from now
        on; returns once the subscription is in force."""
        ...

    def unsubscribe(self, session_id: str) -> None:
        """Stop delivering the session's events."""
        ...
