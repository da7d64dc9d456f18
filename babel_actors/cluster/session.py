"""A session shared by the nodes of a cluster, as one node serves it: a ``Room`` fed by
the bus, plus a ``Pipeline`` while this node owns the session.

Every node that has something to do with a session (its host, a listener, a join or an
info request) holds a ``ClusterSession`` for it, built from the store's record. They
differ only in what runs where:

- **The owner** is the node the host is connected to (``Ownership``, in
  ``ownership.py``). It claims the session and runs the pipeline, seqIds continuing
  after the highest one the session used, translating into every language wanted
  anywhere in the cluster: each final is translated once per language, cluster-wide,
  and published once.
- **Every node** follows the session's bus (``Follower``, in ``follower.py``): it hands
  the owner's captions to its own room and keeps its listener counts per language in
  the store; their union tells the owner what to translate into, and the host's
  ``session_stats`` count every node's listeners.
- **Catch-up** is the room's own: before it reads the history, the store's log of
  finals is merged into it; what is still missing is rendered here (once per final and
  language on this node) and kept in the log for the other nodes. A joiner on another
  node than the owner first waits (``redis_join_wait_s`` at most) until the owner says
  it translates into the joiner's language.

Lifecycle: the owner renews its claim every third of ``redis_owner_ttl_s``. A host that
reconnects to another node moves the ownership there (the old owner stops its pipeline
and closes its stale host connection). A host that ends the session, or stays away
past ``host_grace_s``, has the owner drain its pipeline first, then the end is
published: listeners on every node get the last sentence before ``session_ended``.
When the owner dies, its claim lapses: the session is orphaned, and any node that
serves it ends it (``host_timeout``) once it has been orphaned for ``host_grace_s``,
unless a host reconnects (to any node) first. A node that shuts down closes its own
connections with 1001 and an ``error`` asking them to reconnect; the session goes on
elsewhere.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

import trio

from babel_actors.audience import Audience, Member
from babel_actors.clock import now_ms
from babel_actors.cluster.follower import Follower
from babel_actors.cluster.ownership import Ownership
from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText, Translator, hears
from babel_actors.errors import UnsupportedLanguage
from babel_actors.glossary import Glossary
from babel_actors.history import History
from babel_actors.lifetime import ENDED_MESSAGES, judge
from babel_actors.logs import bind_session
from babel_actors.metrics import Metrics
from babel_actors.renderer import Renderer
from babel_actors.room import Greet, Room
from babel_actors.session import check_target
from babel_actors.stages import StageRecorder
from babel_actors.store.base import SessionRecord, SessionStore, StoreUnavailable
from babel_actors.wire.closes import GOING_AWAY, NORMAL, SERVER_ERROR
from babel_actors.wire.server import Rendered, error_message

log = logging.getLogger(__name__)

LOCAL_REASONS = frozenset({"shutdown", "ended"})
"""End reasons that end the session on this node only."""


class ClusterSession:
    """One shared session as this node serves it. See the module docstring.

    Backpressure: none of its own: captions reach this node's listeners through
    members that never block, and the store's writes are queued (bounded) by the store.
    Cancellation: ``run`` stops the follower, the heartbeat and (when owning) the
    pipeline; ``cancel`` and ``end_here`` cancel it.
    Error handling: the store being unreachable costs only what needs it: captions keep
    reaching this node's listeners from a local pipeline, joiners catch up from this
    node's own history, and the heartbeat re-asserts this node's state once it returns.
    A crash of the pipeline ends the session everywhere (reason ``error``).
    """

    solo = False

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
        self.config = config
        self.stt = stt
        self.mt = mt
        self.stages = stages
        self.metrics = metrics if metrics is not None else Metrics()
        self.id = record.id
        self.code: str | None = record.code
        self.host_token = record.host_token
        self.created_ms = record.created_ms
        self.last_activity_ms = now_ms()
        self.record = record
        self.store = store
        self.source_lang = record.source_lang
        self.sample_rate = config.default_sample_rate
        self.glossary = Glossary()
        self.owner = ""
        """The owning node, as last known; empty when none."""
        self.renderer = Renderer(
            mt,
            History(config.history_size),
            timeout_s=config.translate_timeout_s,
            context_segments=config.context_segments,
            glossary=lambda: self.glossary,
            metrics=self.metrics,
            publish=self._keep_rendering,
        )
        self.follower = Follower(self)
        """The bus-reading side: the captions handed to the room, every node's counts."""
        self.room = Room(
            config,
            self.renderer,
            metrics=self.metrics,
            before_catchup=self._merge_log,
            on_change=self._audience_changed,
            remote_counts=lambda: self.follower.remote,
        )
        self.ownership = Ownership(self)
        """The owner's side: the pipeline, while this node owns the session."""
        self.ended = trio.Event()
        self.end_reason = ""
        self._host_left_ms = now_ms()
        self._changed = trio.Event()
        self._tick_now = trio.Event()
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None

    @property
    def audience(self) -> Audience:
        return self.room.audience

    @property
    def history(self) -> History:
        return self.room.history

    @property
    def host(self) -> Member | None:
        return self.room.host

    @property
    def ending(self) -> bool:
        return bool(self.end_reason)

    # --- languages ---------------------------------------------------------------

    def check_source(self, language: str) -> None:
        if not hears(self.stt, language):
            raise UnsupportedLanguage(self.stt.name, language, self.stt.languages())

    def check_target(self, language: str, source: str | None = None) -> None:
        check_target(self.mt, language, source or self.source_lang)

    async def set_source_language(self, language: str) -> None:
        self.check_source(language)
        pipeline = await self.ownership.ready()
        await pipeline.set_source_language(language)
        if language != self.source_lang:
            self.source_lang = language
            host = self.host
            if host is not None:
                self.room.change_language(host, language)
            self.store.publish_control(self.id, "source", {"lang": language})
            self.ownership.announce_languages()

    async def set_glossary(self, glossary: Glossary) -> None:
        self.glossary = glossary
        pipeline = await self.ownership.ready()
        await pipeline.set_glossary(glossary)

    # --- the host's side ---------------------------------------------------------

    async def feed(self, pcm: bytes, sample_rate: int | None = None) -> None:
        self.last_activity_ms = now_ms()
        pipeline = await self.ownership.ready()
        await pipeline.feed(pcm, sample_rate or self.sample_rate)

    async def end_of_speech(self) -> None:
        pipeline = await self.ownership.ready()
        await pipeline.end_of_speech()

    def attach_host(self, host: Member) -> None:
        previous, self.room.host = self.room.host, host
        if previous is not None and previous is not host:
            self.room.audience.remove(previous)
            previous.close(NORMAL, "replaced by a newer host connection")
        self._join(host)
        self.room.seat(host)
        if self.ownership.pipeline is None and self._nursery is not None:
            self.ownership.claim_soon(self._nursery)

    def detach_host(self, host: Member) -> None:
        self.room.audience.remove(host)
        if self.room.host is host:
            self.room.host = None
            self._host_left_ms = now_ms()
        self._touch()

    # --- listeners ---------------------------------------------------------------

    async def add_member(
        self, member: Member, *, last_seq: int | None = None, greet: Greet | None = None
    ) -> int | None:
        """Add ``member`` after the finals it missed (``Room.add_member``, with the
        store's log merged in first); returns where its replay started."""
        self._join(member)
        return await self.room.add_member(member, last_seq=last_seq, greet=greet)

    def remove_member(self, member: Member) -> None:
        self.room.remove_member(member)

    def change_language(self, member: Member, language: str) -> None:
        self.check_target(language)
        self.room.change_language(member, language)

    def notify_listeners(self, message: dict[str, Any]) -> None:
        """A notice (a pipeline's error) for this node's members."""
        self.room.notify(message)

    def stats(self) -> dict[str, Any]:
        return self.room.stats()

    def send_stats(self) -> None:
        self.room.send_stats()

    def info(self) -> dict[str, Any]:
        stats = self.stats()
        return {
            "sessionId": self.id,
            "sessionCode": self.code,
            "isActive": self.host is not None
            or (bool(self.owner) and self.owner != self.store.node),
            "listenerCount": stats["listenerCount"],
            "languages": stats["languages"],
            "languageCounts": stats["languageCounts"],
            "sourceLang": self.source_lang,
            "createdAt": self.created_ms,
            "lastActivity": self.last_activity_ms,
            "duration": now_ms() - self.created_ms,
        }

    async def _merge_log(self, language: str, after: int, limit: int) -> None:
        """Before a catch-up: wait for the owner to translate ``language``, then put the
        log's finals (other nodes' renderings) into this node's history."""
        await self.follower.await_translation(language)
        for rendered in await self.follower.finals(after, limit):
            if (
                self.history.rendering(
                    rendered.caption.segment.seq_id, rendered.caption.target_lang
                )
                is None
            ):
                self.history.add(rendered)

    async def _keep_rendering(self, rendered: Rendered) -> None:
        """A final rendered here for a joiner: into the log, for the other nodes."""
        segment = rendered.caption.segment
        try:
            await self.store.add_rendering(
                self.id, rendered.caption.target_lang, segment.seq_id, rendered.payload
            )
        except StoreUnavailable:
            pass

    def _audience_changed(self) -> None:
        self._touch()
        self.follower.push_soon()
        self.ownership.announce_languages()

    def _join(self, member: Member) -> None:
        member.count_into(self.metrics.member_counters(member.role))
        bind_session(self.id)

    def _touch(self) -> None:
        self.last_activity_ms = now_ms()
        self._changed.set()

    # --- lifecycle ---------------------------------------------------------------

    def finish(
        self, reason: str, message: str | None = None, *, drain_s: float | None = None
    ) -> None:
        """End the session everywhere, once this node's pipeline (if it owns one) has
        drained, at most ``drain_s``; ``shutdown`` ends it on this node only."""
        if self.ending:
            return
        message = message or ENDED_MESSAGES.get(reason, "The session has ended.")
        if reason in LOCAL_REASONS:
            self.end_here(reason, message)
            return
        if reason == "host_ended" and self._replaced_here():
            return
        self.end_reason = reason
        deadline = self.config.drain_s if drain_s is None else drain_s
        if self.ownership.pipeline is not None and self._nursery is not None:
            self._nursery.start_soon(self._drain_then_end, reason, message, deadline)
        else:
            self._end_everywhere(reason, message)

    def cancel(self, reason: str, message: str | None = None) -> None:
        """End the session everywhere now (a local reason: here only)."""
        message = message or ENDED_MESSAGES.get(reason, "The session has ended.")
        if reason in LOCAL_REASONS:
            self.end_here(reason, message)
        else:
            self._end_everywhere(reason, message)


    def _replaced_here(self) -> bool:
        """Whether a host closing here is a stale one: another node owns the session
        (the host reconnected there), and this node neither owns nor is claiming it."""
        ownership = self.ownership
        return (
            ownership.pipeline is None
            and not ownership.claiming
            and self.owner not in ("", self.store.node)
        )

    async def _drain_then_end(self, reason: str, message: str, deadline_s: float) -> None:
        with trio.move_on_after(deadline_s):
            await self.ownership.finish()
        self._end_everywhere(reason, message)

    def _end_everywhere(self, reason: str, message: str) -> None:
        if self.ended.is_set():
            return
        wire_reason = "expired" if reason == "lifetime" else reason
        self.store.end_soon(self.id, wire_reason, message)
        self.end_here(wire_reason, message)

    def end_here(self, reason: str, message: str) -> None:
        """End the session on this node only (the store ended it, or this node goes
        away). Idempotent."""
        if self.ended.is_set():
            return
        if reason == "shutdown":
            notice = error_message(
                "this server is shutting down; reconnect to resume", GOING_AWAY, closing=True
            )
            self.room.close_all(notice, GOING_AWAY, "server shutting down")
        else:
            code = SERVER_ERROR if reason == "error" else NORMAL
            self.room.close(reason, message, code)
        self.end_reason = reason
        self.ended.set()
        self._scope.cancel()
        log.info(
            "session %s ended on this node: %s", self.id, reason, extra={"session_id": self.id}
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the session on this node until it ends here.

        Error handling: a failure here ends the session on this node (reason
        ``error``), then propagates for the server to log.
        """
        bind_session(self.id)
        follower = self.follower
        try:
            with self._scope:
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
                    nursery.start_soon(self._expire)
                    nursery.start_soon(self.room.pace_stats)
                    task_status.started()
        except Exception:
            self.end_here("error", ENDED_MESSAGES["error"])
            raise
        finally:
            self._nursery = None
            self.store.unsubscribe(self.id)
            self.end_here("ended", "The session has ended.")

    async def _expire(self) -> None:
        """While this node owns the session: finish it when the host stays away past
        the grace period (the same rule as a session served alone)."""
        while True:
            verdict = None
            if self.ownership.pipeline is not None:
                verdict = judge(
                    self.config,
                    now=now_ms() / 1000,
                    created=self.created_ms / 1000,
                    host_here=self.host is not None,
                    host_seen=True,
                    away_since=self._host_left_ms / 1000,
                )
                if verdict.reason is not None:
                    self.finish(verdict.reason)
                    return
            wait = math.inf if verdict is None else verdict.next_check - now_ms() / 1000
            with trio.move_on_after(max(wait, 0.0)):
                await self._changed.wait()
                self._changed = trio.Event()

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
        if state.owner or self.ownership.claiming:
            verdict = judge(
                self.config,
                now=now_ms() / 1000,
                created=self.created_ms / 1000,
                host_here=True,
                host_seen=True,
                away_since=0.0,
            )
        else:
            verdict = judge(
                self.config,
                now=now_ms() / 1000,
                created=self.created_ms / 1000,
                host_here=False,
                host_seen=state.host_seen,
                away_since=(state.away_since_ms or now_ms()) / 1000,
            )
        if verdict.reason is not None:
            self.finish(verdict.reason)
