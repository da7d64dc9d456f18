"""The owner's side of a shared session: its pipeline, its relays, its publishing.

The owner is the node the host is connected to. It claims the session in the store
and runs the pipeline (``Pipeline``, a plain ``Session``) with seqIds continuing after
the highest one the session used. The pipeline's audience is the host plus one
``Relay`` per language wanted anywhere in the cluster, so the translator translates
each final once per language, cluster-wide. A relay hands each caption to this node's
own listeners and publishes it, once, for the other nodes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from babel_actors.cluster.catchup import frame_payload
from babel_actors.cluster.members import Pipeline, Relay
from babel_actors.events import Caption
from babel_actors.store.base import StoreUnavailable

if TYPE_CHECKING:
    from babel_actors.cluster.session import ClusterSession

log = logging.getLogger(__name__)


class Ownership:
    """The owner's side of one ``ClusterSession`` on this node: idle until it claims.

    Backpressure: none of its own: captions go to this node's listeners (which never
    block) and to the store's publishing queue (the store bounds it; nothing waits).
    Cancellation: the pipeline runs in the session's nursery under a scope of its own,
    which ``give_up`` cancels; the session's ``run`` ending cancels it too.
    Error handling: a claim without the store owns the session anyway, after the
    seqIds this node knows; a pipeline that stops by itself ends the session everywhere
    (reason ``error`` when it crashed).
    """

    def __init__(self, session: ClusterSession) -> None:
        self.session = session
        self.pipeline: Pipeline | None = None
        """The pipeline, while this node owns the session."""
        self.claiming = False
        """Whether this node is claiming the session, its pipeline not started yet."""
        self._scope = trio.CancelScope()
        self._ready = trio.Event()
        self._relays: dict[str, Relay] = {}

    @property
    def source_lang(self) -> str:
        return self.session.source_lang

    def claim_soon(self, nursery: trio.Nursery) -> None:
        """Claim the session and start its pipeline in ``nursery``, unless claiming."""
        if not self.claiming:
            self.claiming = True
            nursery.start_soon(self._claim, nursery)

    async def ready(self) -> Pipeline:
        """The pipeline, once this node owns the session."""
        while self.pipeline is None:
            await self._ready.wait()
        return self.pipeline

    def give_up(self, owner: str) -> None:
        """Another node owns the session now: stop the pipeline here."""
        session = self.session
        pipeline, self.pipeline = self.pipeline, None
        self._ready = trio.Event()
        self._relays.clear()
        session.owner = owner
        host, session.host = session.host, None
        if pipeline is not None and host is not None:
            pipeline.detach_host(host)
        if host is not None:
            host.close(1000, "replaced by a newer host connection")
        self._scope.cancel()
        log.info("session %s: now owned by %s", session.id, owner)

    async def _claim(self, nursery: trio.Nursery) -> None:
        session = self.session
        store = session.store
        try:
            last = await store.claim(session.id)
        except StoreUnavailable as exc:
            log.warning("session %s: owning it without the store: %s", session.id, exc)
            last = 0
        if last < 0:
            session.end_here("host_ended", "The session has ended.")
            return
        pipeline = Pipeline(
            session.config,
            session.stt,
            session.mt,
            code=session.code,
            source_lang=session.source_lang,
            stages=session.stages,
            metrics=session.metrics,
            first_seq=max(last, session.follower.known_seq) + 1,
        )
        pipeline.id = session.id
        pipeline.host_token = session.host_token
        pipeline.glossary = session.glossary
        pipeline.sample_rate = session.sample_rate
        self.pipeline = pipeline
        self.claiming = False
        self.update_relays()
        await nursery.start(self._run, pipeline)
        if session.host is not None:
            pipeline.attach_host(session.host)
        else:
            pipeline.host_left()
        session.owner = store.node
        store.publish_control(session.id, "owner", {"node": store.node})
        self.announce_languages()
        self._ready.set()
        session.follower.pull_soon()
        log.info("session %s: owned here from seqId %d", session.id, pipeline.first_seq)

    async def _run(
        self, pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        scope = self._scope = trio.CancelScope()
        with scope:
            await pipeline.run(task_status=task_status)
        if self.pipeline is pipeline:
            self.pipeline = None
            self.session.end_for(pipeline.end_reason if pipeline.end_reason != "ended" else "error")

    # --- the relays --------------------------------------------------------------

    def relay(self, caption: Caption, frame: bytes) -> None:
        """A caption from the pipeline, in one language: here and to every node."""
        session = self.session
        session.follower.deliver(caption, frame)
        segment = caption.segment
        payload = frame_payload(frame)
        session.store.publish_caption(
            session.id, caption.target_lang, segment.seq_id, not segment.is_partial, payload
        )

    def forward_error(self, message: dict[str, Any], frame: bytes) -> None:
        """An error of the pipeline, for every listener on every node."""
        session = self.session
        session.notify_listeners(message, frame)
        session.store.publish_control(session.id, "notice", message)

    def update_relays(self) -> None:
        """One relay per language read anywhere, plus the source; none unless owning."""
        pipeline = self.pipeline
        if pipeline is None:
            return
        session = self.session
        source = session.source_lang
        targets = session.mt.targets(source)
        wanted = {source} | {
            language
            for language in (*session.follower.remote, *session.audience.languages())
            if language in targets
        }
        for language in wanted - self._relays.keys():
            relay = self._relays[language] = Relay(self, language)
            pipeline.audience.add(relay)
        for language in set(self._relays) - wanted:
            pipeline.audience.remove(self._relays.pop(language))

    def announce_languages(self) -> None:
        """Tell every node what the pipeline translates into."""
        self.session.store.publish_control(
            self.session.id, "languages", {"languages": sorted(self._relays)}
        )
