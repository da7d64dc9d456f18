"""The HTTP layer under attack, over real sockets, each probe beside a bystander session
that must lose nothing (``bystander.py``): pipelined requests whose answers are never
read (memory stays bounded: the server stops reading), a pipelined batch (answered a
request at a time, so other connections go on), request smuggling (strict RFC 9112
framing), WebSocket upgrades that RFC 6455 does not allow, the original client's
``/translate/translate`` path, and the access log (a line per request and per
WebSocket, never a secret; ordinary closes are not errors).

Time that must pass is moved on with trio's ``MockClock``, running at real speed
otherwise: no sleeps, and no timing in the asserts.
"""

from __future__ import annotations

import base64
import fcntl
import io
import itertools
import json
import math
import socket
import struct
import termios
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
import trio_websocket
import wsproto.events as ws_events
from bystander import bystander, config, raw_websocket, reply, scripted
from helpers import captured_json, listener_path, post, start_session
from protocol_schemas import validate_http
from raw_http import (
    Answer,
    AnswerReader,
    connect_raw,
    exchange,
    read_to_end,
    rss_bytes,
    send_all,
    unread_by_server,
)
from trio.testing import MockClock

from babel_actors.testing import connect, running_server, silence

TIMEOUT_S = 30
HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
HEAD = b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
HEADS = [False, False, True]
KEY = base64.b64encode(bytes(range(16))).decode()
FLOOD_BYTES = 3_300_000
"""The pipelining probe of issue 15: 3.3 MB of ``GET /health``, never read."""
RSS_GROWTH_LIMIT = 16 << 20
"""The server's memory may grow this much under the flood (it grew 200 MB)."""
FLOOD_TIMEOUT_S = 120
"""Long enough for a server that reads the whole flood to answer it (and fail on RSS)."""
RESUMED = 12_000
"""Answers the flooding client reads once it reads: more than the kernel held."""


@pytest.fixture
def clock() -> MockClock:
    """Real time that a test can also move on at once (``clock.jump``)."""
    return MockClock(rate=1.0)


async def settled() -> None:
    """Every task, the server's too, waits on something."""
    await trio.testing.wait_all_tasks_blocked()


# --- pipelining: answers are bounded, and a batch shares the server --------------------


class Flood:
    """Pipelined ``GET /health`` on one connection, sent as fast as the server takes
    them, answers never read."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.sent = 0

    async def send(self, total: int) -> None:
        chunk = HEALTH * 1000
        while self.sent < total:
            offset = self.sent % len(chunk)
            self.sent += await self.sock.send(chunk[offset : offset + total - self.sent])

    @property
    def requests(self) -> int:
        """Requests begun (the last may be partial)."""
        return math.ceil(self.sent / len(HEALTH))


async def test_unread_pipelined_answers_stop_the_reading_and_memory_stays_bounded() -> None:
    with trio.fail_after(FLOOD_TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            sock = await connect_raw(server.port, receive_buffer=16 << 10)
            with sock:
                flood = Flood(sock)
                await settled()
                before = rss_bytes()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(flood.send, FLOOD_BYTES)
                    await settled()  # the flood is sent, or the server stopped taking it
                    grown = rss_bytes() - before
                    assert grown < RSS_GROWTH_LIMIT, f"RSS grew {grown >> 20} MB"
                    unread = unread_by_server(server.port, sock)
                    assert unread > 0, "the server read on, its answers unread"
                    await by.speak()  # heard while the flood waits
                    await by.caught_up()
                    nursery.cancel_scope.cancel()
                # Reading at last, the client gets its answers, in order; the server
                # reads on as they are taken.
                reader = AnswerReader()
                while len(reader.answers) < RESUMED:
                    reader.feed(await sock.recv(1 << 16))
            assert {answer.status for answer in reader.answers} == {200}
            validate_http("/health", "get", 200, json.loads(reader.answers[0].body))
            # Pipelined requests of every kind are answered one for one, in order.
            mixed = [HEALTH, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", HEAD] * 100
            answers, clean = await exchange(server.port, b"".join(mixed), head=HEADS * 100)
            assert [a.status for a in answers] == [200, 404, 200] * 100 and clean
            await by.speak()


async def test_a_connection_that_never_reads_its_answers_is_closed_after_http_idle_s(
    clock: MockClock,
) -> None:
    settings = attrs.evolve(config(), http_idle_s=30.0)
    with trio.fail_after(TIMEOUT_S + settings.http_idle_s):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            sock = await connect_raw(server.port, receive_buffer=16 << 10)
            with sock:
                flood = Flood(sock)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(flood.send, FLOOD_BYTES)
                    await settled()
                    unread = unread_by_server(server.port, sock)
                    assert unread > 0, "the server read on, its answers unread"
                    clock.jump(settings.http_idle_s)
                    reader = AnswerReader()
                    await read_to_end(sock, reader)  # ends: the server closed
                    nursery.cancel_scope.cancel()
            assert len(reader.answers) < flood.requests
            await by.speak()


def unread_bytes(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0]


@pytest.mark.parametrize("path", ["/health", "/metrics"])
async def test_a_pipelined_batch_is_answered_a_request_at_a_time(path: str) -> None:
    """A task runs once per scheduling batch; a ticker that runs in every batch reads
    what the server has answered since its last run. A server that yields between
    requests answers at most two between two ticks (its run after the ticker's in one
    batch, and before it in the next); one that answers a batch without yielding
    answers it all at once, and every other session waits meanwhile."""
    batch = 200
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.setblocking(False)
                reader = AnswerReader()
                most = 0
                sock.sendall(request * batch)
                while len(reader.answers) < batch:
                    await trio.lowlevel.checkpoint()
                    if waiting := unread_bytes(sock):
                        most = max(most, reader.feed(sock.recv(waiting)))
            assert {a.status for a in reader.answers} == {200}
            assert most <= 2, f"{most} answers in one scheduling batch"
            await by.speak()


# --- framing: no smuggling ------------------------------------------------------------------

SMUGGLED = HEALTH
FRAMING_ERRORS = {
    "CL and TE": (
        b"POST /session/join HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "TE and CL": (
        b"POST /session/join HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 40\r\n\r\n0\r\n\r\n"
    ),
    "TE on HTTP/1.0": (
        b"POST /session/join HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "TE not chunked": (
        b"POST /session/join HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
    ),
    "TE chunked twice": (
        b"POST /session/join HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two lengths": (
        b"POST /session/join HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}"
    ),
    "signed length": b"POST /session/join HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{}",
    "bad chunk size": (
        b"POST /session/join HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    ),
    "space before colon": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Thing : 1\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}


async def test_framing_errors_get_400_and_close_so_nothing_is_smuggled() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            wrong = {}
            for name, request in FRAMING_ERRORS.items():
                answers, clean = await exchange(server.port, request + SMUGGLED)
                statuses = [answer.status for answer in answers]
                if statuses != [400] or not answers[0].closes or not clean:
                    wrong[name] = statuses
                else:
                    validate_http("/session/join", "post", 400, json.loads(answers[0].body))
            assert not wrong, f"answered instead of one 400 and a close: {wrong}"
            await by.speak()


async def test_a_body_over_the_limit_gets_413_though_the_client_sends_it_all() -> None:
    """The refusal comes before the body is read, and the connection closes: it must
    close without a reset, or the client, still sending, may never see the 413."""
    body = b'{"sessionCode": "' + b"x" * (4 << 20) + b'"}'
    head = f"POST /session/join HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            for _ in range(3):
                answers, clean = await exchange(server.port, head.encode() + body)
                assert [a.status for a in answers] == [413] and answers[0].closes and clean
                validate_http("/session/join", "post", 413, json.loads(answers[0].body))
            await by.speak()


# --- WebSocket upgrades -----------------------------------------------------------------------


def upgrade_request(
    path: str,
    *,
    method: str = "GET",
    version: str = "1.1",
    connection: str | None = "Upgrade",
    upgrade: str = "websocket",
    key: str | None = KEY,
    ws_version: str | None = "13",
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    headers = [("Host", "127.0.0.1"), ("Upgrade", upgrade)]
    if connection is not None:
        headers.append(("Connection", connection))
    if key is not None:
        headers.append(("Sec-WebSocket-Key", key))
    if ws_version is not None:
        headers.append(("Sec-WebSocket-Version", ws_version))
    headers += extra
    head = f"{method} {path} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (head + "\r\n").encode()


REFUSED_UPGRADES: dict[str, tuple[dict[str, Any], int]] = {
    "POST": ({"method": "POST"}, 400),
    "HTTP/1.0": ({"version": "1.0"}, 400),
    "no Connection": ({"connection": None}, 400),
    "Connection without upgrade": ({"connection": "keep-alive"}, 400),
    "no key": ({"key": None}, 400),
    "empty key": ({"key": ""}, 400),
    "key not base64": ({"key": "not a key at all!!!!!!=="}, 400),
    "key of 15 bytes": ({"key": base64.b64encode(bytes(15)).decode()}, 400),
    "key of 17 bytes": ({"key": base64.b64encode(bytes(17)).decode()}, 400),
    "two keys": ({"extra": (("Sec-WebSocket-Key", KEY),)}, 400),
    "no version": ({"ws_version": None}, 400),
    "version 8": ({"ws_version": "8"}, 426),
}
ACCEPTED_UPGRADES: dict[str, dict[str, Any]] = {
    "the usual": {},
    "a token list": {"connection": "keep-alive, Upgrade"},
    "any case": {"connection": "UPGRADE", "upgrade": "WebSocket"},
}


async def upgrade_answer(port: int, request: bytes) -> Answer:
    """The answer to ``request``: a refusal whole, or the head of a 101 (what follows
    it is WebSocket frames)."""
    with trio.fail_after(TIMEOUT_S):
        sock = await connect_raw(port)
        with sock:
            await send_all(sock, request)
            data = b""
            while chunk := await sock.recv(65536):
                data += chunk
                if data.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in data:
                    data = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                    break
    reader = AnswerReader()
    reader.feed(data)
    assert len(reader.answers) == 1 and not reader.buffer, data
    return reader.answers[0]


async def test_upgrades_follow_rfc_6455_or_are_refused_without_switching() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            path = listener_path(session["sessionId"], "es")
            wrong = {}
            for name, (changes, status) in REFUSED_UPGRADES.items():
                answer = await upgrade_answer(server.port, upgrade_request(path, **changes))
                if answer.status != status:
                    wrong[name] = answer.status
                    continue
                validate_http("/translate", "get", status, json.loads(answer.body))
                if status == 426:
                    assert answer.headers.get("sec-websocket-version") == "13", answer
            for name, changes in ACCEPTED_UPGRADES.items():
                answer = await upgrade_answer(server.port, upgrade_request(path, **changes))
                if answer.status != 101:
                    wrong[name] = answer.status
            assert not wrong, f"statuses not as RFC 6455 says: {wrong}"
            await by.speak()


# --- the original client's path --------------------------------------------------------------


async def test_the_original_clients_translate_translate_path_reaches_the_socket() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            deployed = "/translate/translate?" + session["wsUrl"].split("?", 1)[1]
            listener = listener_path(session["sessionId"], "es").replace(
                "/translate?", "/translate/translate?"
            )
            async with connect(server, listener) as reader, connect(server, deployed) as host:
                joined = await reply(reader)
                assert joined["type"] == "session_joined", joined
                assert (await reply(host))["type"] == "session_ready"
                await host.send_audio(silence(1.05))
                assert len(await reader.finals(1)) == 1
            for elsewhere in ("/translatex", "/translat", "/other/translate"):
                with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                    async with connect(server, elsewhere):
                        pass
                assert rejected.value.status_code == 404, elsewhere
            await by.speak()


# --- the access log ----------------------------------------------------------------------------


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def access_lines(out: io.StringIO) -> list[str]:
    found = [r for r in records(out) if r["logger"] == "babel_actors.access"]
    assert all(r["level"] == "INFO" for r in found), found
    return [r["message"] for r in found]


OPERATOR_KEY = "operator-key-for-the-log-7c1d"
QUERY_KEY = "api-key-in-a-query-5e2b"


async def test_each_request_refusal_and_websocket_gets_one_access_line_without_secrets() -> None:
    settings = attrs.evolve(config(), operator_key=OPERATOR_KEY)
    with captured_json() as out, trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            token = session["hostToken"]
            async with httpx.AsyncClient(base_url=server.url) as http:
                assert (await http.get("/health")).status_code == 200
                assert (await http.get("/no/such/page?token=abc")).status_code == 404
                assert (await http.get("/metrics")).status_code == 401
                operator = {"X-API-Key": OPERATOR_KEY}
                assert (await http.get("/metrics", headers=operator)).status_code == 200
                plain = await http.get(session["wsUrl"])
                assert plain.status_code == 426
            status, _ = await post(server, "/session/join", {"sessionCode": "ZZZZZZ"})
            assert status == 404
            async with connect(server, session["wsUrl"]) as host:
                assert (await reply(host))["type"] == "session_ready"
            unknown = listener_path("00000000-0000-0000-0000-000000000000", "es")
            async with connect(server, unknown) as stranger:
                assert (await reply(stranger))["type"] == "error"
            async with connect(server, f"/translate?apiKey={QUERY_KEY}") as solo:
                assert (await reply(solo))["type"] == "session_ready"
            refused = await upgrade_answer(server.port, upgrade_request(session["wsUrl"], key=""))
            assert refused.status == 400
            await by.speak()
            await settled()
    text = out.getvalue()
    for secret in (token, OPERATOR_KEY, QUERY_KEY):
        assert secret not in text
    lines = access_lines(out)
    expected = [
        "GET /health 200",
        "GET /no/such/page 404",
        "GET /metrics 401",
        "GET /metrics 200",
        "GET /translate 426",
        "POST /session/join 404",
        "POST /session/start 200",
        "GET /translate 400",
    ]
    for part in expected:
        assert any(f"127.0.0.1 {part}" in line for line in lines), (part, lines)
    assert not any("?" in line for line in lines), "no query string is logged"
    sid = session["sessionId"]
    for opened in (f"host opened (session {sid})", "listener opened", "solo opened"):
        assert any(opened in line for line in lines), (opened, lines)
    closes = [line for line in lines if " closed " in line]
    assert any("host closed 1000" in line for line in closes), closes
    assert any("listener closed 1008" in line for line in closes), closes
    assert any("solo closed 1000" in line for line in closes), closes


class FloodingHost:
    """A host streaming audio as fast as the server takes it, reading all the while.
    It answers the server's close, but its sender goes on until the server's side of
    the connection ends, as a client's sender does until it notices."""

    def __init__(self) -> None:
        self.streaming = trio.Event()
        """Set once the audio is well under way."""
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.clean = False
        """The server's side ended with a FIN, not a reset."""

    async def connect(self, port: int, path: str) -> None:
        self.sock, self.ws = await raw_websocket(port, path)

    async def run(self) -> None:
        """Stream until the server's side ends; ``streaming`` is set on the way out
        in any case, so nobody waits for it in vain."""
        try:
            await self._stream()
        finally:
            self.streaming.set()

    async def _stream(self) -> None:
        sock, ws = self.sock, self.ws
        frame = ws.send(ws_events.BytesMessage(data=silence(0.02)))
        answer: list[bytes] = []

        async def flood() -> None:
            for sent in itertools.count():
                try:
                    # The close is answered with audio queued behind it, as a
                    # sender that has not noticed yet has.
                    await sock.send(answer.pop() + frame * 200 if answer else frame)
                except OSError:
                    return
                if sent == 50:
                    self.streaming.set()

        with sock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                while True:
                    try:
                        data = await sock.recv(1 << 16)
                    except ConnectionResetError:
                        break
                    if not data:
                        self.clean = True
                        break
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, ws_events.TextMessage):
                            self.messages.append(json.loads(event.data))
                        elif isinstance(event, ws_events.CloseConnection):
                            self.close_code = event.code
                            answer.append(ws.send(event.response()))
                nursery.cancel_scope.cancel()

    @property
    def ended(self) -> str | None:
        ended = [m for m in self.messages if m["type"] == "session_ended"]
        return ended[0]["reason"] if ended else None


async def test_ordinary_ends_are_not_errors_and_close_cleanly(clock: MockClock) -> None:
    """A host still sending as its session expires or the server shuts down, a listener
    and an HTTP client that vanish with answers unsent: none of it is an error. The
    streaming hosts get ``session_ended``, the close frame and a clean end (FIN): the
    server closing on audio it has not read would reset the connection instead, and
    a reset destroys what the host has yet to read."""
    settings = attrs.evolve(config(), audio_rate_slack=0, max_session_s=3600.0)
    with captured_json() as out, trio.fail_after(TIMEOUT_S + settings.max_session_s):
        async with running_server(settings, stt=scripted()) as server:
            # The streaming host's session is half its life older than the bystander's.
            session = await start_session(server)
            host = FloodingHost()
            await host.connect(server.port, session["wsUrl"])
            clock.jump(settings.max_session_s / 2)
            async with bystander(server) as by:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(host.run)
                    await host.streaming.wait()
                    clock.jump(settings.max_session_s / 2)
                assert (host.ended, host.close_code, host.clean) == ("expired", 1000, True)
                # A listener and a pipelining client that reset their connections.
                listener_id = (await start_session(server))["sessionId"]
                for request in (upgrade_request(listener_path(listener_id, "es")), HEALTH * 50):
                    with socket.create_connection(("127.0.0.1", server.port)) as sock:
                        sock.sendall(request)
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        await settled()
                await settled()
                await by.speak()
            session = await start_session(server)
            host = FloodingHost()
            await host.connect(server.port, session["wsUrl"])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(host.run)
                await host.streaming.wait()
                server.shutdown()
            assert (host.ended, host.close_code, host.clean) == ("shutdown", 1001, True)
    bad = [r for r in records(out) if r["level"] in ("ERROR", "CRITICAL") or "exception" in r]
    assert not bad, bad
