"""The STT actor: runs one engine stream at a time, restarting it on a language change
or after an engine failure.

Counts (``Metrics``, when given): each stream it reopens, by engine and reason
(``error``, ``language``, ``glossary``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from babel_actors.engines.base import SpeechToText
from babel_actors.errors import EngineError, RequestRefused
from babel_actors.events import AudioEvent, SourceLanguage, SttInput, SttOutput
from babel_actors.glossary import Glossary
from babel_actors.metrics import Metrics

log = logging.getLogger(__name__)


async def run_stt(
    inbox: trio.MemoryReceiveChannel[SttInput],
    outbox: trio.MemorySendChannel[SttOutput],
    *,
    engine: SpeechToText,
    language: str,
    queue_size: int,
    retry_after_s: float,
    on_error: Callable[[str], None],
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Feed audio to ``engine.transcribe`` and pass its results on.

    A ``SourceLanguage`` ends the current stream (the engine finalises what it holds)
    and opens a new one in that language, after passing the event on: results are
    tagged in-band, so the splitter labels each one with the language of the stream
    that heard it. A ``Glossary`` likewise opens a stream with it.
    Draining: when ``inbox`` ends, the stream's audio ends, the engine finalises what
    it holds, and the actor returns once every result is sent.
    Backpressure: blocks on the engine's bounded inbox; results block on a full outbox.
    Cancellation: cancels the engine stream with the actor.
    Error handling: an ``EngineError`` is reported through ``on_error`` (the session
    tells host and listeners), and a new stream opens after ``retry_after_s``; audio
    that arrives meanwhile waits in the inbox. A ``RequestRefused`` (the provider is up
    but will not take this language) is reported once, and no stream opens again until
    the host picks another language: its audio meanwhile is dropped.
    Counts: ``metrics``, when given, counts every stream reopened, by reason.
    """
    async with inbox, outbox:
        task_status.started()
        ended = False
        glossary = Glossary()
        failure: BaseException | None = None
        restart = ""
        switched = False
        while not ended:
            if restart and metrics is not None:
                metrics.stt_restarted(engine.name, restart)
            feed_send, feed_receive = trio.open_memory_channel[AudioEvent](queue_size)
            try:
                async with trio.open_nursery() as nursery:
                    args = (engine, feed_receive, outbox, language, glossary)
                    nursery.start_soon(_transcribe, *args)
                    async with feed_send:
                        ended = True
                        async for event in inbox:
                            if isinstance(event, SourceLanguage):
                                if event.language == language:
                                    continue
                                language = event.language
                                ended, restart, switched = False, "language", True
                                break
                            if isinstance(event, Glossary):
                                glossary = event
                                ended, restart = False, "glossary"
                                break
                            await feed_send.send(event)
            except* EngineError as group:
                # The engine fails inside the stream's nursery: its error comes grouped.
                failure = group.exceptions[0]
            if isinstance(failure, RequestRefused):
                log.info("speech engine %s refused %s: %s", engine.name, language, failure)
                on_error(f"speech recognition refused ({failure}); choose another language")
                failure = None
                language, glossary, ended = await _until_another_language(
                    inbox, language, glossary
                )
                restart, switched = "language", not ended
            elif failure is not None:
                log.warning("speech engine %s failed: %s", engine.name, failure)
                on_error(f"speech recognition failed ({failure}); retrying")
                ended, restart = False, "error"
                failure = None
                await trio.sleep(retry_after_s)
            if switched:
                # Every result of the old stream is out: what follows is heard in this.
                await outbox.send(SourceLanguage(language))
                switched = False


async def _until_another_language(
    inbox: trio.MemoryReceiveChannel[SttInput], language: str, glossary: Glossary
) -> tuple[str, Glossary, bool]:
    """After the engine refused ``language``: drop audio (nothing can hear it) until
    the host picks another language; the new language, the latest glossary, and
    whether the inbox ended first."""
    async for event in inbox:
        if isinstance(event, SourceLanguage) and event.language != language:
            return event.language, glossary, False
        if isinstance(event, Glossary):
            glossary = event
    return language, glossary, True


async def _transcribe(
    engine: SpeechToText,
    audio: trio.MemoryReceiveChannel[AudioEvent],
    outbox: trio.MemorySendChannel[SttOutput],
    language: str,
    glossary: Glossary,
) -> None:
    # The engine must not close the actor's outbox: it outlives each stream.
    if glossary:
        await engine.transcribe(audio, outbox, language=language, glossary=glossary)
    else:
        await engine.transcribe(audio, outbox, language=language)
