"""The ``google`` engine behaving as the real service asks, against the stricter
emulator: locales from the Locations API, refusals that harm only their session,
phrase-set fallback per (model, locale), UNKNOWN retried with the tape kept, paced
replays, backoff across streams that fail at once, one overflow warning."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import grpc
import pytest
import trio
from helpers import finals_of, listener_path, start_session
from test_google_engine import SENTENCES, finals, google_config, google_engine, recognise, spoken

from babel_actors.config import Config
from babel_actors.engines.breaker import BreakerSpeechToText, BreakerState
from babel_actors.engines.google import GoogleSpeechToText
from babel_actors.engines.google_locales import FALLBACK_LOCALES, LocaleTable
from babel_actors.errors import ConfigError, RequestRefused, UnsupportedLanguage
from babel_actors.events import AudioEvent, AudioFrame
from babel_actors.glossary import Glossary
from babel_actors.testing import connect, running_server
from babel_actors.testing.google import (
    SpeechEmulator,
    StreamPlan,
    WordCodec,
    running_speech_emulator,
)

DEADLINE_S = 30.0
SERVED = ["en-US", "en-GB", "iw-IL", "cmn-Hant-TW", "no-NO", "pa-Guru-IN"]


@pytest.mark.parametrize(
    ("tag", "locale"),
    [
        ("en", "en-US"),
        ("zh-TW", "cmn-Hant-TW"),
        ("he-IL", "iw-IL"),
        ("he", "iw-IL"),
        ("nb-NO", "no-NO"),
        ("pa-IN", "pa-Guru-IN"),
        ("zh", "cmn-Hans-CN"),
        ("en-ZZ", None),
        ("xx", None),
    ],
)
def test_regional_tags_find_googles_spelling_of_the_locale(tag: str, locale: str | None) -> None:
    table = LocaleTable(FALLBACK_LOCALES, source="fallback")
    assert table.resolve(tag) == locale
    assert (tag in table.languages()) == (locale is not None)


async def test_languages_come_from_the_locations_api_and_tags_are_mapped() -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec, locales=SERVED)
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running)) as engine:
                assert "de" in engine.languages(), "the fallback table before load"
                await engine.load()
                languages = engine.languages()
                frames = spoken(codec, SENTENCES[0])
                await recognise_in(engine, frames, "zh-TW")
                with pytest.raises(UnsupportedLanguage):
                    await recognise_in(engine, frames, "de")
    assert engine.locales.source == "Locations API"
    assert {"en", "en-GB", "he", "he-IL", "zh-TW", "nb-NO", "pa-IN"} <= languages
    assert "de" not in languages and "fr" not in languages
    [stream] = running.streams
    assert stream.config is not None
    assert list(stream.config.streaming_config.config.language_codes) == ["cmn-Hant-TW"]


async def recognise_in(engine: Any, frames: list[AudioEvent], language: str) -> None:
    send, receive = trio.open_memory_channel[AudioEvent](len(frames) + 1)
    results, _ = trio.open_memory_channel[Any](1000)
    for frame in frames:
        send.send_nowait(frame)
    send.close()
    await engine.transcribe(receive, results, language=language)


async def test_a_locations_api_failure_keeps_the_fallback_table() -> None:
    emulator = SpeechEmulator(locations=["eu"])
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running)) as engine:
                await engine.load()
    assert engine.locales.source == "fallback"
    assert "de" in engine.languages()


def test_chirp_in_the_global_location_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="not global"):
        GoogleSpeechToText(Config(google_location="global", google_project="p"))


async def test_a_refused_locale_harms_only_its_session_and_never_opens_the_circuit() -> None:
    codec = WordCodec()
    # The fallback table offers Japanese (ja-JP only); this Google does not take it.
    emulator = SpeechEmulator(codec, locales=["en-US"])
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            config = google_config(running, port=0, engine_retry_s=0.05)
            config_breaker = {"failures": 1, "reset_s": 60.0}
            stt = BreakerSpeechToText(GoogleSpeechToText(config), **config_breaker)
            try:
                async with running_server(config, stt=stt) as server:
                    japanese = await start_session(server)
                    english = await start_session(server)
                    async with (
                        connect(server, japanese["wsUrl"]) as ja_host,
                        connect(server, english["wsUrl"]) as en_host,
                        connect(server, listener_path(english["sessionId"], "es")) as es,
                    ):
                        await es.receive()
                        for host, lang in ((ja_host, "ja"), (en_host, "en")):
                            await host.receive()
                            await host.send(
                                {"type": "init", "sourceLang": lang, "sampleRate": 16000}
                            )
                        await ja_host.send_audio(codec.speak(SENTENCES[0]))
                        refused = await ja_host.receive_until(lambda m: m["type"] == "error")
                        assert "does not take ja-JP" in refused[-1]["message"]
                        # The French session keeps failing; English goes on regardless.
                        for sentence in SENTENCES:
                            await en_host.send_audio(codec.speak(sentence))
                        got = await es.finals(len(SENTENCES))
                        await ja_host.send({"type": "init", "sourceLang": "ja"})
                        again = await ja_host.receive_until(
                            lambda m: "does not handle" in m.get("message", "")
                        )
            finally:
                await stt.aclose()
    assert [m["originalText"] for m in got] == SENTENCES
    assert "does not handle language 'ja'" in again[-1]["message"]
    assert "ja" not in stt.languages() and "en" in stt.languages()
    assert stt.breaker.state is BreakerState.CLOSED and stt.breaker.total_failures == 0
    refused = [
        s.config.streaming_config.config.language_codes[0]
        for s in running.streams
        if s.outcome == "INVALID_ARGUMENT" and s.config is not None
    ]
    assert refused == ["ja-JP"], "later calls for Japanese do not ask Google again"
    assert not [m for m in es.received if m["type"] == "error"], "English saw no error"
    assert len(finals_of(es.received)) == len(SENTENCES)


async def test_an_unrelated_refusal_keeps_the_phrase_set() -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec)
    emulator.plans[0] = StreamPlan(
        fail_after_s=0,
        fail_code=grpc.StatusCode.INVALID_ARGUMENT,
        fail_message="sample_rate_hertz out of range",
    )
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running)) as engine:
                with pytest.raises(RequestRefused, match="sample_rate_hertz"):
                    await recognise(engine, spoken(codec, SENTENCES[0]), Glossary(keep=("X",)))
                assert engine.no_adaptation == set()
                assert engine.languages() >= {"en", "en-US"}, "not the locale's fault"
                results = await recognise(
                    engine, spoken(codec, SENTENCES[1]), Glossary(keep=("X",))
                )
    assert finals(results) == [SENTENCES[1]]
    assert "adaptation" in running.streams[1].config.streaming_config.config  # type: ignore[union-attr]


async def test_a_refused_phrase_set_is_dropped_for_that_model_and_locale_only() -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec, locales=["en-US", "en-GB"], adaptation_models=[])
    glossary = Glossary(keep=("Exbabel",))
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running)) as engine:
                await engine.load()
                us = await recognise(engine, spoken(codec, SENTENCES[0]), glossary)
                assert engine.no_adaptation == {("chirp_3", "en-US")}
                us_again = await recognise(engine, spoken(codec, SENTENCES[1]), glossary)
                assert engine.streaming_config("en-GB", glossary).streaming_config.config.adaptation
    assert finals(us) == [SENTENCES[0]] and finals(us_again) == [SENTENCES[1]]
    assert [s.outcome for s in running.streams] == ["INVALID_ARGUMENT", "completed", "completed"]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (grpc.StatusCode.UNKNOWN, "Stream removed"),
        (grpc.StatusCode.UNKNOWN, "Received RST_STREAM with error code 2"),
        (grpc.StatusCode.UNKNOWN, "408:Request Timeout"),
    ],
)
async def test_a_removed_stream_is_replaced_with_the_tape_kept(
    code: grpc.StatusCode, message: str
) -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec)
    emulator.plans[0] = StreamPlan(fail_after_s=1.2, fail_code=code, fail_message=message)
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running)) as engine:
                results = await recognise(engine, spoken(codec, *SENTENCES))
    assert finals(results) == SENTENCES
    first, second = running.streams
    assert first.outcome == "UNKNOWN" and second.outcome == "completed"
    sent = b"".join(codec.speak(s) for s in SENTENCES)
    # Everything the first stream heard but no final covered was replayed.
    assert sent.endswith(bytes(second.audio)) and len(second.audio) > len(sent) - len(first.audio)


async def test_a_replay_is_paced_in_100_ms_requests_on_the_emulators_clock() -> None:
    codec = WordCodec()
    speech = spoken(codec, *SENTENCES, *SENTENCES)
    # Strict: no more than 1.6x real time after the engine's one-second burst.
    emulator = SpeechEmulator(codec, max_speed=1.6, speed_allowance_s=1.25)
    emulator.plans[0] = StreamPlan(fail_after_s=0.5, fail_code=grpc.StatusCode.UNAVAILABLE)
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running)) as engine:
                results = await recognise(engine, speech)
    assert finals(results) == SENTENCES * 2
    _first, replay = running.streams
    assert replay.outcome == "completed", "never OUT_OF_RANGE"
    assert max(replay.request_sizes) == 2 * 1600, "100 ms requests"
    samples = 0
    for size, at in zip(replay.request_sizes, replay.request_times, strict=True):
        samples += size // 2
        assert samples / 16000 - 1.25 <= 1.6 * (at - replay.opened_at)
    seconds = replay.request_times[-1] - replay.opened_at
    speed = (len(replay.audio) / 32000 - 1.0) / seconds
    logging.getLogger(__name__).info("replay of %.2f s at %.2fx", len(replay.audio) / 32000, speed)
    assert speed <= 1.6


async def test_an_unpaced_replay_is_refused_by_the_strict_emulator() -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec, max_speed=1.6, speed_allowance_s=1.0)
    config_kw = {"google_replay_speed": 0.0, "google_outage_s": 0.2}
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running, **config_kw)) as engine:
                with pytest.raises(Exception, match="OUT_OF_RANGE"):
                    await recognise(engine, spoken(codec, *SENTENCES, *SENTENCES))
    assert running.streams[0].outcome == "OUT_OF_RANGE"


async def test_streams_that_answer_then_fail_at_once_back_off() -> None:
    codec = WordCodec()
    long = " ".join(f"word{n}" for n in range(40))
    emulator = SpeechEmulator(codec)
    # Each stream answers (an interim result) and then fails before any final.
    emulator.default_plan = StreamPlan(fail_after_s=0.3, fail_code=grpc.StatusCode.UNAVAILABLE)
    config_kw = {
        "google_retry_initial_s": 0.1,
        "google_retry_max_s": 0.4,
        "google_outage_s": 1.2,
    }
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running, **config_kw)) as engine:
                with pytest.raises(Exception, match="failing for"):
                    await recognise(engine, spoken(codec, long, pause_s=0))
    opened = [s.opened_at for s in running.streams]
    gaps = [later - earlier for earlier, later in itertools.pairwise(opened)]
    assert len(gaps) >= 3
    # 0, then 0.1, 0.2, 0.4 s more each time: the waits grow though every stream answered.
    for index, gap in enumerate(gaps[1:]):
        assert gap >= min(0.1 * 2**index, 0.4)


async def test_a_long_utterance_warns_once_that_it_outgrew_the_replay_tape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    codec = WordCodec()
    long = " ".join(f"word{n}" for n in range(20))
    pcm = codec.speak(long)
    frame = 2 * 1600
    frames: list[AudioEvent] = [
        AudioFrame(pcm[i : i + frame], 16000, 0.0) for i in range(0, len(pcm), frame)
    ]
    caplog.set_level(logging.WARNING, logger="babel_actors.engines.google")
    audio_send, audio_receive = trio.open_memory_channel[AudioEvent](len(frames))
    results_send, results_receive = trio.open_memory_channel[Any](1000)

    async def microphone() -> None:
        # The host's pace: one 100 ms frame every 100 ms, as speech arrives live.
        async with audio_send:
            for frame in frames:
                await audio_send.send(frame)
                await trio.sleep(0.1)

    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(SpeechEmulator(codec)) as running:
            config = google_config(running, google_max_replay_s=0.5)
            async with google_engine(config) as engine, trio.open_nursery() as nursery:
                nursery.start_soon(microphone)
                await engine.transcribe(audio_receive, results_send, language="en")
    results_send.close()
    results = [r async for r in results_receive]
    assert finals(results) == [long]
    warned = [r for r in caplog.records if "no longer be replayed" in r.getMessage()]
    assert len(warned) == 1


async def test_the_breaker_passes_load_on_so_serve_asks_google_at_start() -> None:
    emulator = SpeechEmulator(locales=["en-US"])
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            google = GoogleSpeechToText(google_config(running))
            stt = BreakerSpeechToText(google, failures=5, reset_s=30)
            try:
                await stt.load()
            finally:
                await stt.aclose()
    assert google.locales.source == "Locations API"
    assert stt.languages() == frozenset({"en", "en-US"})


async def test_chirp_like_sparse_interim_results_and_longer_endpointing_lose_nothing() -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec, endpoint_s=0.8, interim_every_words=3)
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            async with google_engine(google_config(running)) as engine:
                results = await recognise(engine, spoken(codec, *SENTENCES, pause_s=1.0))
    assert finals(results) == SENTENCES
    partials = [r.text for r in results if not r.is_final]
    assert all(len(p.split()) % 3 == 0 for p in partials), "one interim result per 3 words"
    [stream] = running.streams
    assert stream.outcome == "completed"
