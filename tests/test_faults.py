"""Engine faults harm only their own session; the circuit breaker; a crash stays in its
session; shutdown drains even with engines stuck.

Each fault test runs a faulty session beside a bystander session (``bystander.py``),
which checks on exit that its listener got every final once, in order, translated.
What the faulty session's own members get is asserted too. How long anything took is
the bench's business (``python -m bench faults``), never an assert here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio_websocket
from bystander import SECONDS, SENTENCES, TIMEOUT_S, bystander, config
from helpers import checked, finals_of, listener_path, post

from babel_actors.config import Config
from babel_actors.engines import make_mt, make_stt
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.engines.breaker import (
    BreakerSpeechToText,
    BreakerState,
    BreakerTranslator,
    CircuitBreaker,
    Permit,
)
from babel_actors.errors import EngineError, TranslationFailed, UnsupportedLanguage
from babel_actors.events import AudioEvent, AudioFrame, SttResult
from babel_actors.server.app import Server
from babel_actors.testing import (
    EchoTranslator,
    ProtocolClient,
    ScriptedSpeechToText,
    connect,
    running_server,
    sentence_script,
    silence,
)
from babel_actors.testing.faults import Fault, FaultySpeechToText, FaultyTranslator

SPOKEN = 3
"""Sentences the faulty session's host speaks."""
FAULTY_SOURCE = "fr"
"""The faulty session's source language: the faulty speech engine picks its stream."""
FAULTY_TARGET = "de"
"""The faulty session's listener language: the faulty translator picks its calls."""
SERVICE_UNAVAILABLE = 503
INTERNAL_ERROR = 1011
GOING_AWAY = 1001


def scripted() -> ScriptedSpeechToText:
    """The bystander's script, heard in English and in the faulty session's French."""
    return ScriptedSpeechToText(
        sentence_script(SENTENCES, seconds_each=SECONDS),
        languages=frozenset({"en", FAULTY_SOURCE}),
    )


@attrs.define
class Faulty:
    """The session whose engine misbehaves: its host and one listener."""

    session: dict[str, Any]
    host: ProtocolClient
    listener: ProtocolClient

    async def speak(self, sentences: int) -> None:
        for _ in range(sentences):
            await self.host.send_audio(silence(SECONDS))


@asynccontextmanager
async def faulty_session(
    server: Server, *, source: str = "en", target: str = "es"
) -> AsyncIterator[Faulty]:
    status, session = await post(server, "/session/start", {"sourceLang": source})
    assert status == 200, session
    async with (
        connect(server, listener_path(session["sessionId"], target)) as listener,
        connect(server, session["wsUrl"]) as host,
    ):
        assert (await listener.receive())["type"] == "session_joined"
        assert (await host.receive())["type"] == "session_ready"
        # As the bystander does: the resampler holds back a few milliseconds.
        await host.send_audio(silence(0.05))
        yield Faulty(session, host, listener)


async def next_error(client: ProtocolClient) -> dict[str, Any]:
    message = await client.receive_until(lambda m: m["type"] == "error")
    return message[-1]


async def until_closed(client: ProtocolClient) -> int | None:
    """Read everything the server sends; the close code."""
    try:
        while True:
            await client.receive()
    except trio_websocket.ConnectionClosed as closed:
        return closed.reason.code if closed.reason else None


def assert_in_order(client: ProtocolClient) -> None:
    seqs = [m["seqId"] for m in checked(client.received) if m["type"] == "translation"]
    assert seqs == sorted(set(seqs)), "seqIds strictly increase"


# --- the translator -------------------------------------------------------------------


@pytest.mark.parametrize("fault", [Fault.HANG, Fault.ERROR], ids=lambda f: f.value)
async def test_a_hung_or_failing_translation_sends_the_source_text_flagged(fault: Fault) -> None:
    mt = FaultyTranslator(EchoTranslator(), fault, for_targets=frozenset({FAULTY_TARGET}))
    settings = attrs.evolve(config(), translate_timeout_s=0.2)
    with trio.fail_after(TIMEOUT_S):
        async with (
            running_server(settings, stt=scripted(), mt=mt) as server,
            bystander(server) as by,
        ):
            async with faulty_session(server, target=FAULTY_TARGET) as faulty:
                await faulty.speak(SPOKEN)
                for _ in range(SPOKEN):
                    await by.speak()
                finals = await faulty.listener.finals(SPOKEN)
                await by.caught_up()
    assert [m["originalText"] for m in finals] == SENTENCES[:SPOKEN]
    for final in finals:
        assert final["targetLang"] == FAULTY_TARGET
        assert final["hasTranslation"] is False
        assert final["translatedText"] == final["originalText"]
    assert mt.faulted >= SPOKEN
    assert not [m for m in faulty.listener.received if m["type"] == "error"]
    assert_in_order(faulty.listener)


@pytest.mark.parametrize("fault", [Fault.SLOW, Fault.BLOCK], ids=lambda f: f.value)
async def test_a_slow_translation_holds_back_only_its_own_session(fault: Fault) -> None:
    mt = FaultyTranslator(
        EchoTranslator(), fault, for_targets=frozenset({FAULTY_TARGET}), delay_s=None
    )
    settings = attrs.evolve(config(), translate_timeout_s=10 * TIMEOUT_S)
    try:
        with trio.fail_after(TIMEOUT_S):
            async with (
                running_server(settings, stt=scripted(), mt=mt) as server,
                bystander(server) as by,
            ):
                async with faulty_session(server, target=FAULTY_TARGET) as faulty:
                    await faulty.speak(SPOKEN)
                    await mt.wait_held(1)
                    # Every bystander final arrives while the faulty translations are held
                    # (awaiting, or a worker thread blocked until the release).
                    for _ in range(SPOKEN):
                        await by.speak()
                    await by.caught_up()
                    mt.release()
                    finals = await faulty.listener.finals(SPOKEN)
    finally:
        mt.release()
    assert [m["originalText"] for m in finals] == SENTENCES[:SPOKEN]
    assert [m["translatedText"] for m in finals] == [f"[de] {s}" for s in SENTENCES[:SPOKEN]]
    assert all(m["hasTranslation"] for m in finals)
    assert_in_order(faulty.listener)


# --- the speech engine ----------------------------------------------------------------


async def test_a_hung_speech_stream_silences_only_its_own_session() -> None:
    stt = FaultySpeechToText(scripted(), Fault.HANG, for_languages=frozenset({FAULTY_SOURCE}))
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=stt) as server, bystander(server) as by:
            async with faulty_session(server, source=FAULTY_SOURCE) as faulty:
                await faulty.speak(SPOKEN)
                await stt.wait_faulted(1)
                for _ in range(SPOKEN):
                    await by.speak()
                await by.caught_up()
                # Alive and silent: its members are answered, get no caption and no error.
                for client in (faulty.host, faulty.listener):
                    await client.send({"type": "ping", "timestamp": 7})
                    await client.receive_until(lambda m: m["type"] == "pong")
    for client in (faulty.host, faulty.listener):
        kinds = {m["type"] for m in checked(client.received)}
        assert not kinds & {"translation", "error", "session_ended"}, kinds


async def test_a_failing_speech_engine_tells_its_own_session_503_and_retries() -> None:
    stt = FaultySpeechToText(scripted(), Fault.ERROR, for_languages=frozenset({FAULTY_SOURCE}))
    settings = attrs.evolve(config(), engine_retry_s=0.05)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=stt) as server, bystander(server) as by:
            async with faulty_session(server, source=FAULTY_SOURCE) as faulty:
                await faulty.speak(1)
                first = await next_error(faulty.listener)
                await by.speak()
                await stt.wait_faulted(2)
                await faulty.speak(1)
                second = await next_error(faulty.listener)
                host_error = await next_error(faulty.host)
                await by.speak()
                await by.caught_up()
    for error in (first, second, host_error):
        assert error["code"] == SERVICE_UNAVAILABLE and error["closing"] is False, error
        assert "speech recognition failed" in error["message"], error
    assert not finals_of(faulty.listener.received)


@pytest.mark.parametrize("fault", [Fault.SLOW, Fault.BLOCK], ids=lambda f: f.value)
async def test_a_slow_speech_engine_holds_back_only_its_own_session(fault: Fault) -> None:
    stt = FaultySpeechToText(
        scripted(), fault, for_languages=frozenset({FAULTY_SOURCE}), delay_s=None
    )
    try:
        with trio.fail_after(TIMEOUT_S):
            async with running_server(config(), stt=stt) as server, bystander(server) as by:
                async with faulty_session(server, source=FAULTY_SOURCE) as faulty:
                    await faulty.speak(SPOKEN)
                    await stt.wait_held(1)
                    for _ in range(SPOKEN):
                        await by.speak()
                    await by.caught_up()
                    stt.release()
                    finals = await faulty.listener.finals(SPOKEN)
    finally:
        stt.release()
    assert [m["originalText"] for m in finals] == SENTENCES[:SPOKEN]
    assert [m["translatedText"] for m in finals] == [f"[es] {s}" for s in SENTENCES[:SPOKEN]]
    assert_in_order(faulty.listener)


# --- a crash, and shutdown ------------------------------------------------------------


@pytest.mark.parametrize("where", ["stt", "mt"])
async def test_an_engine_crash_ends_only_its_own_session(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    stt: SpeechToText = scripted()
    mt: Translator = EchoTranslator()
    if where == "stt":
        stt = FaultySpeechToText(stt, Fault.CRASH, for_languages=frozenset({FAULTY_SOURCE}))
        source, target = FAULTY_SOURCE, "es"
    else:
        mt = FaultyTranslator(mt, Fault.CRASH, for_targets=frozenset({FAULTY_TARGET}))
        source, target = "en", FAULTY_TARGET
    codes: dict[str, int | None] = {}
    with caplog.at_level(logging.ERROR), trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=stt, mt=mt) as server, bystander(server) as by:
            async with faulty_session(server, source=source, target=target) as faulty:
                await faulty.speak(1)
                codes["listener"] = await until_closed(faulty.listener)
                codes["host"] = await until_closed(faulty.host)
            await by.speak()
            await by.caught_up()
    for role, client in (("listener", faulty.listener), ("host", faulty.host)):
        messages = client.received
        checked(messages)
        ended = messages[-1]
        assert ended["type"] == "session_ended" and ended["reason"] == "error", messages[-3:]
        assert codes[role] == INTERNAL_ERROR
    session_id = faulty.session["sessionId"]
    crashes = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashes) == 1, [r.getMessage() for r in caplog.records]
    assert session_id in crashes[0].getMessage() and crashes[0].exc_info is not None
    assert "injected crash" in caplog.text


async def test_shutdown_drains_sessions_whose_engines_are_stuck() -> None:
    stt = FaultySpeechToText(scripted(), Fault.HANG, for_languages=frozenset({FAULTY_SOURCE}))
    mt = FaultyTranslator(
        EchoTranslator(), Fault.BLOCK, for_targets=frozenset({FAULTY_TARGET}), delay_s=None
    )
    settings = attrs.evolve(config(), translate_timeout_s=10 * TIMEOUT_S)
    codes: list[int | None] = []
    try:
        with trio.fail_after(TIMEOUT_S):
            async with running_server(settings, stt=stt, mt=mt) as server:
                async with (
                    faulty_session(server, source=FAULTY_SOURCE) as deaf,
                    faulty_session(server, target=FAULTY_TARGET) as blocked,
                ):
                    await deaf.speak(1)
                    await blocked.speak(1)
                    await stt.wait_faulted(1)
                    await mt.wait_held(1)
                    server.shutdown()
                    clients = (deaf.host, deaf.listener, blocked.host, blocked.listener)
                    for client in clients:
                        codes.append(await until_closed(client))
            # Leaving running_server waited for serve to return.
    finally:
        mt.release()
    assert codes == [GOING_AWAY] * 4
    for client in clients:
        messages = checked(client.received)
        ended = messages[-1]
        assert ended["type"] == "session_ended" and ended["reason"] == "shutdown", messages[-3:]


# --- the circuit breaker --------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def admitted(breaker: CircuitBreaker) -> Permit:
    permit = breaker.admit()
    assert permit is not None, breaker.state
    return permit


def test_breaker_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("engine", failures=3, reset_s=30, clock=clock)
    for _ in range(2):
        breaker.failed(admitted(breaker))
    breaker.succeeded(admitted(breaker))
    for _ in range(2):
        breaker.failed(admitted(breaker))
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 2
    breaker.failed(admitted(breaker))
    assert breaker.state is BreakerState.OPEN and breaker.times_opened == 1
    clock.now = 29.9
    assert breaker.admit() is None and breaker.admit() is None
    assert breaker.rejected == 2
    assert (breaker.total_failures, breaker.total_successes) == (5, 1)


def test_breaker_half_open_lets_one_trial_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("engine", failures=1, reset_s=30, clock=clock)
    breaker.failed(admitted(breaker))
    clock.now = 30.0
    trial = admitted(breaker)
    assert trial.trial and breaker.state is BreakerState.HALF_OPEN
    assert breaker.admit() is None, "one trial at a time"
    breaker.failed(trial)
    assert breaker.state is BreakerState.OPEN and breaker.opened_at == 30.0
    clock.now = 59.0
    assert breaker.admit() is None
    clock.now = 60.0
    trial = admitted(breaker)
    breaker.succeeded(trial)
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 0
    assert not admitted(breaker).trial


def test_breaker_trial_without_a_verdict_makes_way_for_another() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("engine", failures=1, reset_s=30, clock=clock)
    breaker.failed(admitted(breaker))
    clock.now = 30.0
    breaker.abandoned(admitted(breaker))
    assert breaker.state is BreakerState.HALF_OPEN
    stuck = admitted(breaker)
    assert stuck.trial, "a trial cancelled by its caller frees the slot"
    assert breaker.admit() is None
    clock.now = 60.0
    fresh = admitted(breaker)
    assert fresh.trial, "a trial silent for reset_s makes way for another"
    breaker.abandoned(stuck)
    assert breaker.admit() is None, "the stale trial's end leaves the fresh one's slot"
    breaker.succeeded(fresh)
    assert breaker.state is BreakerState.CLOSED


async def test_breaker_translator_counts_failures_and_timeouts_only(
    autojump_clock: trio.abc.Clock,
) -> None:
    failing = FaultyTranslator(EchoTranslator(), Fault.ERROR, for_marker="fail")
    engine = FaultyTranslator(failing, Fault.HANG, for_marker="hang")
    clock = FakeClock()
    mt = BreakerTranslator(engine, failures=3, reset_s=30, clock=clock)
    assert mt.name == "faulty-faulty-echo" and mt.targets("en") == engine.targets("en")

    with pytest.raises(UnsupportedLanguage):
        await mt.translate("hello", source="en", target="xx")
    async with trio.open_nursery() as caller:
        caller.start_soon(partial(mt.translate, "hang", source="en", target="es"))
        await engine.wait_faulted(1)
        caller.cancel_scope.cancel()
    assert mt.breaker.consecutive_failures == 0, "neither is the engine failing"

    with trio.move_on_after(1.0):
        await mt.translate("hang", source="en", target="es")
    for _ in range(2):
        with pytest.raises(TranslationFailed):
            await mt.translate("fail", source="en", target="es")
    assert mt.breaker.state is BreakerState.OPEN, "a timeout and two failures"

    calls = engine.calls
    with pytest.raises(TranslationFailed, match="circuit open"):
        await mt.translate("hello", source="en", target="es")
    assert engine.calls == calls and mt.breaker.rejected == 1

    clock.now = 30.0
    assert await mt.translate("hello", source="en", target="es") == "[es] hello"
    assert engine.calls == calls + 1 and mt.breaker.state is BreakerState.CLOSED


async def test_breaker_speech_to_text_fails_streams_fast_and_closes_on_a_result() -> None:
    engine = FaultySpeechToText(scripted(), Fault.ERROR, for_languages=frozenset({FAULTY_SOURCE}))
    clock = FakeClock()
    stt = BreakerSpeechToText(engine, failures=2, reset_s=30, clock=clock)
    assert (stt.name, stt.sample_rate) == ("faulty-scripted", engine.sample_rate)
    frame = AudioFrame(silence(SECONDS, stt.sample_rate), stt.sample_rate, 0.0)
    results_send, results_receive = trio.open_memory_channel[SttResult](64)

    def audio() -> tuple[trio.MemorySendChannel[AudioEvent], trio.MemoryReceiveChannel[AudioEvent]]:
        send, receive = trio.open_memory_channel[AudioEvent](1)
        send.send_nowait(frame)
        return send, receive

    with trio.fail_after(TIMEOUT_S):
        for _ in range(2):
            with pytest.raises(EngineError, match="injected failure"):
                await stt.transcribe(audio()[1], results_send, language=FAULTY_SOURCE)
        assert stt.breaker.state is BreakerState.OPEN
        with pytest.raises(EngineError, match="circuit open"):
            await stt.transcribe(audio()[1], results_send, language="en")
        assert engine.streams == 2, "no stream opened while open"

        clock.now = 30.0
        audio_send, audio_receive = audio()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(stt.transcribe, audio_receive, results_send, language="en"))
            first = await results_receive.receive()
            assert stt.breaker.state is BreakerState.CLOSED, "the trial's first result"
            await audio_send.aclose()
    assert first.text and engine.streams == 3


async def test_an_open_breaker_spares_the_engine_while_listeners_get_source_text() -> None:
    failing = FaultyTranslator(EchoTranslator(), Fault.ERROR)
    mt = BreakerTranslator(failing, failures=3, reset_s=3600)
    with trio.fail_after(TIMEOUT_S):
        async with (
            running_server(config(), stt=scripted(), mt=mt) as server,
            faulty_session(server, target=FAULTY_TARGET) as faulty,
        ):
            await faulty.speak(SPOKEN)
            finals = await faulty.listener.finals(SPOKEN)
            # Three failed or refused translations: the circuit is open by now.
            assert mt.breaker.state is BreakerState.OPEN
            calls, rejected = failing.calls, mt.breaker.rejected
            await faulty.speak(SPOKEN)
            finals += await faulty.listener.finals(SPOKEN)
    assert failing.calls == calls, "the engine is not called while the circuit is open"
    assert calls >= 3 and mt.breaker.rejected >= rejected + SPOKEN
    assert [m["originalText"] for m in finals] == SENTENCES[: 2 * SPOKEN]
    assert [m["translatedText"] for m in finals] == SENTENCES[: 2 * SPOKEN]
    assert not any(m["hasTranslation"] for m in finals)


async def test_only_the_external_engines_come_behind_a_breaker() -> None:
    settings = Config(
        openai_api_key="test-key",
        google_project="test",
        google_insecure=True,
        google_endpoint="127.0.0.1:9",
        breaker_failures=4,
        breaker_reset_s=9.0,
    )
    mt = make_mt(attrs.evolve(settings, mt="openai"))
    stt = make_stt(attrs.evolve(settings, stt="google"))
    bare = make_mt(attrs.evolve(settings, mt="openai", breaker_failures=0))
    try:
        assert isinstance(mt, BreakerTranslator) and mt.name == "openai"
        assert (mt.breaker.failures_to_open, mt.breaker.reset_s) == (4, 9.0)
        assert isinstance(stt, BreakerSpeechToText) and stt.name == "google"
        assert stt.sample_rate == settings.google_sample_rate
        assert not isinstance(bare, BreakerTranslator) and bare.name == "openai"
    finally:
        for engine in (mt, stt, bare):
            await engine.aclose()
    assert isinstance(make_mt(attrs.evolve(settings, mt="echo")), EchoTranslator)
    assert isinstance(make_stt(attrs.evolve(settings, stt="scripted")), ScriptedSpeechToText)
