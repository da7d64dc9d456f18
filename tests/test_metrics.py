"""``GET /metrics`` scraped during live sessions: every metric of the hardening issue
moves when what it counts happens, and only on the server where it happens."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import trio
import trio.testing
import wsproto
import wsproto.events as ws_events
from helpers import listener_path, live_session, start_session
from prometheus_client.parser import text_string_to_metric_families

from babel_actors.config import Config
from babel_actors.embed import listen, open_session
from babel_actors.engines.breaker import BreakerTranslator
from babel_actors.metrics import Metrics
from babel_actors.server.app import Server
from babel_actors.stages import STAGES
from babel_actors.testing import (
    EchoTranslator,
    ScriptedSpeechToText,
    connect,
    running_server,
    sentence_script,
    silence,
)
from babel_actors.testing.faults import Fault, FaultySpeechToText, FaultyTranslator

TIMEOUT_S = 20
SENTENCES = [f"metrics sentence {n} is spoken" for n in range(1, 5)]
SECONDS = 1.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scripted() -> ScriptedSpeechToText:
    return ScriptedSpeechToText(sentence_script(SENTENCES, seconds_each=SECONDS))


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(server: Server) -> Samples:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def stage_counts(samples: Samples, kind: str) -> Mapping[str, float]:
    return {
        stage: value(samples, "babel_stage_latency_seconds_count", stage=stage, kind=kind)
        for stage in (*STAGES, "total")
    }


async def settled() -> None:
    """Until every task waits on something outside: what was set in motion is done."""
    await trio.testing.wait_all_tasks_blocked()


# --- a session's life ----------------------------------------------------------------


async def test_a_session_moves_its_metrics() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(Config(port=0), stt=scripted()) as server:
            before = await scrape(server)
            assert value(before, "babel_sessions") == 0
            assert not any(name.endswith("_created") for name, _ in before)
            session = await start_session(server)
            async with (
                connect(server, listener_path(session["sessionId"], "es")) as listener,
                connect(server, session["wsUrl"]) as host,
                connect(server, "/translate?targetLang=es") as solo,
            ):
                assert (await listener.receive())["type"] == "session_joined"
                assert (await host.receive())["type"] == "session_ready"
                assert (await solo.receive())["type"] == "session_ready"
                await host.send({"type": "init", "sampleRate": 24000})
                await host.send_audio(silence(SECONDS / 2))
                await host.send_audio(silence(SECONDS / 2 + 0.05), binary=False)
                await listener.send({"type": "ping", "timestamp": 1})
                finals = await listener.finals(1)
                assert finals[0]["translatedText"] == f"[es] {SENTENCES[0]}"
                during = await scrape(server)
                # The host ends the session: the listener is told once it has drained.
                await host.ws.aclose()
                ended = await listener.receive_until(lambda m: m["type"] == "session_ended")
                assert ended[-1]["reason"] == "host_ended"

            assert value(during, "babel_sessions") == 2
            for role in ("host", "listener", "solo"):
                assert value(during, "babel_connections", role=role) == 1, role
            in_ = "babel_messages_in_total"
            assert moved(before, during, in_, role="host", kind="audio") == 2
            assert moved(before, during, in_, role="host", kind="control") == 1
            assert moved(before, during, in_, role="listener", kind="control") == 1
            out = "babel_messages_out_total"
            # The final reached the listener (es) and the host (en), with partials.
            assert moved(before, during, out, kind="caption") >= 2
            assert moved(before, during, out, kind="notice") >= 1  # the host's stats
            finals_out = "babel_finals_delivered_total"
            assert moved(before, during, finals_out, language="es") == 1
            assert moved(before, during, finals_out, language="en") == 1
            translations = "babel_translations_total"
            assert moved(before, during, translations, engine="echo", source="en", target="es") >= 1
            for stage, count in stage_counts(during, "final").items():
                assert count - stage_counts(before, "final")[stage] >= 2, stage
            assert value(during, "babel_listener_unsent_bytes_gcount") == 1

            await settled()
            after = await scrape(server)
            assert value(after, "babel_sessions") == 0
            for role in ("host", "listener", "solo"):
                assert value(after, "babel_connections", role=role) == 0, role
            ended = "babel_sessions_ended_total"
            assert moved(during, after, ended, reason="host_ended") == 1
            assert moved(during, after, ended, reason="closed") == 1  # the solo session
            assert moved(during, after, out, kind="notice") == 1  # session_ended, to the listener


async def test_metrics_are_per_server() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            running_server(Config(port=0), stt=scripted()) as busy,
            running_server(Config(port=0), stt=scripted()) as idle,
        ):
            before = await scrape(idle)
            async with live_session(busy, "es") as (host, listener, _):
                await host.send_audio(silence(SECONDS + 0.05))
                await listener.finals(1)
                assert value(await scrape(busy), "babel_sessions") == 1
                assert (await scrape(idle)) == before


# --- engines failing -----------------------------------------------------------------


async def test_a_failed_translation_is_counted_by_engine_and_language() -> None:
    mt = FaultyTranslator(EchoTranslator(), Fault.ERROR, for_targets=frozenset({"fr"}))
    with trio.fail_after(TIMEOUT_S):
        async with running_server(Config(port=0), stt=scripted(), mt=mt) as server:
            before = await scrape(server)
            async with live_session(server, "fr") as (host, listener, _):
                await host.send_audio(silence(SECONDS + 0.05))
                final = (await listener.finals(1))[0]
                assert final["hasTranslation"] is False
                after = await scrape(server)
    pair = {"engine": "faulty-echo", "source": "en", "target": "fr"}
    assert moved(before, after, "babel_translations_total", **pair) >= 1
    failures = moved(before, after, "babel_translation_failures_total", **pair, reason="error")
    assert failures >= 1
    assert moved(before, after, "babel_translation_failures_total", **pair, reason="timeout") == 0


async def test_an_engines_circuit_breaker_shows_its_state() -> None:
    failing = FaultyTranslator(EchoTranslator(), Fault.ERROR)
    mt = BreakerTranslator(failing, failures=2, reset_s=3600)
    state = "babel_engine_circuit_state"
    with trio.fail_after(TIMEOUT_S):
        async with running_server(Config(port=0), stt=scripted(), mt=mt) as server:
            before = await scrape(server)
            async with live_session(server, "fr") as (host, listener, _):
                await host.send_audio(silence(3 * SECONDS + 0.05))
                await listener.finals(3)  # two failures open the circuit; the third is refused
                after = await scrape(server)
    engine = mt.name
    assert value(before, state, engine=engine, state="closed") == 1
    assert value(before, state, engine=engine, state="open") == 0
    assert value(after, state, engine=engine, state="open") == 1
    assert value(after, state, engine=engine, state="closed") == 0
    assert moved(before, after, "babel_engine_circuit_opened_total", engine=engine) == 1
    assert moved(before, after, "babel_engine_circuit_rejected_total", engine=engine) >= 1


async def test_a_speech_stream_restart_is_counted() -> None:
    stt = FaultySpeechToText(scripted(), Fault.ERROR)
    config = Config(port=0, engine_retry_s=0.01)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config, stt=stt) as server:
            before = await scrape(server)
            session = await start_session(server)
            async with connect(server, session["wsUrl"]) as host:
                await host.receive()
                for _ in range(2):
                    # Each stream fails on its first audio; the second failure comes
                    # from the stream reopened after the first.
                    await host.send_audio(silence(0.1))
                    await host.receive_until(lambda m: m["type"] == "error")
                after = await scrape(server)
    restarts = moved(
        before, after, "babel_stt_restarts_total", engine="faulty-scripted", reason="error"
    )
    assert restarts >= 1


# --- slow readers --------------------------------------------------------------------

LONG_SENTENCES = [f"{n} " + "word " * 400 for n in range(60)]


async def _unread_listener(port: int, path: str) -> trio.socket.SocketType:
    """A listener whose client never reads: its small receive buffer fills at once."""
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await sock.send(ws.send(ws_events.Request(host="127.0.0.1", target=path)))
    while True:
        ws.receive_data(await sock.recv(65536))
        if any(isinstance(e, ws_events.AcceptConnection) for e in ws.events()):
            return sock


async def _speak_past_a_slow_listener(server: Server) -> tuple[Samples, Samples]:
    """A host speaks the long sentences with partials to a fast listener and a slow one
    reading the source language (every partial reaches it: no translator in between).
    Returns the scrapes before, and after the fast listener had every final."""
    before = await scrape(server)
    session = await start_session(server)
    slow = await _unread_listener(server.port, listener_path(session["sessionId"], "en"))
    with slow:
        async with (
            connect(server, listener_path(session["sessionId"], "en")) as fast,
            connect(server, session["wsUrl"]) as host,
        ):
            await fast.receive()
            await host.receive()
            await host.send_audio(silence(0.1 * len(LONG_SENTENCES) + 0.1))
            await fast.finals(len(LONG_SENTENCES))
            return before, await scrape(server)


def _long_script() -> ScriptedSpeechToText:
    return ScriptedSpeechToText(sentence_script(LONG_SENTENCES, seconds_each=0.1, partials=2))


async def test_a_slow_reader_coalesces_partials_and_shows_its_lag() -> None:
    config = Config(port=0, listener_backlog_bytes=64 << 20, socket_send_buffer=8192)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config, stt=_long_script()) as server:
            before, after = await _speak_past_a_slow_listener(server)
    assert moved(before, after, "babel_partials_coalesced_total") > 0
    assert value(after, "babel_listener_unsent_bytes_gcount") == 2
    assert value(after, "babel_listener_unsent_bytes_bucket", le="0.0") == 1  # the fast one
    assert value(after, "babel_listener_unsent_bytes_gsum") > 64 << 10
    assert moved(before, after, "babel_members_too_slow_total", role="listener") == 0


async def test_a_listener_closed_as_too_slow_is_counted() -> None:
    config = Config(port=0, listener_backlog_bytes=32 << 10, socket_send_buffer=8192)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config, stt=_long_script()) as server:
            before, after = await _speak_past_a_slow_listener(server)
    assert moved(before, after, "babel_members_too_slow_total", role="listener") == 1


# --- an embedded pipeline ------------------------------------------------------------


async def test_an_embedded_session_counts_into_the_metrics_it_is_given() -> None:
    metrics = Metrics()
    with trio.fail_after(TIMEOUT_S):
        async with open_session(stt=scripted(), mt=EchoTranslator(), metrics=metrics) as session:
            assert session.metrics is metrics
            stream = await listen(session, "es")
            await session.feed(silence(SECONDS + 0.05, 16000), 16000)
            async for caption in stream:
                if not caption.segment.is_partial:
                    break
    samples = parse(metrics.exposition()[0].decode())
    assert value(samples, "babel_finals_delivered_total", language="es") == 1
    assert value(samples, "babel_translations_total", engine="echo", source="en", target="es") >= 1
