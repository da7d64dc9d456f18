"""A real Pipeline (scripted STT, echo MT, a Room): audio in, captions out; finish
drains, cancelling stops at once, late input is ignored, language changes in-band."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio
import trio.testing
from members import GatedTranslator, RecordingMember

from babel_actors.config import Config
from babel_actors.engines.base import Translator
from babel_actors.engines.scripted import ScriptLine
from babel_actors.history import History
from babel_actors.metrics import Metrics
from babel_actors.pipeline import Pipeline
from babel_actors.renderer import Renderer
from babel_actors.room import Room
from babel_actors.testing import EchoTranslator, ScriptedSpeechToText, sentence_script, silence

TIMEOUT_S = 60
SENTENCES = ["one two three", "four five six", "seven eight nine"]
CHUNK_S = 0.125
"""Seconds of audio per ``feed``: exact in binary, so chunk lengths add up exactly."""


@attrs.define
class Rig:
    pipeline: Pipeline
    room: Room
    engine: Translator
    errors: list[str]


def rig(
    *,
    mt: Translator | None = None,
    script: tuple[ScriptLine, ...] = sentence_script(SENTENCES, seconds_each=1.0),
) -> Rig:
    config = Config()
    engine = mt or EchoTranslator()
    renderer = Renderer(
        engine,
        History(config.history_size),
        timeout_s=config.translate_timeout_s,
        context_segments=config.context_segments,
    )
    room = Room(config, renderer, metrics=Metrics())
    errors: list[str] = []
    pipeline = Pipeline(
        config,
        ScriptedSpeechToText(script, sample_rate=16000),
        renderer,
        deliver=room.deliver,
        languages=room.languages,
        source_lang="en",
        on_error=errors.append,
    )
    return Rig(pipeline, room, engine, errors)


async def join(room: Room, *languages: str) -> list[RecordingMember]:
    members = [RecordingMember(language) for language in languages]
    for member in members:
        await room.add_member(member)
    return members


async def feed(pipeline: Pipeline, seconds: float, rate: int = 24000) -> None:
    for _ in range(round(seconds / CHUNK_S)):
        await pipeline.feed(silence(CHUNK_S, rate), rate)


@asynccontextmanager
async def running(pipeline: Pipeline) -> AsyncIterator[trio.Nursery]:
    """``pipeline.run`` in a nursery; the block waits for it to return."""
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.run)
        yield nursery


async def test_finish_with_audio_still_queued_delivers_every_final_then_run_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Finals take 2 s to translate, so at finish some are still queued as audio and
    # others are still being translated.
    mt = GatedTranslator(delay_s=lambda call: 0.0 if call.partial else 2.0)
    setup = rig(mt=mt)
    fr, en = await join(setup.room, "fr", "en")
    with trio.fail_after(TIMEOUT_S):
        async with running(setup.pipeline):
            await feed(setup.pipeline, 3.5)
            assert len(fr.finals) < 3  # the last sentence is still on its way
            await setup.pipeline.finish()
            finished_at = trio.current_time()
        # run returned: the drain is over.
    assert trio.current_time() - finished_at >= 2.0  # it waited for the translations
    assert fr.final_texts == [f"[fr] {s}" for s in SENTENCES]
    assert en.final_texts == SENTENCES
    assert all(c.has_translation for c in fr.captions)
    assert mt.texts("fr", partial=False) == SENTENCES  # each once, in order
    assert setup.errors == []


async def test_audio_queued_before_run_starts_is_drained_in_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    setup = rig()
    [fr] = await join(setup.room, "fr")
    with trio.fail_after(TIMEOUT_S):
        await feed(setup.pipeline, 3.5)  # 28 chunks: within the audio queue
        await setup.pipeline.finish()
        await setup.pipeline.run()
    assert fr.final_texts == [f"[fr] {s}" for s in SENTENCES]
    assert fr.finals == sorted(fr.finals)


async def test_finish_delivers_a_final_that_ends_exactly_with_the_audio_at_the_engine_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    setup = rig(script=(ScriptLine(2.99, "the very end", True),))
    [fr] = await join(setup.room, "fr")
    with trio.fail_after(TIMEOUT_S):
        async with running(setup.pipeline):
            await feed(setup.pipeline, 3.0, rate=16000)
            await setup.pipeline.finish()
    assert fr.final_texts == ["[fr] the very end"]


async def test_finish_delivers_a_final_that_ends_with_the_audio_when_resampled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same at the protocol's default 24 kHz. Fails today: ingest drops what the
    resampler holds when its inbox closes (~33 ms at 24->16 kHz), so the engine hears
    2.967 s of the 3 s fed and the final due at 2.99 s never comes."""
    setup = rig(script=(ScriptLine(2.99, "the very end", True),))
    [fr] = await join(setup.room, "fr")
    with trio.fail_after(TIMEOUT_S):
        async with running(setup.pipeline):
            await feed(setup.pipeline, 3.0, rate=24000)
            await setup.pipeline.finish()
    assert fr.final_texts == ["[fr] the very end"]


async def test_end_of_speech_makes_a_final_of_what_the_engine_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    setup = rig()
    [fr] = await join(setup.room, "fr")
    with trio.fail_after(TIMEOUT_S):
        async with running(setup.pipeline):
            await feed(setup.pipeline, 0.5)  # half the first sentence
            await setup.pipeline.end_of_speech()
            await setup.pipeline.finish()
    assert fr.final_texts == ["[fr] one two three"]


async def test_cancelling_run_stops_at_once_and_later_input_is_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mt = GatedTranslator(hold=lambda call: call.target == "fr")
    setup = rig(mt=mt)
    fr, en = await join(setup.room, "fr", "en")
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(setup.pipeline.run)
            await feed(setup.pipeline, 1.5)
            await trio.testing.wait_all_tasks_blocked()
            assert mt.texts("fr", partial=False) == ["one two three"]  # held
            assert en.final_texts == ["one two three"]
            stopped = trio.current_time()
            nursery.cancel_scope.cancel()
        assert trio.current_time() == stopped  # nothing waited for
        # Nothing takes input any more: each call returns quietly.
        await feed(setup.pipeline, 1.0)
        await setup.pipeline.end_of_speech()
        await setup.pipeline.set_source_language("fr")
        await setup.pipeline.finish()
    assert fr.finals == []
    assert mt.finished == []  # the held translation was abandoned, not completed
    assert en.final_texts == ["one two three"]


async def test_input_after_finish_is_ignored_without_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    setup = rig()
    [fr] = await join(setup.room, "fr")
    with trio.fail_after(TIMEOUT_S):
        async with running(setup.pipeline):
            await feed(setup.pipeline, 1.25)
            await setup.pipeline.finish()
            await feed(setup.pipeline, 2.0)  # would make two more finals
            await setup.pipeline.end_of_speech()
            await setup.pipeline.set_source_language("de")
            await setup.pipeline.finish()  # idempotent
    assert fr.final_texts == ["[fr] one two three"]
    assert [c.segment.source_lang for c in fr.captions] == ["en"] * len(fr.captions)


async def test_set_source_language_labels_the_segments_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    setup = rig()
    fr, es = await join(setup.room, "fr", "es")
    with trio.fail_after(TIMEOUT_S):
        async with running(setup.pipeline):
            await feed(setup.pipeline, 1.25)
            await setup.pipeline.set_source_language("es")
            # The stream restarts in Spanish: the script starts over.
            await feed(setup.pipeline, 1.25)
            await setup.pipeline.finish()
    sentence = SENTENCES[0]
    assert [(c.segment.source_lang, c.text) for c in fr.captions if not c.segment.is_partial] == [
        ("en", f"[fr] {sentence}"),
        ("es", f"[fr] {sentence}"),
    ]
    # Spanish readers now read the source itself.
    assert [(c.segment.source_lang, c.text) for c in es.captions if not c.segment.is_partial] == [
        ("en", f"[es] {sentence}"),
        ("es", sentence),
    ]
    assert fr.finals == sorted(fr.finals) and len(set(fr.finals)) == 2
    assert isinstance(setup.engine, EchoTranslator)
    assert setup.engine.calls[(sentence, "es")] == 1


async def test_feed_blocks_while_the_pipeline_is_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Backpressure end to end: with the translator held and every queue full, feed
    waits instead of buffering without bound."""
    mt = GatedTranslator(hold=lambda call: True)
    config = Config(audio_queue=2, result_queue=2, segment_queue=2, caption_queue=2, lane_queue=1)
    renderer = Renderer(mt, History(100), timeout_s=1000.0, context_segments=2)
    room = Room(config, renderer, metrics=Metrics())
    # A final for every chunk: each one needs a translation.
    script = tuple(ScriptLine(CHUNK_S * n, f"final {n}", True) for n in range(1, 200))
    pipeline = Pipeline(
        config,
        ScriptedSpeechToText(script, sample_rate=16000),
        renderer,
        deliver=room.deliver,
        languages=room.languages,
        source_lang="en",
        on_error=lambda message: None,
    )
    [fr] = await join(room, "fr")
    chunks = 100
    fed = 0

    async def feed_all() -> None:
        nonlocal fed
        for _ in range(chunks):
            await pipeline.feed(silence(CHUNK_S, 16000), 16000)
            fed += 1
        await pipeline.finish()

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(pipeline.run)
            nursery.start_soon(feed_all)
            await trio.testing.wait_all_tasks_blocked()
            assert 0 < fed < 40  # held back by the bounded queues, not by the script
            assert fr.finals == []
            mt.open()
    assert fed == chunks
    assert fr.final_texts == [f"[fr] final {n}" for n in range(1, chunks + 1)]
