"""The STT actor, driven through its channels: results pass through, a language change
restarts the stream (tagged in-band), an engine failure is retried, draining."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from babel_actors.actors.stt import run_stt
from babel_actors.engines.scripted import ScriptLine
from babel_actors.errors import EngineError, RequestRefused
from babel_actors.events import (
    AudioEvent,
    AudioFrame,
    EndOfSpeech,
    SourceLanguage,
    SttInput,
    SttOutput,
    SttResult,
)
from babel_actors.glossary import Glossary
from babel_actors.metrics import Metrics
from babel_actors.testing import ScriptedSpeechToText

RATE = 16000
TIMEOUT_S = 30


def frame(seconds: float = 0.1) -> AudioFrame:
    return AudioFrame(b"\0\0" * int(seconds * RATE), RATE, 0.0)


class TaggingSpeechToText:
    """Each audio frame becomes a final ``"<language> <n>"``, an end of speech
    ``"<language> eos"``; when its audio ends, the stream finalises what it holds:
    ``"<language> end"``. Streams listed in ``fail_streams`` (0-based) raise
    ``EngineError`` on their first audio, leaving ``audio`` open."""

    name = "tagging"
    sample_rate = RATE

    def __init__(
        self,
        *,
        fail_streams: frozenset[int] = frozenset(),
        refuse: frozenset[str] = frozenset(),
    ) -> None:
        self.fail_streams = fail_streams
        self.refuse = refuse
        """Languages whose streams raise ``RequestRefused`` on their first audio."""
        self.streams: list[tuple[str, Glossary | None]] = []
        """The language (and glossary) of every stream opened, in order."""
        self.opened_at: list[float] = []
        self.failed_at: list[float] = []
        self.ended = 0
        """Streams that saw their audio end and returned."""

    def languages(self) -> frozenset[str]:
        return frozenset({"en", "fr", "de"})

    async def transcribe(
        self,
        audio: trio.MemoryReceiveChannel[AudioEvent],
        results: trio.MemorySendChannel[SttResult],
        *,
        language: str,
        glossary: Glossary | None = None,
    ) -> None:
        index = len(self.streams)
        self.streams.append((language, glossary))
        self.opened_at.append(trio.current_time())
        heard = 0
        async for event in audio:
            if language in self.refuse:
                raise RequestRefused(f"{language} is not served")
            if index in self.fail_streams:
                self.failed_at.append(trio.current_time())
                raise EngineError(f"stream {index} broke")
            if isinstance(event, AudioFrame):
                heard += 1
                await results.send(SttResult(f"{language} {heard}", True))
            else:
                await results.send(SttResult(f"{language} eos", True))
        await results.send(SttResult(f"{language} end", True))
        self.ended += 1

    async def aclose(self) -> None:
        return None


def texts(outputs: list[SttOutput]) -> list[object]:
    """Results as their text, language changes as themselves."""
    return [o.text if isinstance(o, SttResult) else o for o in outputs]


async def run_through(
    engine: TaggingSpeechToText | ScriptedSpeechToText,
    events: list[SttInput],
    *,
    language: str = "en",
    retry_after_s: float = 1.0,
    errors: list[str] | None = None,
    metrics: Metrics | None = None,
) -> list[SttOutput]:
    """Everything the actor hands on for ``events``, up to its outbox closing."""
    inbox_send, inbox_receive = trio.open_memory_channel[SttInput](64)
    outbox_send, outbox_receive = trio.open_memory_channel[SttOutput](64)
    on_error = (errors if errors is not None else []).append
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                run_stt,
                inbox_receive,
                outbox_send,
                engine=engine,
                language=language,
                queue_size=8,
                retry_after_s=retry_after_s,
                on_error=on_error,
                metrics=metrics,
            )
        )
        async with inbox_send:
            for event in events:
                await inbox_send.send(event)
        return [output async for output in outbox_receive]


async def test_scripted_results_pass_through_in_order() -> None:
    engine = ScriptedSpeechToText(
        [
            ScriptLine(0.5, "good", False),
            ScriptLine(1.0, "good morning", True),
            ScriptLine(1.5, "welcome", False),
            ScriptLine(9.0, "welcome all", True),
        ],
        sample_rate=RATE,
    )
    events: list[SttInput] = [frame(0.5), frame(0.5), frame(0.5), EndOfSpeech(0.0)]
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(engine, events)
    assert [(r.text, r.is_final) for r in out if isinstance(r, SttResult)] == [
        ("good", False),
        ("good morning", True),
        ("welcome", False),
        ("welcome all", True),  # the end of speech fires the rest of the utterance
    ]
    assert all(isinstance(r, SttResult) for r in out)


async def test_a_language_change_restarts_the_stream_and_is_passed_on_between_streams() -> None:
    engine = TaggingSpeechToText()
    metrics = Metrics()
    events: list[SttInput] = [frame(), frame(), SourceLanguage("fr"), frame(), EndOfSpeech(0.0)]
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(engine, events, metrics=metrics)
    # Every result of the English stream (its last one included), then the change,
    # then only the French stream's results.
    assert texts(out) == [
        "en 1",
        "en 2",
        "en end",
        SourceLanguage("fr"),
        "fr 1",
        "fr eos",
        "fr end",
    ]
    assert [language for language, _ in engine.streams] == ["en", "fr"]
    restarts = metrics.registry.get_sample_value(
        "babel_stt_restarts_total", {"engine": "tagging", "reason": "language"}
    )
    assert restarts == 1.0


async def test_the_same_language_again_does_not_restart_the_stream() -> None:
    engine = TaggingSpeechToText()
    events: list[SttInput] = [frame(), SourceLanguage("en"), frame(), SourceLanguage("en")]
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(engine, events)
    assert texts(out) == ["en 1", "en 2", "en end"]
    assert len(engine.streams) == 1


async def test_back_and_forth_between_languages_tags_every_stream() -> None:
    engine = TaggingSpeechToText()
    events: list[SttInput] = [
        frame(),
        SourceLanguage("fr"),
        SourceLanguage("de"),
        frame(),
        SourceLanguage("en"),
        frame(),
    ]
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(engine, events)
    assert texts(out) == [
        "en 1",
        "en end",
        SourceLanguage("fr"),
        "fr end",
        SourceLanguage("de"),
        "de 1",
        "de end",
        SourceLanguage("en"),
        "en 1",
        "en end",
    ]


async def test_a_glossary_restarts_the_stream_with_it_and_is_not_passed_on() -> None:
    engine = TaggingSpeechToText()
    glossary = Glossary(keep=("Babel",))
    events: list[SttInput] = [frame(), glossary, frame()]
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(engine, events)
    assert texts(out) == ["en 1", "en end", "en 1", "en end"]
    assert engine.streams == [("en", None), ("en", glossary)]


async def test_an_engine_error_is_reported_and_the_stream_reopens_after_the_retry_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = TaggingSpeechToText(fail_streams=frozenset({0}))
    errors: list[str] = []
    metrics = Metrics()
    events: list[SttInput] = [frame(), frame(), frame()]
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(engine, events, retry_after_s=5.0, errors=errors, metrics=metrics)
    assert len(errors) == 1 and "retrying" in errors[0]
    assert len(engine.streams) == 2
    assert engine.opened_at[1] - engine.failed_at[0] >= 5.0
    # The audio the broken stream swallowed is gone; what came after reaches the new one.
    assert texts(out)[-1] == "en end"
    assert all(isinstance(t, str) and t.startswith("en ") for t in texts(out))
    restarts = metrics.registry.get_sample_value(
        "babel_stt_restarts_total", {"engine": "tagging", "reason": "error"}
    )
    assert restarts == 1.0


async def test_audio_sent_during_the_retry_delay_waits_for_the_new_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = TaggingSpeechToText(fail_streams=frozenset({0}))
    errors: list[str] = []
    inbox_send, inbox_receive = trio.open_memory_channel[SttInput](64)
    outbox_send, outbox_receive = trio.open_memory_channel[SttOutput](64)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    run_stt,
                    inbox_receive,
                    outbox_send,
                    engine=engine,
                    language="en",
                    queue_size=8,
                    retry_after_s=5.0,
                    on_error=errors.append,
                )
            )
            await inbox_send.send(frame())
            await trio.testing.wait_all_tasks_blocked()
            assert errors and len(engine.streams) == 1  # failed, waiting to retry
            failed_at = trio.current_time()
            for _ in range(3):
                await inbox_send.send(frame())
            first = await outbox_receive.receive()
            assert trio.current_time() - failed_at >= 5.0
            await inbox_send.aclose()
            rest = [output async for output in outbox_receive]
    assert texts([first, *rest]) == ["en 1", "en 2", "en 3", "en end"]


async def test_closing_the_inbox_ends_the_stream_delivers_its_last_results_then_closes() -> None:
    engine = TaggingSpeechToText()
    inbox_send, inbox_receive = trio.open_memory_channel[SttInput](8)
    outbox_send, outbox_receive = trio.open_memory_channel[SttOutput](8)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    run_stt,
                    inbox_receive,
                    outbox_send,
                    engine=engine,
                    language="de",
                    queue_size=8,
                    retry_after_s=1.0,
                    on_error=lambda message: None,
                )
            )
            await inbox_send.send(frame())
            assert texts([await outbox_receive.receive()]) == ["de 1"]
            await trio.testing.wait_all_tasks_blocked()
            assert engine.ended == 0  # the stream stays open while the inbox is
            await inbox_send.aclose()
            rest = [output async for output in outbox_receive]
    assert texts(rest) == ["de end"]
    assert engine.ended == 1
    assert outbox_send.statistics().open_send_channels == 0


async def test_a_scripted_line_fires_once_exactly_its_audio_has_been_sent() -> None:
    """The scripted engine's contract: an entry fires once the stream has received
    ``at_s`` seconds of audio. Fails today: it adds up ``len(pcm) / 2 / rate`` in float
    seconds, so ten 0.1 s frames make 0.9999999999999999 s and a line at 1.0 s waits
    for more audio (counting samples would be exact)."""
    engine = ScriptedSpeechToText([ScriptLine(1.0, "one second", True)], sample_rate=RATE)
    events: list[SttInput] = [frame(0.1) for _ in range(10)]
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(engine, events)
    assert texts(out) == ["one second"]


async def test_a_refused_language_is_reported_once_and_not_retried_until_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 16: a locale the provider refuses was retried every ``retry_after_s``,
    telling the host each time; its audio cannot be heard, so it is dropped."""
    engine = TaggingSpeechToText(refuse=frozenset({"ja"}))
    errors: list[str] = []
    events: list[SttInput] = [frame(), frame(), frame(), SourceLanguage("en"), frame()]
    with trio.fail_after(TIMEOUT_S):
        outputs = await run_through(engine, events, language="ja", errors=errors)
    assert [language for language, _ in engine.streams] == ["ja", "en"]
    assert len(errors) == 1 and "refused" in errors[0], errors
    assert texts(outputs) == [SourceLanguage("en"), "en 1", "en end"]


async def test_a_refused_language_with_no_other_ends_when_the_audio_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = TaggingSpeechToText(refuse=frozenset({"ja"}))
    errors: list[str] = []
    with trio.fail_after(TIMEOUT_S):
        outputs = await run_through(
            engine, [frame(), frame(), frame()], language="ja", errors=errors
        )
    assert [language for language, _ in engine.streams] == ["ja"]
    assert len(errors) == 1 and outputs == []
