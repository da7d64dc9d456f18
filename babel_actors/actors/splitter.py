"""The splitter actor: engine results in, numbered partial and final segments out."""

from __future__ import annotations

import trio

from babel_actors.clock import now_ms
from babel_actors.events import Segment, SourceLanguage, SttOutput, SttResult


class Splitter:
    """Pure logic: turns ``SttResult``s into ``Segment``s with a session-wide seqId.

    Invariants (property-tested): seqIds strictly increase; every non-empty final
    result yields exactly one final segment, in order; a partial that repeats the
    previous one, or an empty one, yields nothing.
    """

    def __init__(self, source_lang: str, *, first_seq: int = 1) -> None:
        self.source_lang = source_lang
        self._next_seq = first_seq
        self._last_partial: str | None = None

    def feed(self, result: SttResult, *, now: float, wall_ms: int) -> Segment | None:
        """The segment ``result`` makes, or None when it adds nothing."""
        text = " ".join(result.text.split())
        if result.is_final:
            if not text:
                # Nothing settles: the client still shows the last partial, so an
                # identical one next would only repeat it.
                return None
            self._last_partial = None
        elif not text or text == self._last_partial:
            return None
        else:
            self._last_partial = text
        segment = Segment(
            seq_id=self._next_seq,
            text=text,
            is_partial=not result.is_final,
            source_lang=result.language or self.source_lang,
            recognized_at=result.produced_at or now,
            wall_ms=wall_ms,
            audio_received_at=result.audio_received_at,
            audio_ingested_at=result.audio_ingested_at,
            split_at=now,
        )
        self._next_seq += 1
        return segment


async def run_splitter(
    inbox: trio.MemoryReceiveChannel[SttOutput],
    outbox: trio.MemorySendChannel[Segment],
    *,
    splitter: Splitter,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Number the engine's results for the session, each labelled with the language
    of the stream that heard it (a ``SourceLanguage`` in the inbox changes it).

    Backpressure: blocks on a full outbox; the translator drains it quickly, since it
    only dispatches to per-language lanes.
    Cancellation: safe at any await; nothing is held.
    Error handling: none needed; the logic cannot fail on well-typed input.
    """
    async with inbox, outbox:
        task_status.started()
        async for result in inbox:
            if isinstance(result, SourceLanguage):
                splitter.source_lang = result.language
                continue
            segment = splitter.feed(result, now=trio.current_time(), wall_ms=now_ms())
            if segment is not None:
                await outbox.send(segment)
