"""The one render path: each (final, language) translated once, whoever asks first.

Live translation lanes, late joiners, ``lastSeq`` resumes and (in a cluster) joiners
on other nodes all ask the session's ``Renderer``; the first ask translates, every
concurrent ask waits for that translation, and later ones find it in the history.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from babel_actors.engines.base import Translator, optional_keywords, translation_route
from babel_actors.errors import BabelError
from babel_actors.events import AUTO_LANGUAGE, Caption, Segment
from babel_actors.glossary import Glossary
from babel_actors.history import History
from babel_actors.metrics import Metrics
from babel_actors.wire.server import Rendered, render

log = logging.getLogger(__name__)


async def translate_segment(
    engine: Translator,
    segment: Segment,
    target: str,
    *,
    context: Sequence[str],
    timeout_s: float,
    glossary: Glossary | None = None,
    metrics: Metrics | None = None,
) -> Caption:
    """``segment`` in ``target``; on failure or timeout, its source text, flagged.

    Never raises but for cancellation: a listener gets the source text, never silence.
    ``metrics`` counts the request, and its failure or timeout.
    """
    if target in (segment.source_lang, AUTO_LANGUAGE):
        return Caption(segment, target, segment.text, True)
    source = segment.source_lang
    if metrics is not None:
        metrics.translation(engine.name, source, target)
    with trio.move_on_after(timeout_s):
        try:
            extra = optional_keywords(glossary, partial=segment.is_partial)
            text = await engine.translate(
                segment.text, source=source, target=target, context=context, **extra
            )
            via = translation_route(engine, source, target)
            return Caption(segment, target, text, True, via=via)
        except BabelError as exc:
            log.warning("translation %s->%s failed: %s", source, target, exc)
            if metrics is not None:
                metrics.translation_failed(engine.name, source, target, "error")
            return Caption(segment, target, segment.text, False)
    log.warning("translation %s->%s timed out after %ss", source, target, timeout_s)
    if metrics is not None:
        metrics.translation_failed(engine.name, source, target, "timeout")
    return Caption(segment, target, segment.text, False)


@attrs.define
class _Flight:
    """A translation under way; its waiters wake when ``done`` is set."""

    done: trio.Event = attrs.field(factory=trio.Event)
    result: Rendered | None = None


Publish = Callable[[Rendered], Awaitable[None]]
"""Called once for each final rendering made here for a joiner rather than a live lane
(a cluster keeps those in its log; live ones are published as they are delivered)."""


class Renderer:
    """Translates finals for one session, each (final, language) once, single-flight,
    and keeps every rendering in the session's ``history``; partials on demand.

    Context: each final is translated with the source text of the ``context_segments``
    finals before it, whoever asks, so a rendering never depends on who asked first.
    ``glossary()`` is the session's glossary when a translation starts.

    Backpressure: none of its own; an ask waits for the engine (``timeout_s`` at most).
    Cancellation: an asker cancelled while translating abandons that translation; the
    askers waiting on it wake and the next one translates afresh, so a joiner that
    leaves mid-catch-up costs the others nothing but time.
    Error handling: a failed or timed-out translation is the source text, flagged
    (``has_translation`` false), kept like any other rendering: every listener of the
    language reads the same caption for that final.
    """

    def __init__(
        self,
        engine: Translator,
        history: History,
        *,
        timeout_s: float,
        context_segments: int,
        glossary: Callable[[], Glossary] = Glossary,
        metrics: Metrics | None = None,
        publish: Publish | None = None,
    ) -> None:
        self.engine = engine
        self.history = history
        self.timeout_s = timeout_s
        self.context_segments = context_segments
        self.glossary = glossary
        self.metrics = metrics
        self.publish = publish
        self._flights: dict[tuple[int, str], _Flight] = {}
        self._landed = trio.Event()

    def admit(self, final: Segment) -> None:
        """``final`` is on its way to the translator: keep it, so joiners see it."""
        self.history.admit(final)

    async def final(self, segment: Segment, language: str, *, live: bool = False) -> Rendered:
        """``segment`` (a final) in ``language``, translated at most once. ``live``:
        asked by a translation lane, which delivers it (else by a joiner's catch-up)."""
        key = (segment.seq_id, language)
        while True:
            done = self.history.rendering(*key)
            if done is not None:
                return done
            flight = self._flights.get(key)
            if flight is None:
                return await self._fly(key, segment, language, live)
            await flight.done.wait()
            if flight.result is not None:
                return flight.result

    async def finals_landed(self) -> None:
        """Return once no final is being translated: partial lanes wait here before
        asking the engine, so a final's request never shares the engine, the event
        loop or the rate limit with partials'."""
        while self._flights:
            await self._landed.wait()

    async def partial(self, segment: Segment, language: str) -> Rendered:
        """``segment`` (a partial) in ``language``; not kept."""
        caption = await self._translate(segment, language)
        return render(caption)

    async def _fly(
        self, key: tuple[int, str], segment: Segment, language: str, live: bool
    ) -> Rendered:
        flight = self._flights[key] = _Flight()
        try:
            rendered = render(await self._translate(segment, language))
            self.history.add(rendered)
            flight.result = rendered
        finally:
            del self._flights[key]
            flight.done.set()
            if not self._flights:
                landed, self._landed = self._landed, trio.Event()
                landed.set()
        if self.publish is not None and not live and language != segment.source_lang:
            await self.publish(rendered)
        return rendered

    async def _translate(self, segment: Segment, language: str) -> Caption:
        caption = await translate_segment(
            self.engine,
            segment,
            language,
            context=self.history.texts_before(segment.seq_id, self.context_segments),
            timeout_s=self.timeout_s,
            glossary=self.glossary(),
            metrics=self.metrics,
        )
        return attrs.evolve(caption, translated_at=trio.current_time())
