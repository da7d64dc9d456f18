"""A session shared by the nodes of a cluster, as one node serves it.

Every node that has something to do with a session (its host, a listener, a join or an
info request) holds a ``ClusterSession`` for it, built from the store's record. They
differ only in what runs where:

- **The owner** is the node the host is connected to. It claims the session in the
  store and runs the pipeline (``_Pipeline``, a plain ``Session``) with seqIds
  continuing after the highest one the session used. The pipeline's audience is the
  host plus one relay per language wanted anywhere in the cluster, so the translator
  translates each final once per language, cluster-wide. A relay hands each caption
  to this node's own listeners and publishes it, once, for the other nodes.
- **Every node** follows the session's bus: captions from the owner are re-broadcast
  to its own listeners, one frame per caption, no per-listener work across nodes. It
  keeps its listener counts per language in the store; the owner reads their union
  (on each ``audience`` event and every heartbeat) to know what to translate into,
  and the host's ``session_stats`` count every node's listeners.
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
from typing import Any

import trio

from babel_actors import logs
from babel_actors.audience import Member
from babel_actors.cluster import catchup
from babel_actors.cluster.catchup import Rendered, caption_from, frame_payload
from babel_actors.cluster.members import Guarded, Pipeline, Relay
from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.events import Caption, Segment
from babel_actors.glossary import Glossary
from babel_actors.metrics import Metrics
from babel_actors.session import Session
from babel_actors.stages import StageRecorder
from babel_actors.store.base import (
    BusCaption,
    BusControl,
    BusEvent,
    SessionRecord,
    SessionStore,
    StoredFinal,
    StoreUnavailable,
)
from babel_actors.wire.server import (
    caption_message,
    encode,
    error_message,
    message_frame,
    now_ms,
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
        self._pipeline: Pipeline | None = None
        self._pipeline_scope = trio.CancelScope()
        self._pipeline_ready = trio.Event()
        self._owning = False
        self._relays: dict[str, Relay] = {}
        self._guards: dict[int, Guarded] = {}
        self._remote: dict[str, int] = {}
        """Other nodes' listeners per language (0: wanted), as last read."""
        self._delivered: dict[str, int] = {}
        """The highest final seqId delivered here, per language."""
        self._known_seq = 0
        self._languages: frozenset[str] = frozenset()
        """What the owner last said it translates into."""
        self._languages_changed = trio.Event()
        self._push = trio.Event()
        self._pull = trio.Event()
        self._tick_now = trio.Event()
        self._nursery: trio.Nursery | None = None

    # --- the host's side ---------------------------------------------------------

    def attach_host(self, host: Member) -> None:
        previous, self.host = self.host, host
        self._host_ever = True
        self._join(host)
        self._touch()
        if self._pipeline is not None:
            self._pipeline.attach_host(host)
            return
        if previous is not None and previous is not host:
            previous.close(1000, "replaced by a newer host connection")
        if not self._owning and self._nursery is not None:
            self._owning = True
            self._nursery.start_soon(self._own)

    def detach_host(self, host: Member) -> None:
        if self.host is host:
            self.host = None
        if self._pipeline is not None:
            self._pipeline.detach_host(host)
        self._touch()

    async def feed(self, pcm: bytes, sample_rate: int | None = None) -> None:
        self.last_activity_ms = now_ms()
        pipeline = await self._ready()
        await pipeline.feed(pcm, sample_rate or self.sample_rate)

    async def end_of_speech(self) -> None:
        pipeline = await self._ready()
        await pipeline.end_of_speech()

    async def set_source_language(self, language: str) -> None:
        self.check_source(language)
        pipeline = await self._ready()
        await pipeline.set_source_language(language)
        if language != self.source_lang:
            self.source_lang = language
            self._update_relays()
            self.store.publish_control(self.id, "source", {"lang": language})
            self.send_stats()

    async def set_glossary(self, glossary: Glossary) -> None:
        self.glossary = glossary
        pipeline = await self._ready()
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
            await self._await_translation(language)
            stored = await self._stored(after, limit)
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

    def stats(self) -> dict[str, Any]:
        counts = self.audience.listener_counts()
        for language, count in self._remote.items():
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
        self._end_here(reason, message)

    def _replaced_here(self) -> bool:
        """Whether a host closing here is a stale one: another node owns the session
        (the host reconnected there), and this node neither owns nor is claiming it."""
        return (
            self._pipeline is None and not self._owning and self.owner not in ("", self.store.node)
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        logs.bind_session(self.id)
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        await self.store.subscribe(self.id, self._on_event)
                    except StoreUnavailable as exc:
                        log.warning("session %s: not following the bus yet: %s", self.id, exc)
                    await self._tick()
                    await self._pull_audience()
                    nursery.start_soon(self._heartbeat)
                    nursery.start_soon(self._pusher)
                    nursery.start_soon(self._puller)
                    task_status.started()
        except Exception:
            log.exception("session %s failed on this node", self.id, extra={"session_id": self.id})
            self._end_here("error", _MESSAGES["error"])
        finally:
            self.store.unsubscribe(self.id)
            self._end_here("ended", "The session has ended.")

    def _end_here(self, reason: str, message: str) -> None:
        if self.ended.is_set():
            return
        pipeline, host = self._pipeline, self.host
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

    async def _own(self) -> None:
        """Claim the session and start its pipeline here."""
        try:
            last = await self.store.claim(self.id)
        except StoreUnavailable as exc:
            log.warning("session %s: owning it without the store: %s", self.id, exc)
            last = 0
        if last < 0:
            self._end_here("host_ended", "The session has ended.")
            return
        pipeline = Pipeline(
            self.config,
            self.stt,
            self.mt,
            code=self.code,
            source_lang=self.source_lang,
            stages=self.stages,
            metrics=self.metrics,
            first_seq=max(last, self._known_seq) + 1,
        )
        pipeline.id = self.id
        pipeline.host_token = self.host_token
        pipeline.glossary = self.glossary
        pipeline.sample_rate = self.sample_rate
        self._pipeline = pipeline
        self._owning = False
        self._update_relays()
        assert self._nursery is not None
        await self._nursery.start(self._run_pipeline, pipeline)
        if self.host is not None:
            pipeline.attach_host(self.host)
        else:
            pipeline.host_left()
        self.owner = self.store.node
        self.store.publish_control(self.id, "owner", {"node": self.store.node})
        self._announce_languages()
        self._pipeline_ready.set()
        self._pull.set()
        log.info("session %s: owned here from seqId %d", self.id, pipeline.first_seq)

    async def _run_pipeline(
        self, pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        scope = self._pipeline_scope = trio.CancelScope()
        with scope:
            await pipeline.run(task_status=task_status)
        if self._pipeline is pipeline:
            self._pipeline = None
            reason = pipeline.end_reason if pipeline.end_reason != "ended" else "error"
            self.end(reason, _MESSAGES.get(reason, "The session has ended."))

    def _give_up(self, owner: str) -> None:
        """Another node owns the session now: stop the pipeline here."""
        pipeline, self._pipeline = self._pipeline, None
        self._pipeline_ready = trio.Event()
        self._relays.clear()
        self.owner = owner
        host, self.host = self.host, None
        if pipeline is not None and host is not None:
            pipeline.detach_host(host)
        if host is not None:
            host.close(1000, "replaced by a newer host connection")
        self._pipeline_scope.cancel()
        log.info("session %s: now owned by %s", self.id, owner)

    async def _ready(self) -> Pipeline:
        while self._pipeline is None:
            await self._pipeline_ready.wait()
        return self._pipeline

    # --- the owner's relays ------------------------------------------------------

    def relay(self, caption: Caption, frame: bytes) -> None:
        """A caption from the pipeline, in one language: here and to every node."""
        self._deliver(caption, frame)
        segment = caption.segment
        payload = frame_payload(frame)
        self.store.publish_caption(
            self.id, caption.target_lang, segment.seq_id, not segment.is_partial, payload
        )

    def forward_error(self, message: dict[str, Any], frame: bytes) -> None:
        """An error of the pipeline, for every listener on every node."""
        for member in self.audience.members():
            member.send_notice(message, frame)
        self.metrics.notified(self.audience.people())
        self.store.publish_control(self.id, "notice", message)

    def _update_relays(self) -> None:
        """On the owner: one relay per language read anywhere, plus the source."""
        pipeline = self._pipeline
        if pipeline is None:
            return
        source = self.source_lang
        targets = self.mt.targets(source)
        wanted = {source} | {
            language
            for language in (*self._remote, *self.audience.languages())
            if language in targets
        }
        for language in wanted - self._relays.keys():
            relay = self._relays[language] = Relay(self, language)
            pipeline.audience.add(relay)
        for language in set(self._relays) - wanted:
            pipeline.audience.remove(self._relays.pop(language))

    def _announce_languages(self) -> None:
        self.store.publish_control(self.id, "languages", {"languages": sorted(self._relays)})

    # --- following the bus -------------------------------------------------------

    def _deliver(self, caption: Caption, frame: bytes) -> None:
        """One caption to this node's listeners of its language, as the broadcaster
        does; a final is recorded first, in the same step."""
        segment = caption.segment
        language = caption.target_lang
        seq = segment.seq_id
        if not segment.is_partial:
            if seq in self.history or seq > self.history.last_seq():
                self.history.add(caption, frame)
            self._delivered[language] = max(self._delivered.get(language, 0), seq)
        elif seq < self.history.last_seq():
            return
        self._known_seq = max(self._known_seq, seq)
        for member in list(self.audience.by_language.get(language, {}).values()):
            member.send_caption(caption, frame)
        self.metrics.delivered(caption, self.audience.people(language))

    def _on_event(self, event: BusEvent) -> None:
        if isinstance(event, BusCaption):
            if event.origin == self.store.node:
                return
            if event.is_final and event.seq <= self._delivered.get(event.lang, 0):
                return
            caption = caption_from(event.payload)
            if caption is not None:
                self._deliver(caption, text_frame(event.payload))
        elif isinstance(event, BusControl):
            self._on_control(event)
        else:
            self._tick_now.set()
            self._push.set()
            self._pull.set()
            if self._nursery is not None:
                self._nursery.start_soon(self._repair)

    def _on_control(self, event: BusControl) -> None:
        data = event.data
        if event.kind == "ended":
            reason = str(data.get("reason", "ended"))
            self._end_here(reason, str(data.get("message", "The session has ended.")))
        elif event.kind == "audience":
            self._pull.set()
        elif event.kind == "owner":
            node = str(data.get("node", ""))
            self.owner = node
            if node != self.store.node and self._pipeline is not None:
                self._give_up(node)
        elif event.kind == "languages":
            self._languages = frozenset(str(x) for x in data.get("languages", ()))
            self._languages_changed.set()
            self._languages_changed = trio.Event()
        elif event.kind == "notice" and event.origin != self.store.node:
            message = dict(data)
            frame = message_frame(message)
            for member in self.audience.members():
                member.send_notice(message, frame)
            self.metrics.notified(self.audience.people())
        elif event.kind == "source" and event.origin != self.store.node:
            self.source_lang = str(data.get("lang", self.source_lang))

    async def _repair(self) -> None:
        """After a resubscription: deliver the finals published meanwhile."""
        floor = min(self._delivered.values(), default=0)
        for final in await self._stored(floor, self.config.history_size):
            if final.live and final.seq > self._delivered.get(final.lang, 0):
                caption = caption_from(final.payload)
                if caption is not None:
                    self._deliver(caption, text_frame(final.payload))

    # --- audiences and heartbeat -------------------------------------------------

    def _local_counts(self) -> dict[str, int]:
        counts = self.audience.listener_counts()
        for language in self.audience.languages():
            counts.setdefault(language, 0)
        return counts

    def _audience_changed(self) -> None:
        self._update_relays()
        self._push.set()

    async def _pusher(self) -> None:
        """Write this node's counts whenever they change (coalesced: the latest wins)."""
        while True:
            await self._push.wait()
            self._push = trio.Event()
            try:
                await self.store.set_audience(self.id, self._local_counts())
            except StoreUnavailable:
                continue

    async def _puller(self) -> None:
        """Read every node's counts after each ``audience`` event (coalesced)."""
        while True:
            await self._pull.wait()
            self._pull = trio.Event()
            await self._pull_audience()

    async def _pull_audience(self) -> None:
        try:
            nodes = await self.store.audience(self.id)
        except StoreUnavailable:
            return
        remote: dict[str, int] = {}
        for node, counts in nodes.items():
            if node != self.store.node:
                for language, count in counts.items():
                    remote[language] = remote.get(language, 0) + count
        changed = remote != self._remote
        self._remote = remote
        if self._pipeline is not None:
            self._update_relays()
            self._announce_languages()
        if changed:
            self.send_stats()

    async def _heartbeat(self) -> None:
        interval = self.config.redis_owner_ttl_s / 3
        while True:
            with trio.move_on_after(interval):
                await self._tick_now.wait()
            self._tick_now = trio.Event()
            await self._tick()
            await self._pull_audience()

    async def _tick(self) -> None:
        owning = self._pipeline is not None
        try:
            state = await self.store.tick(
                self.id,
                owner=owning,
                record=self.record,
                known_seq=self._known_seq,
                counts=self._local_counts(),
            )
        except StoreUnavailable:
            return
        if state.ended:
            self._end_here(state.ended, "The session has ended.")
            return
        if owning and state.owner and state.owner != self.store.node:
            self._give_up(state.owner)
        self.owner = state.owner
        now = now_ms()
        lifetime_ms = self.config.max_session_s * 1000
        if lifetime_ms and now - self.created_ms >= lifetime_ms:
            self.end("expired", "The session reached its time limit and has ended.")
            return
        if state.owner or self._owning:
            return
        if state.host_seen:
            grace_ms = self.config.host_grace_s * 1000
            if state.away_since_ms and now - state.away_since_ms >= grace_ms:
                self.end("host_timeout", _MESSAGES["host_timeout"])
        elif now - self.created_ms >= self.config.session_idle_s * 1000:
            self.end("expired", _MESSAGES["expired"])

    # --- catch-up ----------------------------------------------------------------

    async def _await_translation(self, language: str) -> None:
        """Until the owner says it translates into ``language`` (at most
        ``redis_join_wait_s``); at once on the owner, or when nobody owns it."""
        if language == self.source_lang or self._pipeline is not None:
            return
        with trio.move_on_after(self.config.redis_join_wait_s):
            while self.owner and language not in self._languages:
                await self._languages_changed.wait()

    async def _stored(self, after: int, limit: int) -> list[StoredFinal]:
        try:
            return await self.store.finals(self.id, after=after, limit=limit)
        except StoreUnavailable as exc:
            log.warning("session %s: catching up from this node only: %s", self.id, exc)
            return []

    async def _render(self, segment: Segment, language: str) -> Rendered:
        caption = await self._catchup_caption(segment, language)
        payload = encode(caption_message(caption))
        try:
            await self.store.add_rendering(self.id, language, segment.seq_id, payload)
        except StoreUnavailable:
            pass
        return caption, text_frame(payload)
