"""The production engines in the live server: Google speech (the real client against
the local Speech v2 emulator) and OpenAI translation (the real client against the
local OpenAI-compatible server), with real WebSocket hosts and listeners."""

from __future__ import annotations

from typing import Any

import grpc
import trio
from helpers import checked, finals_of, listener_path, start_session

from babel_actors.config import Config
from babel_actors.engines.google import GoogleSpeechToText
from babel_actors.engines.openai import OpenAITranslator
from babel_actors.testing import (
    EchoTranslator,
    ProtocolClient,
    ScriptedSpeechToText,
    connect,
    running_server,
    sentence_script,
    silence,
)
from babel_actors.testing.google import (
    RunningEmulator,
    SpeechEmulator,
    StreamPlan,
    WordCodec,
    running_speech_emulator,
)
from babel_actors.testing.openai import FakeOpenAI, Reply, running_openai

DEADLINE_S = 30.0
SENTENCES = [
    "the holy spirit is here",
    "welcome to grace chapel",
    "please open exbabel now",
    "we begin with a song",
    "thank you all for coming",
]
GLOSSARY = {
    "terms": {"holy spirit": {"es": "Espíritu Santo"}, "grace chapel": "Grace Chapel"},
    "keep": ["exbabel"],
}


def google_config(emulator: RunningEmulator, **overrides: Any) -> Config:
    return Config(
        port=0,
        google_endpoint=emulator.address,
        google_insecure=True,
        google_project="test-project",
        **overrides,
    )


async def open_host(host: ProtocolClient, **init: Any) -> None:
    ready = await host.receive()
    assert ready["type"] in ("session_ready", "session_stats")
    await host.send({"type": "init", "sourceLang": "en", "sampleRate": 16000, **init})


async def test_google_partials_and_finals_reach_listeners_with_the_glossary() -> None:
    codec = WordCodec()
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(SpeechEmulator(codec)) as emulator:
            config = google_config(emulator)
            stt = GoogleSpeechToText(config)
            try:
                async with running_server(config, stt=stt) as server:
                    session = await start_session(server)
                    async with (
                        connect(server, listener_path(session["sessionId"], "es")) as es,
                        connect(server, session["wsUrl"]) as host,
                    ):
                        await es.receive()
                        await open_host(host, glossary=GLOSSARY)
                        for sentence in SENTENCES[:3]:
                            await host.send_audio(codec.speak(sentence))
                        es_finals = await es.finals(3)
            finally:
                await stt.aclose()
    assert [m["originalText"] for m in es_finals] == SENTENCES[:3]
    assert [m["translatedText"] for m in es_finals] == [
        "[es] the Espíritu Santo is here",
        "[es] welcome to Grace Chapel",
        "[es] please open exbabel now",
    ]
    captions = [m for m in checked(es.received) if m["type"] == "translation"]
    partials = [m["originalText"] for m in captions if m["isPartial"]]
    assert partials, "interim results reach listeners (throttled per language)"
    assert all(any(s.startswith(p) for s in SENTENCES) for p in partials)
    # The glossary reached the recogniser as an inline phrase set.
    configs = [s.config for s in emulator.streams if s.config is not None]
    phrases = [
        [p.value for p in ps.inline_phrase_set.phrases]
        for c in configs
        for ps in c.streaming_config.config.adaptation.phrase_sets
    ]
    assert ["holy spirit", "grace chapel", "exbabel"] in phrases


async def test_rollover_at_a_short_limit_gives_listeners_every_word_once() -> None:
    codec = WordCodec()
    # The emulator aborts a stream after 2.5 s of audio, as Google does at 5 minutes.
    emulator = SpeechEmulator(codec, max_stream_s=2.5)
    sentences = SENTENCES * 2
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            config = google_config(running, google_rollover_s=2.0, google_seam_window_s=1.0)
            stt = GoogleSpeechToText(config)
            try:
                async with running_server(config, stt=stt) as server:
                    session = await start_session(server)
                    async with (
                        connect(server, listener_path(session["sessionId"], "fr")) as fr,
                        connect(server, session["wsUrl"]) as host,
                    ):
                        await fr.receive()
                        await open_host(host)
                        for count, sentence in enumerate(sentences, 1):
                            await host.send_audio(codec.speak(sentence))
                            await fr.finals(1)
                            assert len(finals_of(fr.received)) == count
            finally:
                await stt.aclose()
    assert [m["originalText"] for m in finals_of(fr.received)] == sentences
    assert [m["translatedText"] for m in finals_of(fr.received)] == [f"[fr] {s}" for s in sentences]
    assert len(running.streams) >= 4, "the engine rolled over several times"
    assert all(s.outcome in ("cancelled", "completed", "open") for s in running.streams)


async def test_a_lasting_google_outage_is_reported_and_the_session_recovers() -> None:
    codec = WordCodec()
    emulator = SpeechEmulator(codec)
    emulator.default_plan = StreamPlan(fail_after_s=0, fail_code=grpc.StatusCode.UNAVAILABLE)
    with trio.fail_after(DEADLINE_S):
        async with running_speech_emulator(emulator) as running:
            config = google_config(
                running,
                google_outage_s=0.3,
                google_retry_initial_s=0.02,
                google_retry_max_s=0.1,
                engine_retry_s=0.05,
            )
            stt = GoogleSpeechToText(config)
            try:
                async with running_server(config, stt=stt) as server:
                    session = await start_session(server)
                    async with (
                        connect(server, listener_path(session["sessionId"], "es")) as es,
                        connect(server, session["wsUrl"]) as host,
                    ):
                        await es.receive()
                        await open_host(host)
                        await host.send_audio(codec.speak(SENTENCES[0]))
                        [error] = [
                            m
                            for m in await es.receive_until(lambda m: m["type"] == "error")
                            if m["type"] == "error"
                        ]
                        assert "speech recognition failed" in error["message"]
                        await host.receive_until(lambda m: m["type"] == "error")
                        emulator.default_plan = StreamPlan()
                        await host.send_audio(codec.speak(SENTENCES[1]))
                        [final] = await es.finals(1)
            finally:
                await stt.aclose()
    assert final["originalText"] == SENTENCES[1]
    checked(es.received)


def scripted() -> ScriptedSpeechToText:
    return ScriptedSpeechToText(sentence_script(SENTENCES[:2], seconds_each=1.0))


async def test_openai_translates_finals_for_listeners_with_glossary_and_context() -> None:
    with trio.fail_after(DEADLINE_S):
        async with running_openai() as fake:
            config = Config(port=0, openai_api_key="k", openai_base_url=fake.base_url)
            mt = OpenAITranslator(config)
            try:
                async with running_server(config, stt=scripted(), mt=mt) as server:
                    session = await start_session(server)
                    async with (
                        connect(server, listener_path(session["sessionId"], "es")) as es,
                        connect(server, session["wsUrl"]) as host,
                    ):
                        await es.receive()
                        await open_host(host, sampleRate=24000, glossary=GLOSSARY)
                        for _ in range(5):
                            await host.send_audio(silence(0.5))
                        es_finals = await es.finals(2)
            finally:
                await mt.aclose()
    assert [m["translatedText"] for m in es_finals] == [f"[Spanish] {s}" for s in SENTENCES[:2]]
    assert all(m["hasTranslation"] for m in es_finals)
    by_text = {r.text: r for r in fake.requests}
    first = by_text[SENTENCES[0]].system
    assert '"holy spirit" -> "Espíritu Santo"' in first
    second = by_text[SENTENCES[1]].system
    assert '"grace chapel" -> "Grace Chapel"' in second
    assert f"- {SENTENCES[0]}" in second, "the previous final is context"


async def test_a_failing_model_gives_listeners_the_source_text_flagged() -> None:
    fake = FakeOpenAI()
    fake.default_reply = Reply(500)
    with trio.fail_after(DEADLINE_S):
        async with running_openai(fake):
            config = Config(
                port=0,
                openai_api_key="k",
                openai_base_url=fake.base_url,
                openai_max_retries=1,
                openai_retry_initial_s=0.01,
            )
            mt = OpenAITranslator(config)
            try:
                async with running_server(config, stt=scripted(), mt=mt) as server:
                    session = await start_session(server)
                    async with (
                        connect(server, listener_path(session["sessionId"], "de")) as de,
                        connect(server, session["wsUrl"]) as host,
                    ):
                        await de.receive()
                        await open_host(host, sampleRate=24000)
                        for _ in range(5):
                            await host.send_audio(silence(0.5))
                        de_finals = await de.finals(2)
            finally:
                await mt.aclose()
    for message in checked(de_finals):
        assert message["hasTranslation"] is False
        assert message["translatedText"] == message["originalText"]
    assert [m["originalText"] for m in de_finals] == SENTENCES[:2]


async def test_a_glossary_in_init_reaches_the_speech_engine_and_bad_ones_are_refused() -> None:
    stt = ScriptedSpeechToText(sentence_script(SENTENCES[:1], seconds_each=1.0))
    echo = EchoTranslator()
    with trio.fail_after(DEADLINE_S):
        async with running_server(Config(port=0), stt=stt, mt=echo) as server:
            session = await start_session(server)
            async with connect(server, session["wsUrl"]) as host:
                await open_host(host, sampleRate=24000, glossary={"terms": {"x": 3}})
                error = await host.receive_until(lambda m: m["type"] == "error")
                assert "glossary.terms" in error[-1]["message"]
                await host.send({"type": "init", "glossary": GLOSSARY})
                for _ in range(3):
                    await host.send_audio(silence(0.5))
                [final] = await host.finals(1)
    assert final["originalText"] == SENTENCES[0]
    [glossary] = stt.glossaries
    assert glossary.phrases() == ("holy spirit", "grace chapel", "exbabel")
