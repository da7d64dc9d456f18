"""Engines that fail on purpose, for tests and the bench: they wrap a working engine
and misbehave for some calls only, so one server can run a faulty session beside a
healthy one.

``FaultyTranslator`` picks its victims by source language, target language or a marker
in the text; ``FaultySpeechToText`` by the stream's language (one session's source
language). Everything else goes straight to the wrapped engine.

A slow fault holds each call ``delay_s`` (``None``: until ``release()``), either
awaiting (a slow provider) or blocking a worker thread (a blocking engine, as Whisper
or a synchronous SDK would), which shows the event loop stays free meanwhile.
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Sequence

import attrs
import trio

from babel_actors.engines.base import SpeechToText, Translator, optional_keywords, translation_route
from babel_actors.errors import EngineError, TranslationFailed
from babel_actors.events import AudioEvent, SttResult
from babel_actors.glossary import Glossary

__all__ = ["Fault", "FaultySpeechToText", "FaultyTranslator"]


class Fault(enum.Enum):
    """How a faulty engine misbehaves on the calls it picks."""

    HANG = "hang"
    """Never answers: a translation waits until cancelled (the translator's timeout); a
    speech stream takes the audio and never sends a result."""
    ERROR = "error"
    """Fails as a provider outage does: ``TranslationFailed`` at once; ``EngineError``
    on a speech stream's first audio."""
    SLOW = "slow"
    """Answers, late: each translation or speech result is held back, awaiting."""
    BLOCK = "block"
    """Answers, late, as a blocking engine: a worker thread is blocked meanwhile."""
    CRASH = "crash"
    """A bug: ``RuntimeError`` (a translation at once; a speech stream on its first
    audio), which no actor handles: it ends the session."""


class _Count:
    """A count that can be awaited: calls picked, results held."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = trio.Event()

    def add(self) -> None:
        self.count += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_for(self, count: int) -> None:
        while self.count < count:
            await self._changed.wait()


class _Hold:
    """How long a slow fault holds a call back: ``delay_s`` from a start, or until
    ``release()`` when ``delay_s`` is None."""

    def __init__(self, delay_s: float | None, threads: int) -> None:
        self.delay_s = delay_s
        self._released = trio.Event()
        self._released_for_threads = threading.Event()
        self._limiter = trio.CapacityLimiter(threads)
        self.entered = _Count()
        """Calls or results that were held back (or are being held)."""

    def release(self) -> None:
        self._released.set()
        self._released_for_threads.set()

    async def wait(self, since: float, *, blocking: bool) -> None:
        """Until ``delay_s`` after ``since`` (trio time), or the release."""
        self.entered.add()
        due = None if self.delay_s is None else since + self.delay_s
        if not blocking:
            with trio.move_on_at(math.inf if due is None else due):
                await self._released.wait()
            return
        timeout = None if due is None else max(0.0, due - trio.current_time())
        # Abandoned on cancellation, the thread sleeps on; the limiter bounds how many.
        await trio.to_thread.run_sync(
            self._released_for_threads.wait,
            timeout,
            limiter=self._limiter,
            abandon_on_cancel=True,
        )


class _Faulted:
    """What a test watches and controls on a faulty engine: the calls (translations)
    or streams (speech) that met the fault, and the results a slow fault holds."""

    _hold: _Hold
    _victims: _Count

    @property
    def faulted(self) -> int:
        """Calls or streams that met the fault."""
        return self._victims.count

    async def wait_faulted(self, count: int) -> None:
        """Until ``count`` calls or streams have met the fault (each has started
        misbehaving)."""
        await self._victims.wait_for(count)

    @property
    def held(self) -> int:
        """Results a slow fault has held back (or is holding)."""
        return self._hold.entered.count

    async def wait_held(self, count: int) -> None:
        """Until a slow fault has held back ``count`` results."""
        await self._hold.entered.wait_for(count)

    def release(self) -> None:
        """Let every held result (and any later one) through now."""
        self._hold.release()


class FaultyTranslator(_Faulted):
    """``engine``, with ``fault`` on the calls that match every filter given:
    ``for_sources``, ``for_targets`` (language tags), ``for_marker`` (a substring of
    the text). With no filter, every call is faulty.

    Backpressure: a held call holds its caller (one translator lane); ``BLOCK`` calls
    also queue for ``threads`` worker threads.
    Cancellation: a held or hung call ends at once; a blocked thread is abandoned and
    sleeps out its delay (or until ``release``).
    Error handling: see ``Fault``; calls that do not match behave as ``engine``'s.
    """

    def __init__(
        self,
        engine: Translator,
        fault: Fault,
        *,
        for_sources: frozenset[str] | None = None,
        for_targets: frozenset[str] | None = None,
        for_marker: str | None = None,
        delay_s: float | None = 0.1,
        threads: int = 1,
    ) -> None:
        self.engine = engine
        self.fault = fault
        self.name = f"faulty-{engine.name}"
        self._sources = for_sources
        self._targets = for_targets
        self._marker = for_marker
        self._hold = _Hold(delay_s, threads)
        self._victims = _Count()
        self.calls = 0
        """Every ``translate`` call that reached this engine."""

    def picks(self, text: str, *, source: str, target: str) -> bool:
        """Whether a call with these arguments meets the fault."""
        return (
            (self._sources is None or source in self._sources)
            and (self._targets is None or target in self._targets)
            and (self._marker is None or self._marker in text)
        )

    def sources(self) -> frozenset[str]:
        return self.engine.sources()

    def targets(self, source: str) -> frozenset[str]:
        return self.engine.targets(source)

    def route(self, source: str, target: str) -> tuple[str, ...]:
        return translation_route(self.engine, source, target)

    async def translate(
        self,
        text: str,
        *,
        source: str,
        target: str,
        context: Sequence[str] = (),
        glossary: Glossary | None = None,
        partial: bool = False,
    ) -> str:
        self.calls += 1
        if self.picks(text, source=source, target=target):
            self._victims.add()
            await self._misbehave(f"{source}->{target}")
        extra = optional_keywords(glossary, partial=partial)
        return await self.engine.translate(
            text, source=source, target=target, context=context, **extra
        )

    async def _misbehave(self, what: str) -> None:
        fault = self.fault
        if fault is Fault.HANG:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        if fault is Fault.ERROR:
            raise TranslationFailed(f"{self.name}: injected failure ({what})")
        if fault is Fault.CRASH:
            raise RuntimeError(f"{self.name}: injected crash ({what})")
        await self._hold.wait(trio.current_time(), blocking=fault is Fault.BLOCK)

    async def aclose(self) -> None:
        self.release()
        await self.engine.aclose()


class FaultySpeechToText(_Faulted):
    """``engine``, with ``fault`` on the streams whose language is in
    ``for_languages`` (every stream when None).

    Backpressure: ``SLOW`` and ``BLOCK`` streams hold each result ``delay_s`` after
    the engine produced it (latency, not throughput: results in flight wait in a
    channel of ``queue_size``, and a full one blocks the engine). A ``HANG`` stream
    reads its audio as it comes and drops it.
    Cancellation: ends every stream at once; a blocked thread is abandoned.
    Error handling: see ``Fault``. A failing stream leaves ``audio`` open (closing it
    would add the feeder's ``BrokenResourceError`` to the error the caller expects).
    """

    def __init__(
        self,
        engine: SpeechToText,
        fault: Fault,
        *,
        for_languages: frozenset[str] | None = None,
        delay_s: float | None = 0.1,
        threads: int = 1,
        queue_size: int = 64,
    ) -> None:
        self.engine = engine
        self.fault = fault
        self.name = f"faulty-{engine.name}"
        self.sample_rate = engine.sample_rate
        self._languages = for_languages
        self._hold = _Hold(delay_s, threads)
        self._queue_size = queue_size
        self._victims = _Count()
        self.streams = 0
        """Every stream opened on this engine."""

    def languages(self) -> frozenset[str]:
        return self.engine.languages()

    async def transcribe(
        self,
        audio: trio.MemoryReceiveChannel[AudioEvent],
        results: trio.MemorySendChannel[SttResult],
        *,
        language: str,
        glossary: Glossary | None = None,
    ) -> None:
        self.streams += 1
        extra = optional_keywords(glossary)
        if self._languages is not None and language not in self._languages:
            await self.engine.transcribe(audio, results, language=language, **extra)
            return
        self._victims.add()
        fault = self.fault
        if fault is Fault.HANG:
            async for _ in audio:
                pass
            await trio.sleep_forever()
        if fault in (Fault.ERROR, Fault.CRASH):
            try:
                await audio.receive()
            except trio.EndOfChannel:
                return
            if fault is Fault.ERROR:
                raise EngineError(f"{self.name}: injected failure ({language} stream)")
            raise RuntimeError(f"{self.name}: injected crash ({language} stream)")
        held_send, held_receive = trio.open_memory_channel[SttResult](self._queue_size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pass_on_late, held_receive, results)
            async with held_send:
                await self.engine.transcribe(audio, held_send, language=language, **extra)

    async def _pass_on_late(
        self,
        held: trio.MemoryReceiveChannel[SttResult],
        results: trio.MemorySendChannel[SttResult],
    ) -> None:
        blocking = self.fault is Fault.BLOCK
        async with held:
            async for result in held:
                await self._hold.wait(result.produced_at, blocking=blocking)
                await results.send(attrs.evolve(result, produced_at=trio.current_time()))

    async def aclose(self) -> None:
        self.release()
        await self.engine.aclose()
