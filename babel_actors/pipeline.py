"""The five actors of one session and the channels between them; nothing else.

::

    feed() --> ingest --> stt --> splitter --> translator --> broadcaster --> deliver()
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import trio

from babel_actors.actors.broadcaster import run_broadcaster
from babel_actors.actors.ingest import Resampler, run_ingest
from babel_actors.actors.splitter import Splitter, run_splitter
from babel_actors.actors.stt import run_stt
from babel_actors.actors.translator import run_translator
from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText
from babel_actors.events import (
    EndOfSpeech,
    HostAudio,
    IngestEvent,
    Segment,
    SourceLanguage,
    SttInput,
    SttOutput,
)
from babel_actors.glossary import Glossary
from babel_actors.metrics import Metrics
from babel_actors.renderer import Renderer
from babel_actors.stages import StageRecorder
from babel_actors.wire.server import Rendered


class Pipeline:
    """Host audio in, rendered captions out through ``deliver``.

    Settings travel in-band, in order with the audio: ``set_source_language`` and
    ``set_glossary`` queue typed events behind the audio already fed.
    Two ways to stop: ``finish`` closes the input, and every stage drains in order
    (the engine finalises what it holds, each final is translated and delivered) and
    ``run`` returns; cancelling ``run``'s scope stops at once, for errors.

    Backpressure: ``feed`` blocks while the ingest channel is full, which stops the
    host's connection reading, so TCP pushes back on a client faster than the engine.
    Cancellation: ``run`` cancelled stops every actor; what they hold is dropped.
    Error handling: an engine failure is reported through ``on_error`` and the stream
    reopens (``run_stt``); any other exception in an actor propagates out of ``run``.
    Input after ``finish`` (or once ``run`` has stopped) is ignored.
    """

    def __init__(
        self,
        config: Config,
        stt: SpeechToText,
        renderer: Renderer,
        *,
        deliver: Callable[[Rendered], int],
        languages: Callable[[], frozenset[str]],
        source_lang: str,
        on_error: Callable[[str], None],
        first_seq: int = 1,
        stages: StageRecorder | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.stt = stt
        self.renderer = renderer
        self.deliver = deliver
        self.languages = languages
        self.source_lang = source_lang
        self.on_error = on_error
        self.first_seq = first_seq
        """The seqId of the first segment (a session moving between nodes continues
        after the last one it used)."""
        self.stages = stages
        self.metrics = metrics
        self.sample_rate = config.default_sample_rate
        """The host's PCM rate (``init.sampleRate``)."""
        self._input, self._ingest_receive = trio.open_memory_channel[IngestEvent](
            config.audio_queue
        )
        self.finishing = False

    async def feed(self, pcm: bytes, sample_rate: int | None = None) -> None:
        """Queue host PCM. Blocks while the pipeline is behind."""
        await self._put(HostAudio(pcm, sample_rate or self.sample_rate, trio.current_time()))

    async def end_of_speech(self) -> None:
        """The speaker stopped: what the engine holds becomes a final."""
        await self._put(EndOfSpeech(trio.current_time()))

    async def set_source_language(self, language: str) -> None:
        """Recognise ``language`` from the audio fed after this on."""
        await self._put(SourceLanguage(language))

    async def set_glossary(self, glossary: Glossary) -> None:
        """Reopen the speech stream with ``glossary``'s words as hints."""
        await self._put(glossary)

    async def finish(self) -> None:
        """Stop taking input; what was fed is still recognised, translated and
        delivered, then ``run`` returns. Idempotent."""
        if self.finishing:
            return
        self.finishing = True
        # Closing the audio is enough: an engine finalises what it heard when its
        # audio ends (the ``SpeechToText`` contract), without inventing more.
        await self._input.aclose()

    async def _put(self, event: IngestEvent) -> None:
        if self.finishing:
            return
        try:
            await self._input.send(event)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # finished, or stopped: late input has nowhere to go

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the actors until the input is finished and drained."""
        config = self.config
        results_send, results_receive = trio.open_memory_channel[SttOutput](config.result_queue)
        frames_send, frames_receive = trio.open_memory_channel[SttInput](config.audio_queue)
        segments_send, segments_receive = trio.open_memory_channel[Segment](config.segment_queue)
        captions_send, captions_receive = trio.open_memory_channel[Rendered](config.caption_queue)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    run_broadcaster,
                    captions_receive,
                    deliver=self.deliver,
                    stages=self.stages,
                    metrics=self.metrics,
                )
            )
            await nursery.start(
                partial(
                    run_translator,
                    segments_receive,
                    captions_send,
                    renderer=self.renderer,
                    languages=self.languages,
                    queue_size=config.lane_queue,
                    partial_interval_s=config.partial_interval_s,
                )
            )
            await nursery.start(
                partial(
                    run_splitter,
                    results_receive,
                    segments_send,
                    splitter=Splitter(self.source_lang, first_seq=self.first_seq),
                )
            )
            await nursery.start(
                partial(
                    run_stt,
                    frames_receive,
                    results_send,
                    engine=self.stt,
                    language=self.source_lang,
                    queue_size=config.audio_queue,
                    retry_after_s=config.engine_retry_s,
                    on_error=self.on_error,
                    metrics=self.metrics,
                )
            )
            await nursery.start(
                partial(
                    run_ingest,
                    self._ingest_receive,
                    frames_send,
                    resampler=Resampler(self.stt.sample_rate),
                )
            )
            task_status.started()
