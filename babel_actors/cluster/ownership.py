"""The owner's side of a shared session: its pipeline and its publishing.

The owner is the node the host is connected to. It claims the session in the store
and runs the pipeline with seqIds continuing after the highest one the session used,
translating into every language read anywhere in the cluster (this node's room and
the other nodes' counts), so each final is translated once per language,
cluster-wide. Each caption goes to this node's room and is published, once, for the
other nodes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from babel_actors.pipeline import Pipeline
from babel_actors.session import reachable
from babel_actors.store.base import StoreUnavailable
from babel_actors.wire.closes import NORMAL
from babel_actors.wire.server import SERVICE_UNAVAILABLE, Rendered, error_message

if TYPE_CHECKING:
    from babel_actors.cluster.session import ClusterSession

log = logging.getLogger(__name__)


class Ownership:
    """The owner's side of one ``ClusterSession`` on this node: idle until it claims.

    Backpressure: none of its own: captions go to this node's room (whose members never
    block) and to the store's publishing queue (the store bounds it; nothing waits).
    Cancellation: the pipeline runs in the session's nursery under a scope of its own,
    which ``give_up`` cancels; the session's ``run`` ending cancels it too.
    Error handling: a claim without the store owns the session anyway, after the
    seqIds this node knows; a pipeline that crashes ends the session everywhere
    (reason ``error``).
    """

    def __init__(self, session: ClusterSession) -> None:
        self.session = session
        self.pipeline: Pipeline | None = None
        """The pipeline, while this node owns the session."""
        self.claiming = False
        """Whether this node is claiming the session, its pipeline not started yet."""
        self._scope = trio.CancelScope()
        self._ready = trio.Event()
        self._drained = trio.Event()
        self._announced: frozenset[str] | None = None

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

    async def finish(self) -> None:
        """Let the pipeline drain what it holds; returns once it has (at once when
        this node owns nothing)."""
        pipeline = self.pipeline
        if pipeline is None:
            return
        await pipeline.finish()
        await self._drained.wait()

    def give_up(self, owner: str) -> None:
        """Another node owns the session now: stop the pipeline here."""
        session = self.session
        self.pipeline = None
        self._ready = trio.Event()
        self._announced = None
        session.owner = owner
        host, session.room.host = session.room.host, None
        if host is not None:
            session.room.audience.remove(host)
            host.close(NORMAL, "replaced by a newer host connection")
        self._scope.cancel()
        log.info("session %s: now owned by %s", session.id, owner)

    def languages(self) -> frozenset[str]:
        """What the pipeline translates into: the source, and every language read
        anywhere in the cluster that the engine reaches."""
        session = self.session
        source = session.source_lang
        targets = reachable(session.mt, source)
        wanted = {
            language
            for language in (*session.follower.remote, *session.room.languages())
            if language in targets
        }
        return frozenset(wanted | {source})

    def announce_languages(self) -> None:
        """Tell every node what the pipeline translates into, when that changed."""
        if self.pipeline is None:
            return
        languages = self.languages()
        if languages != self._announced:
            self._announced = languages
            self.session.store.publish_control(
                self.session.id, "languages", {"languages": sorted(languages)}
            )

    def relay(self, rendered: Rendered) -> int:
        """A caption from the pipeline: to this node's room, and published for every
        other node."""
        session = self.session
        reached = session.follower.deliver(rendered)
        segment = rendered.caption.segment
        session.store.publish_caption(
            session.id,
            rendered.caption.target_lang,
            segment.seq_id,
            not segment.is_partial,
            rendered.payload,
        )
        return reached

    def forward_error(self, text: str) -> None:
        """An engine failure of the pipeline, for every member on every node."""
        session = self.session
        message = error_message(text, SERVICE_UNAVAILABLE)
        session.notify_listeners(message)
        session.store.publish_control(session.id, "notice", message)

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
            session.renderer,
            deliver=self.relay,
            languages=self.languages,
            source_lang=session.source_lang,
            on_error=self.forward_error,
            first_seq=max(last, session.follower.known_seq) + 1,
            stages=session.stages,
            metrics=session.metrics,
        )
        pipeline.sample_rate = session.sample_rate
        self.pipeline = pipeline
        self.claiming = False
        self._drained = trio.Event()
        await nursery.start(self._run, pipeline)
        session.owner = store.node
        store.publish_control(session.id, "owner", {"node": store.node})
        self.announce_languages()
        self._ready.set()
        session.follower.pull_soon()
        session._touch()
        log.info("session %s: owned here from seqId %d", session.id, pipeline.first_seq)

    async def _run(
        self, pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        scope = self._scope = trio.CancelScope()
        drained = self._drained
        try:
            with scope:
                await pipeline.run(task_status=task_status)
        except Exception:
            log.exception("session %s: pipeline crashed", self.session.id)
            if self.pipeline is pipeline:
                self.pipeline = None
                self.session.cancel("error")
        finally:
            drained.set()
