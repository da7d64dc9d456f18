"""A session shared by the nodes of a cluster, as one node serves it.

Every node that has something to do with a session (its host, a listener, a join or an
info request) holds a ``ClusterSession`` for it, built from the store's record. They
differ only in what runs where:

- **The owner** is the node the host is connected to (``Ownership``, in
  ``ownership.py``). It claims the session and runs the pipeline, seqIds continuing
  after the highest one the session used, with one relay per language wanted anywhere
  in the cluster: each final is translated once per language, cluster-wide.
- **Every node** follows the session's bus (``Follower``, in ``follower.py``): it
  re-broadcasts the owner's captions to its own listeners and keeps its listener
  counts per language in the store: their union (read on each ``audience`` event and
  every heartbeat) tells the owner what to translate into, and the host's
  ``session_stats`` count every node's listeners.
- **Catch-up** (a late joiner or a ``lastSeq`` resume, on any node) merges the store's
  log of finals with this node's own recent finals, renders what is missing in the
  joiner's language, then writes it all and adds the joiner in one step with no
  await, as ``Session.add_member`` does. A joiner on another node than the owner first
  waits (``redis_join_wait_s`` at most) until the owner says it translates into the
  joiner's language. Each listener is guarded: it never gets a final twice or out of
  order, nor a partial older than its last final.

Lifecycle: the owner renews its claim every third of ``redis_owner_ttl_s``. A host that
reconnects to another node moves the ownership there (the old owner stops its pipeline
and closes its stale host connection). A host that drops starts the grace period on
its owner, as in one process. When the owner dies, its claim lapses: the session is
orphaned, and any node that serves it ends it (``host_timeout``) once it has been
orphaned for ``host_grace_s``, unless a host reconnects (to any node) first. A node
that shuts down closes its own connections with 1001 and an ``error`` asking them to
reconnect; the session goes on elsewhere.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import trio

from babel_actors import logs
from babel_actors.audience import Member
from babel_actors.clock import now_ms
from babel_actors.cluster import catchup
from babel_actors.cluster.catchup import Rendered
from babel_actors.cluster.follower import Follower
from babel_actors.cluster.members import Guarded
from babel_actors.cluster.ownership import Ownership
from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.events import Segment
from babel_actors.glossary import Glossary
from babel_actors.metrics import Metrics
from babel_actors.session import Session
from babel_actors.stages import StageRecorder
from babel_actors.store.base import SessionRecord, SessionStore, StoreUnavailable
from babel_actors.wire.server import (
    caption_message,
    encode,
    error_message,
    message_frame,
    text_frame,
)

log = logging.getLogger(__name__)

GOING_AWAY = 1001
LOCAL_REASONS = frozenset({"shutdown", "ended"})
"""End reasons that end the session on this node only."""
_MESSAGES = {
    "host_timeout": "The host has left; the session has ended.",
    "error": "The session ended because of a server error.",
    "expired": "The session expired unused.",
}


class ClusterSession(Session):
    """One shared session as this node serves it. See the module docstring.

    Backpressure: none of its own: captions reach this node's listeners through
    members that never block, and the store's writes are queued (bounded) by the store.
    Cancellation: ``run`` stops the follower, the heartbeat and (when owning) the
    pipeline; ``end`` cancels it.
    Error handling: the store being unreachable costs only what needs it: captions keep
    reaching this node's listeners from a local pipeline, joiners catch up from this
    node's own history, and the heartbeat re-asserts this node's state once it returns.
    """

    def __init__(
        self,
        config: Config,
        stt: SpeechToText,
        mt: Translator,
        *,
        record: SessionRecord,
        store: SessionStore,
        stages: StageRecorder | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(
            config,
            stt,
            mt,
            code=record.code,
            source_lang=record.source_lang,
            stages=stages,
            metrics=metrics,
        )
        self.id = record.id
        self.host_token = record.host_token
        self.created_ms = record.created_ms
        self.record = record
        self.store = store
        self.owner = ""
        """The owning node, as last known; empty when none."""
        self.ownership = Ownership(self)
        """The owner's side: the pipeline and its relays, while this node owns it."""
        self.follower = Follower(self)
        """The bus-reading side: the captions re-broadcast here, every node's counts."""
        self._guards: dict[int, Guarded] = {}
        self._tick_now = trio.Event()
        self._nursery: trio.Nursery | None = None

    # --- the host's side ---------------------------------------------------------

    def attach_host(self, host: Member) -> None:
        previous, self.host = self.host, host
        self._host_ever = True
        self._join(host)
        self._touch()
        if self.ownership.pipeline is not None:
            self.ownership.pipeline.attach_host(host)
            return
        if previous is not None and previous is not host:
            previous.close(1000, "replaced by a newer host connection")
        if self._nursery is not None:
            self.ownership.claim_soon(self._nursery)

    def detach_host(self, host: Member) -> None:
        if self.host is host:
            self.host = None
        if self.ownership.pipeline is not None:
            self.ownership.pipeline.detach_host(host)
        self._touch()

    async def feed(self, pcm: bytes, sample_rate: int | None = None) -> None:
        self.last_activity_ms = now_ms()
        pipeline = await self.ownership.ready()
        await pipeline.feed(pcm, sample_rate or self.sample_rate)

    async def end_of_speech(self) -> None:
        pipeline = await self.ownership.ready()
        await pipeline.end_of_speech()

    async def set_source_language(self, language: str) -> None:
        self.check_source(language)
        pipeline = await self.ownership.ready()
        await pipeline.set_source_language(language)
        if language != self.source_lang:
            self.source_lang = language
            self.ownership.update_relays()
            self.store.publish_control(self.id, "source", {"lang": language})
            self.send_stats()

    async def set_glossary(self, glossary: Glossary) -> None:
        self.glossary = glossary
        pipeline = await self.ownership.ready()
        await pipeline.set_glossary(glossary)

    # --- listeners ---------------------------------------------------------------

    async def add_member(self, member: Member, *, last_seq: int | None = None) -> None:
        """Add ``member`` after the finals it missed, from the log and this node's
        history; missing renderings are made here. See ``Session.add_member``."""
        language = member.target_lang
        after = last_seq if last_seq is not None else 0
        limit = self.config.history_size if last_seq is not None else self.config.catchup_finals
        self._join(member)
        self.audience.want(language)
        self._audience_changed()
        rendered: dict[int, Rendered] = {}
        try:
            await self.follower.await_translation(language)
            stored = await self.follower.finals(after, limit)
            while missing := catchup.missing(
                catchup.window(stored, self.history, after, limit), language, rendered
            ):
                for segment in missing:
                    rendered[segment.seq_id] = await self._render(segment, language)
        finally:
            self.audience.unwant(language)
        guard = Guarded(member)
        finals = catchup.window(stored, self.history, after, limit)
        missed = catchup.captions(finals, language, rendered)
        for caption, frame in missed:
            guard.send_caption(caption, frame)
        self.metrics.caught_up(language, len(missed))
        self._guards[id(member)] = guard
        self.audience.add(guard)
        self._audience_changed()
        self._touch()
        self.send_stats()

    def remove_member(self, member: Member) -> None:
        guard = self._guards.pop(id(member), None)
        if guard is not None:
            self.audience.remove(guard)
        self._audience_changed()
        self._touch()
        self.send_stats()

    def change_language(self, member: Member, language: str) -> None:
        self.check_target(language)
        guard = self._guards.get(id(member))
        if guard is None:
            member.target_lang = language
            return
        self.audience.remove(guard)
        member.target_lang = guard.target_lang = language
        self.audience.add(guard)
        self._audience_changed()
        self.send_stats()

    def notify_listeners(self, message: dict[str, Any], frame: bytes) -> None:
        """A notice (a pipeline's error) for this node's listeners."""
        for member in self.audience.members():
            member.send_notice(message, frame)
        self.metrics.notified(self.audience.people())

    def stats(self) -> dict[str, Any]:
        counts = self.audience.listener_counts()
        for language, count in self.follower.remote.items():
            if count:
                counts[language] = counts.get(language, 0) + count
        return {
            "listenerCount": sum(counts.values()),
            "languages": sorted(counts),
            "languageCounts": counts,
        }

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["isActive"] = self.host is not None or (
            bool(self.owner) and self.owner != self.store.node
        )
        return info

    def _audience_changed(self) -> None:
        self.ownership.update_relays()
        self.follower.push_soon()

    async def _render(self, segment: Segment, language: str) -> Rendered:
        """``segment`` in ``language`` for a joiner, also kept in the log."""
        caption = await self._catchup_caption(segment, language)
        payload = encode(caption_message(caption))
        try:
            await self.store.add_rendering(self.id, language, segment.seq_id, payload)
        except StoreUnavailable:
            pass
        return caption, text_frame(payload)

    # --- lifecycle ---------------------------------------------------------------

    def end(self, reason: str, message: str) -> None:
        """End the session: everywhere, unless ``reason`` is this node's own
        (``shutdown``: this node goes away, the session does not)."""
        if self.ended.is_set():
            return
        if reason == "host_ended" and self._replaced_here():
            return
        if reason not in LOCAL_REASONS:
            self.store.end_soon(self.id, reason, message)
        self.end_here(reason, message)

    def end_for(self, reason: str) -> None:
        """``end``, with the message listeners get for ``reason``."""
        self.end(reason, _MESSAGES.get(reason, "The session has ended."))

    def _replaced_here(self) -> bool:
        """Whether a host closing here is a stale one: another node owns the session
        (the host reconnected there), and this node neither owns nor is claiming it."""
        ownership = self.ownership
        return (
            ownership.pipeline is None
            and not ownership.claiming
            and self.owner not in ("", self.store.node)
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        logs.bind_session(self.id)
        follower = self.follower
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        await self.store.subscribe(self.id, partial(follower.on_event, nursery))
                    except StoreUnavailable as exc:
                        log.warning("session %s: not following the bus yet: %s", self.id, exc)
                    await self._tick()
                    await follower.pull()
                    nursery.start_soon(self._heartbeat)
                    nursery.start_soon(follower.push_counts)
                    nursery.start_soon(follower.pull_counts)
                    task_status.started()
        except Exception:
            log.exception("session %s failed on this node", self.id, extra={"session_id": self.id})
            self.end_here("error", _MESSAGES["error"])
        finally:
            self.store.unsubscribe(self.id)
            self.end_here("ended", "The session has ended.")

    def end_here(self, reason: str, message: str) -> None:
        """End the session on this node only (the store ended it, or this node goes
        away). Idempotent."""
        if self.ended.is_set():
            return
        pipeline, host = self.ownership.pipeline, self.host
        if reason != "shutdown":
            if pipeline is not None:
                pipeline.end(reason, message)
            super().end(reason, message)
            return
        if pipeline is not None and host is not None:
            pipeline.detach_host(host)
        notice = error_message(
            "this server is shutting down; reconnect to resume", GOING_AWAY, closing=True
        )
        frame = message_frame(notice)
        for member in [*self.audience.members(), *([host] if host is not None else [])]:
            member.send_notice(notice, frame)
            member.close(GOING_AWAY, "server shutting down")
        self.metrics.notified(self.audience.people() + (0 if host is None else 1))
        self.end_reason = reason
        self.ended.set()
        self._cancel_scope.cancel()
        log.info("session %s left this node: %s", self.id, reason, extra={"session_id": self.id})

    # --- heartbeat ---------------------------------------------------------------

    def tick_soon(self) -> None:
        """Run the heartbeat now (after a resubscription)."""
        self._tick_now.set()

    async def _heartbeat(self) -> None:
        interval = self.config.redis_owner_ttl_s / 3
        while True:
            with trio.move_on_after(interval):
                await self._tick_now.wait()
            self._tick_now = trio.Event()
            await self._tick()
            await self.follower.pull()

    async def _tick(self) -> None:
        """Renew this node's state in the store, and act on the session's: ended
        elsewhere, owned elsewhere, past its lifetime, or orphaned for too long."""
        owning = self.ownership.pipeline is not None
        try:
            state = await self.store.tick(
                self.id,
                owner=owning,
                record=self.record,
                known_seq=self.follower.known_seq,
                counts=self.follower.local_counts(),
            )
        except StoreUnavailable:
            return
        if state.ended:
            self.end_here(state.ended, "The session has ended.")
            return
        if owning and state.owner and state.owner != self.store.node:
            self.ownership.give_up(state.owner)
        self.owner = state.owner
        now = now_ms()
        lifetime_ms = self.config.max_session_s * 1000
        if lifetime_ms and now - self.created_ms >= lifetime_ms:
            self.end("expired", "The session reached its time limit and has ended.")
            return
        if state.owner or self.ownership.claiming:
            return
        if state.host_seen:
            grace_ms = self.config.host_grace_s * 1000
            if state.away_since_ms and now - state.away_since_ms >= grace_ms:
                self.end("host_timeout", _MESSAGES["host_timeout"])
        elif now - self.created_ms >= self.config.session_idle_s * 1000:
            self.end("expired", _MESSAGES["expired"])
