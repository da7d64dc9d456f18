"""The bus-reading side of a shared session, as every node that serves it runs it.

Captions from the owner go to this node's room (``Room.deliver``), one frame per
caption, no per-listener work across nodes; each final is recorded in the history in
the same step, and delivered once per language however often it arrives. The node
keeps its listener counts per language in the store and reads every other node's after
each ``audience`` event, so that the owner knows what to translate into and the host's
``session_stats`` count every node's listeners. Control events (the end, a new owner,
the owner's languages, a pipeline error, a new source language) reach the session here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from babel_actors.store.base import BusCaption, BusControl, BusEvent, StoreUnavailable
from babel_actors.wire.server import Rendered, rendered_from_payload

if TYPE_CHECKING:
    from babel_actors.cluster.session import ClusterSession

log = logging.getLogger(__name__)


class Follower:
    """What one ``ClusterSession`` reads from the bus and the store, and its counts.

    Backpressure: none of its own: ``deliver`` hands a caption to members that never
    block; the counts are written and read by one task each, coalesced (the latest
    change wins), so a slow store delays them and queues nothing.
    Cancellation: its tasks (``push_counts``, ``pull_counts``, a repair) run in the
    session's nursery and stop with it.
    Error handling: a store that cannot be reached skips one write or read (the next
    change or heartbeat retries it), and the log reads as empty; a malformed caption
    on the bus is logged and dropped.
    """

    def __init__(self, session: ClusterSession) -> None:
        self.session = session
        self.delivered: dict[str, int] = {}
        """The highest final seqId delivered here, per language."""
        self.known_seq = 0
        """The highest seqId delivered here, final or partial."""
        self.remote: dict[str, int] = {}
        """Other nodes' listeners per language (0: wanted), as last read."""
        self._languages: frozenset[str] = frozenset()
        """What the owner last said it translates into."""
        self._languages_changed = trio.Event()
        self._push = trio.Event()
        self._pull = trio.Event()

    # --- captions ----------------------------------------------------------------

    def deliver(self, rendered: Rendered) -> int:
        """One caption to this node's room; a final is recorded first, in the same
        step. Returns how many members it reached."""
        session = self.session
        caption = rendered.caption
        segment = caption.segment
        seq = segment.seq_id
        if not segment.is_partial:
            session.history.add(rendered)
            language = caption.target_lang
            self.delivered[language] = max(self.delivered.get(language, 0), seq)
        self.known_seq = max(self.known_seq, seq)
        reached = session.room.deliver(rendered)
        session.metrics.delivered(caption, reached)
        return reached

    def on_event(self, nursery: trio.Nursery, event: BusEvent) -> None:
        """One event of the session's bus; a resync repairs in ``nursery``."""
        if isinstance(event, BusCaption):
            if event.origin == self.session.store.node:
                return
            if event.is_final and event.seq <= self.delivered.get(event.lang, 0):
                return
            rendered = rendered_from_payload(event.payload)
            if rendered is not None:
                self.deliver(rendered)
        elif isinstance(event, BusControl):
            self._on_control(event)
        else:
            self.session.tick_soon()
            self._push.set()
            self._pull.set()
            nursery.start_soon(self._repair)

    def _on_control(self, event: BusControl) -> None:
        session = self.session
        node, data = session.store.node, event.data
        if event.kind == "ended":
            reason = str(data.get("reason", "ended"))
            session.end_here(reason, str(data.get("message", "The session has ended.")))
        elif event.kind == "audience":
            self._pull.set()
        elif event.kind == "owner":
            owner = str(data.get("node", ""))
            session.owner = owner
            if owner != node and session.ownership.pipeline is not None:
                session.ownership.give_up(owner)
        elif event.kind == "languages":
            self._languages = frozenset(str(x) for x in data.get("languages", ()))
            self._languages_changed.set()
            self._languages_changed = trio.Event()
        elif event.kind == "notice" and event.origin != node:
            session.notify_listeners(dict(data))
        elif event.kind == "source" and event.origin != node:
            session.source_lang = str(data.get("lang", session.source_lang))

    async def _repair(self) -> None:
        """After a resubscription: deliver the finals published meanwhile."""
        floor = min(self.delivered.values(), default=0)
        session = self.session
        try:
            stored = await session.store.finals(
                session.id, after=floor, limit=session.config.history_size
            )
        except StoreUnavailable:
            return
        for final in stored:
            if final.live and final.seq > self.delivered.get(final.lang, 0):
                rendered = rendered_from_payload(final.payload)
                if rendered is not None:
                    self.deliver(rendered)

    # --- the log and the owner's languages, for catch-up -------------------------

    async def finals(self, after: int, limit: int) -> list[Rendered]:
        """The log's finals after seqId ``after`` (see ``SessionStore.finals``); none
        while the store cannot be reached."""
        session = self.session
        try:
            stored = await session.store.finals(session.id, after=after, limit=limit)
        except StoreUnavailable as exc:
            log.warning("session %s: catching up from this node only: %s", session.id, exc)
            return []
        return [r for final in stored if (r := rendered_from_payload(final.payload)) is not None]

    async def await_translation(self, language: str) -> None:
        """Until the owner says it translates into ``language`` (at most
        ``redis_join_wait_s``); at once on the owner, or when nobody owns it."""
        session = self.session
        if language == session.source_lang or session.ownership.pipeline is not None:
            return
        with trio.move_on_after(session.config.redis_join_wait_s):
            while session.owner and language not in self._languages:
                await self._languages_changed.wait()

    # --- listener counts ---------------------------------------------------------

    def local_counts(self) -> dict[str, int]:
        """This node's listeners per language, with 0 for a language only wanted."""
        audience = self.session.audience
        counts = audience.listener_counts()
        for language in audience.languages():
            counts.setdefault(language, 0)
        return counts

    def push_soon(self) -> None:
        self._push.set()

    def pull_soon(self) -> None:
        self._pull.set()

    async def push_counts(self) -> None:
        """Write this node's counts whenever they change (coalesced: the latest wins)."""
        session = self.session
        while True:
            await self._push.wait()
            self._push = trio.Event()
            try:
                await session.store.set_audience(session.id, self.local_counts())
            except StoreUnavailable:
                continue

    async def pull_counts(self) -> None:
        """Read every node's counts after each ``audience`` event (coalesced)."""
        while True:
            await self._pull.wait()
            self._pull = trio.Event()
            await self.pull()

    async def pull(self) -> None:
        """Read the other nodes' counts now; the owner updates its relays after."""
        session = self.session
        try:
            nodes = await session.store.audience(session.id)
        except StoreUnavailable:
            return
        remote: dict[str, int] = {}
        for node, counts in nodes.items():
            if node != session.store.node:
                for language, count in counts.items():
                    remote[language] = remote.get(language, 0) + count
        changed = remote != self.remote
        self.remote = remote
        if session.ownership.pipeline is not None:
            session.ownership.announce_languages()
        if changed:
            session.send_stats()
