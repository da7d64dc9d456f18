"""Bad input gets its defined answer, and harms nothing else.

Every test runs a bystander session (a host streaming, a listener reading finals)
beside the abused connections, and checks at the end that its listener got every
final exactly once and in order.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
from bystander import (
    MAX_BODY,
    MAX_MESSAGE,
    SECONDS,
    SENTENCES,
    TIMEOUT_S,
    Bystander,
    bystander,
    closed_with,
    config,
    masked_frame,
    raw_until_close,
    raw_websocket,
    refused,
    reply,
    scripted,
)
from helpers import listener_path, start_session
from protocol_schemas import validate_http

from babel_actors.testing import ProtocolClient, connect, running_server, silence

# --- recoverable errors on every role ------------------------------------------------

RECOVERABLE: list[tuple[str, str | bytes]] = [
    ("malformed JSON", '{"type": "ping", '),
    ("not an object", "[1, 2, 3]"),
    ("bad base64 audio", json.dumps({"type": "audio", "audioData": "@@not base64@@"})),
    ("odd base64 audio", json.dumps({"type": "audio", "audioData": "AA=="})),
    ("odd-length binary", b"\x00\x01\x02"),
    ("unknown type", json.dumps({"type": "shout", "text": "hi"})),
    ("missing type", json.dumps({"audioData": "AAAA"})),
    ("sampleRate x", json.dumps({"type": "init", "sourceLang": "en", "sampleRate": "x"})),
    ("sampleRate too high", json.dumps({"type": "init", "sampleRate": 10**6})),
    ("targetLang 5", json.dumps({"type": "init", "targetLang": 5})),
    ("change_language 5", json.dumps({"type": "change_language", "targetLang": 5})),
    ("ping with text timestamp", json.dumps({"type": "ping", "timestamp": "\ud800"})),
    ("ping with NaN", '{"type": "ping", "timestamp": NaN}'),
    ("integer past the digit limit", '{"type": "ping", "timestamp": ' + "9" * 5000 + "}"),
]


async def throw_recoverable(client: ProtocolClient, by: Bystander) -> None:
    for index, (what, raw) in enumerate(RECOVERABLE):
        await client.ws.send_message(raw)
        error = await refused(client, 400)
        assert error["message"], what
        if index % 5 == 0:
            await by.speak()


async def test_host_survives_malformed_messages() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            async with connect(server, session["wsUrl"]) as host:
                assert (await reply(host))["type"] == "session_ready"
                await throw_recoverable(host, by)
                await host.send({"type": "change_language", "targetLang": "fr"})
                await refused(host, 403)
                await host.send({"type": "init", "sourceLang": "xx"})
                assert "available" in (await refused(host, 400))["message"]
                # Still a working host: its own audio becomes captions.
                await host.send_audio(silence(SECONDS + 0.05))
                (final,) = await host.finals(1)
            assert final["originalText"] == SENTENCES[0]


async def test_listener_survives_malformed_messages_and_may_not_send_audio() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            async with connect(server, listener_path(session["sessionId"], "es")) as listener:
                assert (await reply(listener))["type"] == "session_joined"
                await throw_recoverable(listener, by)
                await listener.send_audio(silence(0.01))
                assert "audio" in (await refused(listener, 403))["message"]
                await listener.send_audio(silence(0.01), binary=False)
                await refused(listener, 403)
                await by.speak()
                await listener.send({"type": "audio_end"})
                await refused(listener, 403)
                await listener.send({"type": "change_language", "targetLang": "xx"})
                error = await refused(listener, 400)
                assert "available" in error["message"] and "fr" in error["message"]
                await listener.send({"type": "change_language", "targetLang": "fr"})
                assert (await reply(listener))["type"] == "language_changed"


async def test_solo_survives_malformed_messages() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            async with connect(server, "/translate?targetLang=es") as solo:
                assert (await reply(solo))["type"] == "session_ready"
                await throw_recoverable(solo, by)
                await solo.send({"type": "change_language", "targetLang": "xx"})
                await refused(solo, 400)
                await solo.send_audio(silence(SECONDS + 0.05))
                (final,) = await solo.finals(1)
            assert final["translatedText"] == f"[es] {SENTENCES[0]}"


async def test_a_ping_without_timestamp_gets_the_servers_time() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            async with connect(server, "/translate") as solo:
                await reply(solo)
                await solo.send({"type": "ping"})
                pong = await reply(solo)
                await by.speak()
            assert pong["type"] == "pong" and isinstance(pong["timestamp"], int)


# --- errors that close the connection ------------------------------------------------


async def test_oversize_messages_close_with_1009_on_every_role() -> None:
    too_big = "x" * (MAX_MESSAGE + 1)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            paths = [
                session["wsUrl"],
                listener_path(session["sessionId"], "es"),
                "/translate",
            ]
            for path in paths:
                async with connect(server, path) as client:
                    await reply(client)
                    await client.ws.send_message(too_big)
                    await closed_with(client, 1009)
                await by.speak()
            async with connect(server, "/translate") as solo:
                await reply(solo)
                await solo.ws.send_message(bytes(MAX_MESSAGE + 2))
                await closed_with(solo, 1009)
            # Exactly the limit is fine.
            async with connect(server, session["wsUrl"]) as host:
                await reply(host)
                await host.send_audio(bytes(MAX_MESSAGE))
                await host.send({"type": "ping", "timestamp": 7})
                assert (await reply(host))["type"] == "pong"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (masked_frame(0x1, b'{"type": "\xff\xfe"}'), 1007),
        (masked_frame(0x1, "é".encode()[:1]), 1007),
        (masked_frame(0x3, b"reserved opcode"), 1002),
        (bytes([0x81, 0x02]) + b"{}", 1002),  # clients must mask
    ],
    ids=["invalid-utf8", "truncated-utf8", "reserved-opcode", "unmasked"],
)
async def test_broken_frames_close_with_the_right_code(frame: bytes, code: int) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            for path in (session["wsUrl"], listener_path(session["sessionId"], "es"), "/translate"):
                sock, ws = await raw_websocket(server.port, path)
                with sock:
                    await sock.send(frame)
                    messages, closed_with_code = await raw_until_close(sock, ws)
                assert closed_with_code == code
                assert messages[-1]["type"] == "error" and messages[-1]["code"] == code
                assert messages[-1]["closing"] is True
                await by.speak()


async def test_connections_refused_at_the_door_close_with_1008() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            sid = session["sessionId"]
            doors = [
                ("/translate?role=admin", "unknown role"),
                ("/translate?role=host&sessionId=no-such-session&token=x", "not found"),
                (listener_path("no-such-session", "es"), "not found"),
                (f"/translate?role=host&sessionId={sid}&token=wrong", "hostToken"),
                (listener_path(sid, "es", lastSeq="abc"), "lastSeq"),
                (listener_path(sid, "es", lastSeq="-5"), "lastSeq"),
                (listener_path(sid, "es%20x"), "targetLang"),
            ]
            for path, says in doors:
                async with connect(server, path) as client:
                    error = await closed_with(client, 1008)
                assert says in error["message"], (path, error)
                await by.speak()


async def test_an_unsupported_language_is_refused_naming_the_available_ones() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            for path in (listener_path(session["sessionId"], "xx"), "/translate?targetLang=xx"):
                async with connect(server, path) as client:
                    error = await closed_with(client, 1008)
                assert "'xx'" in error["message"] and "available" in error["message"]
                assert all(lang in error["message"] for lang in ("en", "es", "fr"))
                await by.speak()


# --- HTTP ------------------------------------------------------------------------------


async def post_raw(
    client: httpx.AsyncClient, path: str, content: bytes | None
) -> tuple[int, dict[str, Any]]:
    response = await client.post(path, content=content)
    return response.status_code, response.json()


async def test_join_refuses_bad_requests() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            running_server(config(), stt=scripted()) as server,
            bystander(server) as by,
            httpx.AsyncClient(base_url=server.url) as http,
        ):
            cases = [
                (None, 400, "sessionCode"),
                (b"", 400, "sessionCode"),
                (b"{not json", 400, "JSON"),
                (b"\xff\xfe", 400, "JSON"),
                (b'"a string"', 400, "object"),
                (b'{"sessionCode": ' + b"1" * 5000 + b"}", 400, "JSON"),
                (b'{"targetLang": "es"}', 400, "sessionCode"),
                (b'{"sessionCode": 123456}', 400, "sessionCode"),
                (b'{"sessionCode": "   "}', 400, "sessionCode"),
                (b'{"sessionCode": "ZZZZZZ"}', 404, "not found"),
            ]
            for content, status, says in cases:
                got, body = await post_raw(http, "/session/join", content)
                assert got == status, (content, body)
                validate_http("/session/join", "post", status, body)
                assert says in body["error"]
                await by.speak()


async def test_join_with_a_lone_surrogate_in_the_name_still_answers() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            running_server(config(), stt=scripted()) as server,
            bystander(server) as by,
            httpx.AsyncClient(base_url=server.url) as http,
        ):
            session = await start_session(server)
            body = {"sessionCode": session["sessionCode"], "targetLang": "es", "userName": "\ud800"}
            status, reply_body = await post_raw(http, "/session/join", json.dumps(body).encode())
            await by.speak()
            assert status == 200
            validate_http("/session/join", "post", status, reply_body)


async def test_unknown_routes_wrong_methods_and_big_bodies() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            running_server(config(), stt=scripted()) as server,
            bystander(server) as by,
            httpx.AsyncClient(base_url=server.url) as http,
        ):
            response = await http.get("/no/such/route")
            assert response.status_code == 404 and response.json()["success"] is False
            response = await http.get("/session/ZZZZZZ/info")
            assert response.status_code == 404
            validate_http("/session/{code}/info", "get", 404, response.json())
            for method, path, template in [
                ("GET", "/session/join", "/session/join"),
                ("PUT", "/session/start", "/session/start"),
                ("DELETE", "/health", "/health"),
                ("POST", "/sessions", "/sessions"),
            ]:
                response = await http.request(method, path)
                assert response.status_code == 405, (method, path)
                validate_http(template, method, 405, response.json())
            await by.speak()
            status, body = await post_raw(http, "/session/join", b" " * (MAX_BODY + 1))
            assert status == 413
            validate_http("/session/join", "post", status, body)

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(MAX_BODY // 1000 + 2):
                    yield b" " * 1000

            response = await http.post("/session/start", content=chunks())
            assert response.status_code == 413
            validate_http("/session/start", "post", 413, response.json())
            await by.speak()


async def raw_http(port: int, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``request`` as is; the status and JSON body of the answer, read to EOF."""
    with trio.socket.socket() as sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := await sock.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_malformed_http_gets_400_and_harms_nothing() -> None:
    requests = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /session/join HTTP/1.1\r\nHost: x\r\nContent-Length: twelve\r\n\r\n",
        b"GET http://[::1/health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET //[oops/translate HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
        b"GET /translate HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ]
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            for request in requests:
                status, body = await raw_http(server.port, request)
                assert status == 400, (request, body)
                assert body["success"] is False and body["error"]
                await by.speak()
            async with httpx.AsyncClient(base_url=server.url) as http:
                assert (await http.get("/health")).status_code == 200
