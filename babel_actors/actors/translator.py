"""The translator actor: each segment translated once per wanted language.

One lane per target language, so a slow language never holds up another, and finals
stay in order within each language. Listeners who read the source language get the
segment as it is, with no translation at all.

Counts (``Metrics``, when given): every call to the engine, by engine and language
pair, and every one that failed or timed out (``translate_segment``, which every
translation goes through, a joiner's catch-up included).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence

import attrs
import trio

from babel_actors.engines.base import Translator, optional_keywords
from babel_actors.errors import BabelError
from babel_actors.events import Caption, Segment
from babel_actors.glossary import Glossary
from babel_actors.metrics import Metrics

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
    if target == segment.source_lang:
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
            return Caption(segment, target, text, True)
        except BabelError as exc:
            log.warning("translation %s->%s failed: %s", source, target, exc)
            if metrics is not None:
                metrics.translation_failed(engine.name, source, target, "error")
            return Caption(segment, target, segment.text, False)
    log.warning("translation %s->%s timed out after %ss", source, target, timeout_s)
    if metrics is not None:
        metrics.translation_failed(engine.name, source, target, "timeout")
    return Caption(segment, target, segment.text, False)


_Job = tuple[Segment, tuple[str, ...]]
"""A segment and the previous finals' text, its translation context."""


class _Lane:
    """The finals and the latest partial waiting for one target language."""

    def __init__(
        self,
        target: str,
        queue_size: int,
        engine: Translator,
        timeout_s: float,
        glossary: Callable[[], Glossary],
        metrics: Metrics | None,
    ) -> None:
        self.target = target
        self.engine = engine
        self.timeout_s = timeout_s
        self.glossary = glossary
        self.metrics = metrics
        self.finals_send, self.finals_receive = trio.open_memory_channel[_Job](queue_size)
        self.partial: _Job | None = None
        self.partial_ready = trio.Event()
        self.last_final_seq = 0

    def offer_partial(self, job: _Job) -> None:
        self.partial = job
        self.partial_ready.set()

    async def translate(self, segment: Segment, context: tuple[str, ...]) -> Caption:
        caption = await translate_segment(
            self.engine,
            segment,
            self.target,
            context=context,
            timeout_s=self.timeout_s,
            glossary=self.glossary(),
            metrics=self.metrics,
        )
        return _stamped(caption)


async def run_translator(
    inbox: trio.MemoryReceiveChannel[Segment],
    outbox: trio.MemorySendChannel[Caption],
    *,
    engine: Translator,
    languages: Callable[[], frozenset[str]],
    queue_size: int,
    partial_interval_s: float,
    timeout_s: float,
    context_segments: int,
    glossary: Callable[[], Glossary] = Glossary,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Dispatch each segment to the lanes of the languages wanted right now.

    ``languages()`` names the languages someone reads at this moment; a segment is
    translated into each of them exactly once, however many listeners share one.
    Partials: coalesced per lane (only the latest waits), translated at most once per
    ``partial_interval_s``, by a task of their own so they never delay a final, and
    dropped when a later final has already been dispatched.
    Backpressure: a lane holds ``queue_size`` finals; when it is full the dispatcher
    blocks (and so, behind it, the splitter and STT). Captions block on a full outbox.
    Cancellation: cancels every lane; translations in flight are abandoned.
    Error handling: a failed or timed-out translation becomes the source text with
    ``has_translation`` false (``translate_segment``).
    ``glossary()`` is the session's glossary when a translation starts.
    Counts: ``metrics``, when given, counts each engine call and each failure.
    """
    context: deque[str] = deque(maxlen=context_segments)
    lanes: dict[str, _Lane] = {}
    async with inbox, outbox, trio.open_nursery() as nursery:
        task_status.started()
        async for segment in inbox:
            job = (segment, tuple(context))
            for target in sorted(languages()):
                if target == segment.source_lang:
                    now = trio.current_time()
                    await outbox.send(Caption(segment, target, segment.text, True, now))
                    continue
                lane = lanes.get(target)
                if lane is None:
                    lane = lanes[target] = _Lane(
                        target, queue_size, engine, timeout_s, glossary, metrics
                    )
                    nursery.start_soon(_translate_finals, lane, outbox.clone())
                    nursery.start_soon(
                        _translate_partials, lane, outbox.clone(), partial_interval_s
                    )
                if segment.is_partial:
                    lane.offer_partial(job)
                else:
                    lane.last_final_seq = segment.seq_id
                    await lane.finals_send.send(job)
            if not segment.is_partial:
                context.append(segment.text)
        for lane in lanes.values():
            await lane.finals_send.aclose()
        nursery.cancel_scope.cancel()


async def _translate_finals(
    lane: _Lane,
    outbox: trio.MemorySendChannel[Caption],
) -> None:
    async with outbox, lane.finals_receive:
        async for segment, context in lane.finals_receive:
            await outbox.send(await lane.translate(segment, context))


async def _translate_partials(
    lane: _Lane,
    outbox: trio.MemorySendChannel[Caption],
    interval_s: float,
) -> None:
    next_at = -math.inf
    async with outbox:
        while True:
            await lane.partial_ready.wait()
            await trio.sleep_until(next_at)
            lane.partial_ready = trio.Event()
            job, lane.partial = lane.partial, None
            if job is None or job[0].seq_id < lane.last_final_seq:
                continue
            segment, context = job
            next_at = trio.current_time() + interval_s
            caption = await lane.translate(segment, context)
            if segment.seq_id > lane.last_final_seq:
                await outbox.send(caption)


def _stamped(caption: Caption) -> Caption:
    """``caption`` marked with the moment it leaves the translator (stage timing)."""
    return attrs.evolve(caption, translated_at=trio.current_time())
