"""The library API: a session pipeline inside an embedder's own trio program."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from babel_actors.audience import Role
from babel_actors.config import Config
from babel_actors.counters import MemberCounters
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.events import Caption
from babel_actors.metrics import Metrics
from babel_actors.session import Session


class CaptionStream:
    """A member that hands captions to an embedder through a bounded channel.

    Iterate it (``async for caption in stream``) to read captions of ``target_lang``.
    Backpressure: the channel holds ``capacity`` captions. When it is full a partial is
    dropped (the next one replaces it anyway); a final that does not fit closes the
    stream, and ``overflowed`` is set: resume with ``listen(..., last_seq=...)``.
    The stream also ends when the session does. Dropped partials count as coalesced,
    an overflow as a member closed too slow, in the session's metrics.
    """

    role = Role.LISTENER

    def __init__(self, target_lang: str, *, capacity: int = 256) -> None:
        self.target_lang = target_lang
        self._send, self._receive = trio.open_memory_channel[Caption](capacity)
        self.overflowed = False
        self.partials_dropped = 0
        self._counters: MemberCounters | None = None

    def send_caption(self, caption: Caption, frame: bytes) -> None:
        try:
            self._send.send_nowait(caption)
        except trio.WouldBlock:
            if caption.segment.is_partial:
                self.partials_dropped += 1
                if self._counters is not None:
                    self._counters.coalesced.count += 1
            else:
                self.overflowed = True
                self._send.close()
                if self._counters is not None:
                    self._counters.too_slow.inc()
        except trio.ClosedResourceError:
            pass

    def send_notice(self, message: dict[str, Any], frame: bytes) -> None:
        return None

    def close(self, code: int, reason: str) -> None:
        self._send.close()

    def unsent_bytes(self) -> int:
        return 0

    def count_into(self, counters: MemberCounters | None) -> None:
        self._counters = counters

    def __aiter__(self) -> AsyncIterator[Caption]:
        return self._receive.__aiter__()

    async def receive(self) -> Caption:
        """The next caption; raises ``trio.EndOfChannel`` once the stream has ended."""
        return await self._receive.receive()


class EmbeddedSession(Session):
    """A ``Session`` in an embedder's program: ``listen`` subscribes to its captions."""

    @asynccontextmanager
    async def listen(
        self, language: str, *, last_seq: int | None = None, capacity: int = 256
    ) -> AsyncIterator[CaptionStream]:
        """Captions in ``language`` (recent finals first) for the ``async with`` block;
        leaving it unsubscribes. The stream ends by itself when the session ends, after
        every final said before: ``async for caption in stream`` simply finishes."""
        self.check_target(language)
        stream = CaptionStream(language, capacity=capacity)
        await self.add_member(stream, last_seq=last_seq)
        try:
            yield stream
        finally:
            self.remove_member(stream)


@asynccontextmanager
async def open_session(
    *,
    stt: SpeechToText,
    mt: Translator,
    config: Config | None = None,
    source_lang: str | None = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[EmbeddedSession]:
    """Run one session pipeline for the duration of the ``async with`` block.

    Feed it with ``await session.feed(pcm, sample_rate)`` and
    ``await session.end_of_speech()``; read it with ``async with session.listen("es")``.
    Leaving the block finishes the session: what was fed is still recognised,
    translated and delivered to the streams (``config.drain_s`` at most), then they
    end. Leaving it by an exception (or cancellation) ends it at once.
    Error handling: a crash inside the pipeline ends the session and propagates out of
    the block (the exception itself, not a group).
    Engines stay open: the caller owns them (and may share them between sessions).
    The session counts into ``metrics`` (pass one to several sessions to add them up,
    and read ``metrics.exposition()``); without, into a ``Metrics`` of its own,
    ``session.metrics``.
    """
    session = EmbeddedSession(config or Config(), stt, mt, source_lang=source_lang, metrics=metrics)
    session.check_source(session.source_lang)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(session.run)
            try:
                yield session
            except BaseException:
                session.cancel("closed", "The session was closed by its program.")
                raise
            session.finish("closed", "The session was closed by its program.")
            await session.ended.wait()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            error = group.exceptions[0]
            raise error from error.__cause__
        raise


async def listen(
    session: Session, language: str, *, last_seq: int | None = None, capacity: int = 256
) -> CaptionStream:
    """Subscribe to ``session``'s captions in ``language`` (recent finals first), for
    the session's whole life (``EmbeddedSession.listen`` unsubscribes when done)."""
    session.check_target(language)
    stream = CaptionStream(language, capacity=capacity)
    await session.add_member(stream, last_seq=last_seq)
    return stream
