"""The live pipeline end to end over real sockets, on the scripted engine and echo MT."""

from __future__ import annotations

import socket

import trio
import trio_websocket
import wsproto
import wsproto.events as ws_events
from helpers import checked, finals_of, get, listener_path, live_session, start_session

from babel_actors.config import Config
from babel_actors.testing import (
    EchoTranslator,
    ScriptedSpeechToText,
    connect,
    running_server,
    sentence_script,
    silence,
)

SENTENCES = [f"sentence number {n} is spoken here" for n in range(1, 9)]
SECONDS = 1.0


def scripted() -> ScriptedSpeechToText:
    return ScriptedSpeechToText(sentence_script(SENTENCES, seconds_each=SECONDS))


async def speak(host, sentences: int) -> None:  # type: ignore[no-untyped-def]
    """Send audio for ``sentences`` scripted sentences, each as two binary frames."""
    for _ in range(sentences * 2):
        await host.send_audio(silence(SECONDS / 2))
    # The resampler holds back a few milliseconds; this tail pushes them through.
    await host.send_audio(silence(0.05))


async def test_two_listeners_get_every_final_once_in_order() -> None:
    echo = EchoTranslator()
    with trio.fail_after(20):
        async with running_server(Config(port=0), stt=scripted(), mt=echo) as server:
            session = await start_session(server)
            async with (
                connect(server, listener_path(session["sessionId"], "es")) as es,
                connect(server, listener_path(session["sessionId"], "fr")) as fr,
                connect(server, session["wsUrl"]) as host,
            ):
                joined = await es.receive()
                assert joined["type"] == "session_joined" and joined["targetLang"] == "es"
                await fr.receive()
                ready = await host.receive()
                assert ready["type"] == "session_ready" and ready["role"] == "host"
                await host.send({"type": "init", "sourceLang": "en", "sampleRate": 24000})
                await speak(host, 4)
                es_finals = await es.finals(4)
                fr_finals = await fr.finals(4)
                host_finals = await host.finals(4)

            for client, lang in ((es, "es"), (fr, "fr")):
                messages = checked(client.received)
                captions = [m for m in messages if m["type"] == "translation"]
                seqs = [m["seqId"] for m in captions]
                assert seqs == sorted(set(seqs)), "seqIds strictly increase"
                finals = finals_of(messages)
                assert [m["originalText"] for m in finals] == SENTENCES[:4]
                assert all(m["targetLang"] == lang and m["hasTranslation"] for m in finals)
                assert [m["translatedText"] for m in finals] == [
                    f"[{lang}] {s}" for s in SENTENCES[:4]
                ]
            assert [m["seqId"] for m in es_finals] == [m["seqId"] for m in fr_finals]
            assert [m["translatedText"] for m in checked(host_finals)] == SENTENCES[:4]
            host_captions = [m for m in host.received if m["type"] == "translation"]
            assert host_captions[0]["isPartial"], "the host sees partials before the final"
            for sentence in SENTENCES[:4]:
                assert echo.calls[(sentence, "es")] == 1
                assert echo.calls[(sentence, "fr")] == 1


async def test_base64_audio_drives_the_pipeline_like_binary() -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0), stt=scripted()) as server:
            session = await start_session(server)
            async with connect(server, session["wsUrl"]) as host:
                await host.receive()
                await host.send({"type": "init", "sourceLang": "en", "sampleRate": 24000})
                # One chunk more than the script needs: the resampler's filter holds
                # back a few milliseconds.
                for _ in range(5):
                    await host.send_audio(silence(SECONDS / 2, 24000), binary=False)
                finals = await host.finals(2)
            assert [m["originalText"] for m in finals] == SENTENCES[:2]


async def _raw_listener(
    port: int, path: str
) -> tuple[trio.socket.SocketType, wsproto.WSConnection]:
    """A WebSocket client with a tiny receive buffer that reads only when told to."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await sock.send(ws.send(ws_events.Request(host="127.0.0.1", target=path)))
    while True:
        ws.receive_data(await sock.recv(65536))
        if any(isinstance(e, ws_events.AcceptConnection) for e in ws.events()):
            return sock, ws


async def test_slow_listener_delays_nobody_and_loses_no_final() -> None:
    long_sentences = [f"{n} " + "word " * 400 for n in range(100)]
    stt = ScriptedSpeechToText(sentence_script(long_sentences, seconds_each=0.1, partials=1))
    with trio.fail_after(8):
        config = Config(
            port=0, listener_backlog_bytes=64 << 20, socket_send_buffer=8192, audio_burst_s=20.0
        )
        async with running_server(config, stt=stt) as server:
            session = await start_session(server)
            sock, ws = await _raw_listener(server.port, listener_path(session["sessionId"], "es"))
            async with (
                connect(server, listener_path(session["sessionId"], "es")) as fast,
                connect(server, session["wsUrl"]) as host,
            ):
                await fast.receive()
                await host.receive()
                await host.send_audio(silence(0.1 * len(long_sentences) + 0.1))
                fast_finals = await fast.finals(len(long_sentences))
                live = server.registry.get(session["sessionId"])
                assert live is not None
                # The fast listener has everything while the slow one still owes bytes.
                owed = [
                    m.conn.backlog_bytes
                    for m in live.audience.members()
                    if m.role.value == "listener"
                ]
                assert max(owed) > 0 and min(owed) == 0
                slow_finals: list[str] = []
                text = ""
                while len(slow_finals) < len(long_sentences):
                    ws.receive_data(await sock.recv(65536))
                    for event in ws.events():
                        if isinstance(event, ws_events.TextMessage):
                            text += event.data
                            if event.message_finished:
                                if '"isPartial":false' in text:
                                    slow_finals.append(text)
                                text = ""
            sock.close()
            assert [m["originalText"] for m in fast_finals] == [
                " ".join(s.split()) for s in long_sentences
            ]
            assert len(slow_finals) == len(long_sentences)


async def test_resume_with_last_seq_gets_exactly_the_missed_finals() -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0), stt=scripted()) as server:
            session = await start_session(server)
            sid = session["sessionId"]
            async with connect(server, session["wsUrl"]) as host:
                await host.receive()
                async with connect(server, listener_path(sid, "es")) as listener:
                    await listener.receive()
                    await speak(host, 2)
                    first = await listener.finals(2)
                await speak(host, 2)
                await host.finals(4)
                last_seq = first[-1]["seqId"]
                async with connect(server, listener_path(sid, "es", lastSeq=last_seq)) as back:
                    joined = await back.receive()
                    assert joined["resumedFrom"] == last_seq
                    missed = await back.finals(2)
                    await speak(host, 1)
                    live = await back.finals(1)
            got = [m["originalText"] for m in missed + live]
            assert got == SENTENCES[2:5]
            assert all(m["seqId"] > last_seq for m in missed)


async def test_late_joiner_gets_recent_finals_in_its_language() -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0, catchup_finals=2), stt=scripted()) as server:
            session = await start_session(server)
            async with connect(server, session["wsUrl"]) as host:
                await host.receive()
                await speak(host, 3)
                await host.finals(3)
                async with connect(server, listener_path(session["sessionId"], "de")) as late:
                    await late.receive()
                    recent = await late.finals(2)
            assert [m["translatedText"] for m in checked(recent)] == [
                f"[de] {s}" for s in SENTENCES[1:3]
            ]


async def test_change_language_applies_from_the_next_segment() -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0), stt=scripted()) as server:
            async with live_session(server, "es") as (host, listener, _):
                await speak(host, 1)
                (before,) = await listener.finals(1)
                await listener.send({"type": "change_language", "targetLang": "fr"})
                await listener.receive_until(lambda m: m["type"] == "language_changed")
                await speak(host, 1)
                (after,) = await listener.finals(1)
                await listener.send({"type": "change_language", "targetLang": "xx"})
                refused = await listener.receive_until(lambda m: m["type"] == "error")
            assert before["targetLang"] == "es" and after["targetLang"] == "fr"
            assert after["translatedText"] == f"[fr] {SENTENCES[1]}"
            assert "available" in refused[-1]["message"] and "fr" in refused[-1]["message"]


async def test_host_reconnecting_within_grace_keeps_session_and_listeners() -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0, host_grace_s=60), stt=scripted()) as server:
            session = await start_session(server)
            async with connect(server, listener_path(session["sessionId"], "es")) as listener:
                await listener.receive()
                async with connect(server, session["wsUrl"]) as host:
                    await host.receive()
                    await speak(host, 1)
                    await listener.finals(1)
                    await host.ws.aclose(code=1001)
                _, info = await get(
                    server, f"/session/{session['sessionCode']}/info", "/session/{code}/info"
                )
                assert info["session"]["isActive"] is False
                async with connect(server, session["wsUrl"]) as host:
                    ready = await host.receive()
                    assert ready["sessionId"] == session["sessionId"]
                    await speak(host, 1)
                    (final,) = await listener.finals(1)
            assert final["originalText"] == SENTENCES[1]
            assert not any(m["type"] == "session_ended" for m in listener.received)


async def test_host_gone_past_grace_ends_session_for_listeners() -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0, host_grace_s=0.2), stt=scripted()) as server:
            session = await start_session(server)
            async with connect(server, listener_path(session["sessionId"], "es")) as listener:
                await listener.receive()
                async with connect(server, session["wsUrl"]) as host:
                    await host.receive()
                    await host.ws.aclose(code=1001)
                ended = await listener.receive_until(lambda m: m["type"] == "session_ended")
                try:
                    await listener.receive()
                except trio_websocket.ConnectionClosed as closed:
                    assert closed.reason.code == 1000
            assert checked(ended)[-1]["reason"] == "host_timeout"
            status, _ = await get(
                server, f"/session/{session['sessionCode']}/info", "/session/{code}/info"
            )
            assert status == 404


async def test_host_closing_normally_ends_the_session() -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0), stt=scripted()) as server:
            session = await start_session(server)
            async with connect(server, listener_path(session["sessionId"], "es")) as listener:
                await listener.receive()
                async with connect(server, session["wsUrl"]) as host:
                    await host.receive()
                ended = await listener.receive_until(lambda m: m["type"] == "session_ended")
            assert ended[-1]["reason"] == "host_ended"


async def test_host_without_token_is_refused_with_1008() -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0), stt=scripted()) as server:
            session = await start_session(server)
            async with connect(
                server, f"/translate?role=host&sessionId={session['sessionId']}"
            ) as host:
                error = await host.receive()
                try:
                    await host.receive()
                    raise AssertionError("the connection should have closed")
                except trio_websocket.ConnectionClosed as closed:
                    code = closed.reason.code
            assert checked([error])[0]["code"] == 1008 and error["closing"] is True
            assert code == 1008


async def test_tokenless_hosts_allowed_by_flag() -> None:
    with trio.fail_after(20):
        config = Config(port=0, allow_tokenless_hosts=True)
        async with running_server(config, stt=scripted()) as server:
            session = await start_session(server)
            async with connect(
                server, f"/translate?role=host&sessionId={session['sessionId']}"
            ) as host:
                ready = await host.receive()
            assert ready["type"] == "session_ready"


async def test_solo_user_reads_own_translation() -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0), stt=scripted()) as server:
            async with connect(server, "/translate") as solo:
                await solo.send({"type": "init", "sourceLang": "en", "targetLang": "es"})
                await solo.receive_until(lambda m: m["type"] == "session_ready")
                await speak(solo, 1)
                (final,) = await solo.finals(1)
            assert checked(solo.received) and final["translatedText"] == f"[es] {SENTENCES[0]}"


async def test_ping_pong_and_session_stats() -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0), stt=scripted()) as server:
            session = await start_session(server)
            async with connect(server, session["wsUrl"]) as host:
                await host.receive()
                await host.send({"type": "ping", "timestamp": 1234})
                pong = await host.receive_until(lambda m: m["type"] == "pong")
                async with connect(server, listener_path(session["sessionId"], "es")) as _es:
                    stats = await host.receive_until(
                        lambda m: m["type"] == "session_stats" and m["stats"]["listenerCount"] == 1
                    )
            assert pong[-1]["timestamp"] == 1234
            assert checked(stats)[-1]["stats"]["languageCounts"] == {"es": 1}
