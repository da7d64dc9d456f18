"""The ``google`` engine: the real google-cloud-speech client, over real gRPC, against
the local Speech v2 emulator (``babel_actors.testing.google``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import trio

from babel_actors.config import Config
from babel_actors.engines.google import MAX_AUDIO_BYTES, GoogleSpeechToText
from babel_actors.errors import EngineError, EngineUnavailable
from babel_actors.events import AudioEvent, AudioFrame, EndOfSpeech, SttResult
from babel_actors.glossary import Glossary, Term
from babel_actors.testing.google import (
    RunningEmulator,
    SpeechEmulator,
    StreamPlan,
    WordCodec,
    running_speech_emulator,
)

DEADLINE_S = 20.0
SENTENCES = [
    "alpha bravo charlie",
    "delta echo foxtrot golf",
    "hotel india juliett",
    "kilo lima mike november",
]


def google_config(emulator: RunningEmulator, **overrides: Any) -> Config:
    return Config(
        google_endpoint=emulator.address,
        google_insecure=True,
        google_project="test-project",
        **overrides,
    )


@asynccontextmanager
async def google_engine(config: Config) -> AsyncIterator[GoogleSpeechToText]:
    engine = GoogleSpeechToText(config)
    try:
        yield engine
    finally:
        await engine.aclose()
        assert not engine.bridge.running, "aclose joins the bridge thread"


async def recognise(
    engine: GoogleSpeechToText,
    frames: Sequence[AudioEvent],
    glossary: Glossary | None = None,
) -> list[SttResult]:
    """Every result of one stream fed ``frames`` then closed."""
    audio_send, audio_receive = trio.open_memory_channel[AudioEvent](len(frames) + 1)
    results_send, results_receive = trio.open_memory_channel[SttResult](1000)
    for frame in frames:
        audio_send.send_nowait(frame)
    audio_send.close()
    await engine.transcribe(audio_receive, results_send, language="en", glossary=glossary)
    results_send.close()
    return [result async for result in results_receive]


def spoken(codec: WordCodec, *sentences: str, **kw: float) -> list[AudioEvent]:
    return [AudioFrame(codec.speak(s, **kw), 16000, 0.0) for s in sentences]


def finals(results: list[SttResult]) -> list[str]:
    return [r.text for r in results if r.is_final]


async def test_first_request_carries_the_config_and_audio_stays_under_15_kb() -> None:
    codec = WordCodec()
    glossary = Glossary(terms=(Term("Holy Spirit", "Espíritu Santo"),), keep=("Exbabel",))
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(SpeechEmulator(codec)) as emulator:
            async with google_engine(google_config(emulator)) as engine:
                results = await recognise(engine, spoken(codec, *SENTENCES), glossary)
    assert finals(results) == SENTENCES
    [stream] = emulator.streams
    first = stream.config
    assert first is not None and not first.audio
    assert first.recognizer == "projects/test-project/locations/us/recognizers/_"
    config = first.streaming_config.config
    assert config.model == "chirp_3"
    assert list(config.language_codes) == ["en-US"]
    decoding = config.explicit_decoding_config
    assert decoding.encoding.name == "LINEAR16"
    assert decoding.sample_rate_hertz == 16000 and decoding.audio_channel_count == 1
    features = first.streaming_config.streaming_features
    assert features.interim_results and features.enable_voice_activity_events
    [phrase_set] = config.adaptation.phrase_sets
    assert [p.value for p in phrase_set.inline_phrase_set.phrases] == ["Holy Spirit", "Exbabel"]
    assert max(stream.request_sizes) <= MAX_AUDIO_BYTES
    assert len(stream.request_sizes) > 1
    assert bytes(stream.audio) == b"".join(codec.speak(s) for s in SENTENCES)
    assert stream.outcome == "completed"


async def test_interim_results_grow_and_finals_carry_the_audio_end() -> None:
    codec = WordCodec()
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(SpeechEmulator(codec)) as emulator:
            async with google_engine(google_config(emulator)) as engine:
                results = await recognise(engine, spoken(codec, SENTENCES[0]))
    assert [(r.text, r.is_final) for r in results] == [
        ("alpha", False),
        ("alpha bravo", False),
        ("alpha bravo charlie", False),
        ("alpha bravo charlie", True),
    ]
    # Three words of 0.12 s with two gaps of 0.04 s.
    assert results[-1].audio_end_s == pytest.approx(0.44)


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED],
)
@pytest.mark.parametrize("fail_after_s", [0.05, 1.2, 1.7, 2.9])
async def test_a_stream_ended_mid_utterance_loses_and_repeats_no_word(
    code: grpc.StatusCode, fail_after_s: float
) -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec)
    emulator.plans[0] = StreamPlan(fail_after_s=fail_after_s, fail_code=code)
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running)) as engine:
                results = await recognise(engine, spoken(codec, *SENTENCES))
    assert finals(results) == SENTENCES
    assert running.streams[0].outcome == code.name
    assert [s.outcome for s in running.streams[1:]] == ["completed"]
    # The new stream got exactly the audio after the last final: nothing twice.
    sent = b"".join(codec.speak(s) for s in SENTENCES)
    replayed = running.streams[1].audio
    assert sent.endswith(bytes(replayed))
    settled = len(sent) - len(replayed)
    finalised = len(running.streams[0].finals)
    before = b"".join(codec.speak(s) for s in SENTENCES[:finalised])
    pause = 2 * round(0.4 * 16000)
    assert settled == (len(before) - pause if finalised else 0), (
        "replay starts at the last word end"
    )


async def test_rollover_before_the_limit_replays_only_unsettled_audio() -> None:
    codec = WordCodec()
    # The emulator aborts at 2.5 s like Google at 5 minutes; the engine must move first.
    emulator = SpeechEmulator(codec, max_stream_s=2.5)
    config_kw = {"google_rollover_s": 2.0, "google_seam_window_s": 1.0}
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running, **config_kw)) as engine:
                results = await recognise(engine, spoken(codec, *SENTENCES, *SENTENCES))
    assert finals(results) == SENTENCES * 2
    assert len(running.streams) >= 3
    assert all(s.outcome in ("cancelled", "completed") for s in running.streams)
    assert sum(len(s.finals) for s in running.streams) == len(SENTENCES) * 2


async def test_hard_rollover_half_closes_a_long_utterance() -> None:
    codec = WordCodec()
    long = " ".join(f"word{n}" for n in range(20))
    emulator = SpeechEmulator(codec, max_stream_s=30)
    config_kw = {"google_rollover_s": 2.0, "google_seam_window_s": 0.5}
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running, **config_kw)) as engine:
                frames = spoken(codec, long, pause_s=0) + spoken(codec, *SENTENCES)
                results = await recognise(engine, frames)
    said = " ".join(finals(results)).split()
    assert said == long.split() + " ".join(SENTENCES).split()
    assert running.streams[0].outcome == "completed"


async def test_end_of_speech_finalises_pending_words() -> None:
    codec = WordCodec()
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(SpeechEmulator(codec)) as running:
            async with google_engine(google_config(running)) as engine:
                frames: list[AudioEvent] = [
                    *spoken(codec, "no pause here", pause_s=0),
                    EndOfSpeech(0.0),
                    *spoken(codec, "then more words"),
                ]
                results = await recognise(engine, frames)
    assert finals(results) == ["no pause here", "then more words"]
    assert [s.outcome for s in running.streams] == ["completed", "completed"]


async def test_a_lasting_outage_raises_engine_error_and_the_next_stream_recovers() -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec)
    emulator.default_plan = StreamPlan(fail_after_s=0, fail_code=grpc.StatusCode.UNAVAILABLE)
    config_kw = {"google_outage_s": 0.3, "google_retry_initial_s": 0.02, "google_retry_max_s": 0.1}
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running, **config_kw)) as engine:
                with pytest.raises(EngineError, match="UNAVAILABLE"):
                    await recognise(engine, spoken(codec, SENTENCES[0]))
                assert len(running.streams) >= 3, "it retried before giving up"
                emulator.default_plan = StreamPlan()
                results = await recognise(engine, spoken(codec, SENTENCES[1]))
    assert finals(results) == [SENTENCES[1]]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, EngineError),
        (grpc.StatusCode.PERMISSION_DENIED, EngineUnavailable),
    ],
)
async def test_errors_a_new_stream_cannot_fix_are_raised_at_once(
    code: grpc.StatusCode, error: type[EngineError]
) -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec)
    emulator.default_plan = StreamPlan(fail_after_s=0, fail_code=code, fail_message="no")
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running)) as engine:
                with pytest.raises(error, match=code.name):
                    await recognise(engine, spoken(codec, SENTENCES[0]))
    assert len(running.streams) == 1


async def test_a_model_refusing_phrase_sets_recognises_without_them() -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec)
    emulator.plans[0] = StreamPlan(
        fail_after_s=0, fail_code=grpc.StatusCode.INVALID_ARGUMENT, fail_message="adaptation"
    )
    glossary = Glossary(keep=("Exbabel",))
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running)) as engine:
                results = await recognise(engine, spoken(codec, SENTENCES[0]), glossary)
                assert engine.no_adaptation == {("chirp_3", "en-US")}
    assert finals(results) == [SENTENCES[0]]
    first, second = (s.config for s in running.streams)
    assert first is not None and second is not None
    assert "adaptation" in first.streaming_config.config
    assert "adaptation" not in second.streaming_config.config


async def test_cancelling_a_stream_to_a_hung_server_ends_the_call_and_leaks_nothing() -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec)
    emulator.default_plan = StreamPlan(hang=True)
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running)) as engine:
                audio_send, audio_receive = trio.open_memory_channel[AudioEvent](10)
                results_send, _results_receive = trio.open_memory_channel[SttResult](10)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        lambda: engine.transcribe(audio_receive, results_send, language="en")
                    )
                    await audio_send.send(spoken(codec, SENTENCES[0])[0])
                    # The server holds the call and never answers: no first response.
                    await running.wait_until(
                        lambda: bool(running.streams) and running.streams[0].config is not None
                    )
                    nursery.cancel_scope.cancel()
                assert await engine.bridge.tasks_left(1.0) == 0
                await running.wait_until(lambda: running.streams[0].outcome == "cancelled")
