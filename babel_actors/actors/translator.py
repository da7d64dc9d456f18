"""The translator actor: each segment translated once per wanted language.

One lane per target language, so a slow language never holds up another, and finals
stay in order within each language. Finals go through the session's ``Renderer``, the
one render path that late joiners use too, so each (final, language) costs one engine
call whoever asks. Listeners who read the source language get the segment as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from babel_actors.events import AUTO_LANGUAGE, Segment
from babel_actors.renderer import Renderer
from babel_actors.wire.server import Rendered


class _Lane:
    """The finals and the latest partial waiting for one target language."""

    def __init__(self, target: str, queue_size: int) -> None:
        self.target = target
        self.finals_send, self.finals_receive = trio.open_memory_channel[Segment](queue_size)
        self.partial: Segment | None = None
        self.partial_ready = trio.Event()
        self.last_final_seq = 0

    def offer_partial(self, segment: Segment) -> None:
        self.partial = segment
        self.partial_ready.set()


async def run_translator(
    inbox: trio.MemoryReceiveChannel[Segment],
    outbox: trio.MemorySendChannel[Rendered],
    *,
    renderer: Renderer,
    languages: Callable[[], frozenset[str]],
    queue_size: int,
    partial_interval_s: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Dispatch each segment to the lanes of the languages wanted right now.

    ``languages()`` names the languages someone reads at this moment; a final is
    translated into each of them exactly once, however many listeners share one.
    Partials: coalesced per lane (only the latest waits), translated at most once per
    ``partial_interval_s``, by a task of their own, never while a final is being
    translated (``Renderer.finals_landed``) so they never delay a final, and dropped
    when a later final has already been dispatched.
    Backpressure: a lane holds ``queue_size`` finals; when it is full the dispatcher
    blocks (and so, behind it, the splitter and STT). Captions block on a full outbox.
    Draining: when ``inbox`` ends, every lane finishes the finals it holds (partials
    are dropped), then the outbox closes.
    Cancellation: cancels every lane; translations in flight are abandoned.
    Error handling: a failed or timed-out translation becomes the source text with
    ``has_translation`` false (``Renderer``).
    """
    lanes: dict[str, _Lane] = {}
    async with outbox, trio.open_nursery() as finals:
        async with inbox, trio.open_nursery() as partials:
            task_status.started()
            async for segment in inbox:
                if not segment.is_partial:
                    renderer.admit(segment)
                for target in sorted(languages()):
                    if target in (segment.source_lang, AUTO_LANGUAGE):
                        await outbox.send(await _as_is(renderer, segment, target))
                        continue
                    lane = lanes.get(target)
                    if lane is None:
                        lane = lanes[target] = _Lane(target, queue_size)
                        finals.start_soon(_translate_finals, lane, renderer, outbox.clone())
                        partials.start_soon(
                            _translate_partials,
                            lane,
                            renderer,
                            outbox.clone(),
                            partial_interval_s,
                        )
                    if segment.is_partial:
                        lane.offer_partial(segment)
                    else:
                        lane.last_final_seq = segment.seq_id
                        await lane.finals_send.send(segment)
            for lane in lanes.values():
                lane.finals_send.close()
            partials.cancel_scope.cancel()


async def _as_is(renderer: Renderer, segment: Segment, target: str) -> Rendered:
    """``segment`` for readers of its own language (or of ``auto``, whatever language
    was heard): no translation."""
    if segment.is_partial:
        return await renderer.partial(segment, target)
    return await renderer.final(segment, target, live=True)


async def _translate_finals(
    lane: _Lane,
    renderer: Renderer,
    outbox: trio.MemorySendChannel[Rendered],
) -> None:
    async with outbox, lane.finals_receive:
        async for segment in lane.finals_receive:
            await outbox.send(await renderer.final(segment, lane.target, live=True))


async def _translate_partials(
    lane: _Lane,
    renderer: Renderer,
    outbox: trio.MemorySendChannel[Rendered],
    interval_s: float,
) -> None:
    next_at = -math.inf
    async with outbox:
        while True:
            await lane.partial_ready.wait()
            await trio.sleep_until(next_at)
            await renderer.finals_landed()
            lane.partial_ready = trio.Event()
            segment, lane.partial = lane.partial, None
            if segment is None or segment.seq_id < lane.last_final_seq:
                continue
            next_at = trio.current_time() + interval_s
            rendered = await renderer.partial(segment, lane.target)
            if segment.seq_id > lane.last_final_seq:
                await outbox.send(rendered)
