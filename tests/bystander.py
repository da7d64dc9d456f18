"""A bystander session that goes on beside abuse, and the WebSocket helpers that
tests of bad input, limits, faults and fuzzing share.

``bystander(server)`` runs a session (a host speaking a sentence at a time, a listener
reading finals) and checks on exit that its listener got every final exactly once,
in order, translated.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket
import wsproto
import wsproto.events as ws_events
from helpers import checked, listener_path, start_session
from protocol_schemas import validate_server_message

from babel_actors.config import Config
from babel_actors.server.app import Server
from babel_actors.testing import (
    ProtocolClient,
    ScriptedSpeechToText,
    connect,
    sentence_script,
    silence,
)

SENTENCES = [f"bystander sentence {n} goes by" for n in range(1, 13)]
SECONDS = 1.0
MAX_MESSAGE = 64 << 10
MAX_BODY = 8 << 10
TIMEOUT_S = 20


def config() -> Config:
    # The bystander may speak every sentence with no pause, far ahead of real time: a
    # burst that holds them all keeps the audio-rate limit off it.
    return Config(
        port=0,
        max_message_bytes=MAX_MESSAGE,
        max_http_body_bytes=MAX_BODY,
        audio_burst_s=len(SENTENCES) * SECONDS + 1,
    )


def scripted() -> ScriptedSpeechToText:
    return ScriptedSpeechToText(sentence_script(SENTENCES, seconds_each=SECONDS))


# --- the bystander session -----------------------------------------------------------


class Bystander:
    """A session that goes on beside the abuse: its host speaks a sentence at a time
    while its listener reads in the background."""

    def __init__(self, host: ProtocolClient, listener: ProtocolClient) -> None:
        self.host = host
        self.listener = listener
        self.spoken = 0
        self.finals: list[dict[str, Any]] = []
        self._heard = trio.Event()

    async def speak(self) -> None:
        """Stream one more sentence's audio; its final arrives in the background."""
        await self.host.send_audio(silence(SECONDS))
        self.spoken += 1

    async def caught_up(self) -> None:
        while len(self.finals) < self.spoken:
            await self._heard.wait()

    async def listen(self) -> None:
        while True:
            message = await self.listener.receive()
            validate_server_message(message)
            assert message["type"] != "error", message
            if message["type"] == "session_ended":
                return
            if message["type"] == "translation" and not message["isPartial"]:
                self.finals.append(message)
                heard, self._heard = self._heard, trio.Event()
                heard.set()

    async def drain_host(self) -> None:
        try:
            while True:
                message = await self.host.receive()
                validate_server_message(message)
                assert message["type"] != "error", message
        except trio_websocket.ConnectionClosed:
            return


@asynccontextmanager
async def bystander(server: Server) -> AsyncIterator[Bystander]:
    session = await start_session(server)
    async with (
        connect(server, listener_path(session["sessionId"], "es")) as listener,
        connect(server, session["wsUrl"]) as host,
    ):
        assert (await listener.receive())["type"] == "session_joined"
        assert (await host.receive())["type"] == "session_ready"
        by = Bystander(host, listener)
        # The resampler holds back a few milliseconds: a short lead makes each
        # sentence's audio enough for its final.
        await host.send_audio(silence(0.05))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(by.listen)
            nursery.start_soon(by.drain_host)
            await by.speak()
            yield by
            await by.speak()
            await by.caught_up()
            await host.ws.aclose()
    assert by.spoken >= 2
    assert [m["originalText"] for m in by.finals] == SENTENCES[: by.spoken]
    assert [m["translatedText"] for m in by.finals] == [f"[es] {s}" for s in SENTENCES[: by.spoken]]
    seqs = [m["seqId"] for m in by.listener.received if m["type"] == "translation"]
    assert seqs == sorted(set(seqs))


# --- WebSocket helpers ---------------------------------------------------------------


async def reply(client: ProtocolClient) -> dict[str, Any]:
    """The next answer to what ``client`` sent, past session_stats and captions."""
    while True:
        message = await client.receive()
        validate_server_message(message)
        if message["type"] not in ("session_stats", "translation"):
            return message


async def refused(client: ProtocolClient, code: int) -> dict[str, Any]:
    """The recoverable ``error`` with ``code``; then the connection still answers pings."""
    error = await reply(client)
    assert error["type"] == "error" and error["code"] == code, error
    assert error["closing"] is False
    await client.send({"type": "ping", "timestamp": 42})
    pong = await reply(client)
    assert pong == {"type": "pong", "timestamp": 42}
    return error


async def closed_with(client: ProtocolClient, code: int) -> dict[str, Any]:
    """The closing ``error``, then the close frame, both with ``code``."""
    error = await reply(client)
    assert error["type"] == "error" and error["code"] == code and error["closing"] is True, error
    try:
        message = await client.receive()
    except trio_websocket.ConnectionClosed as closed:
        assert closed.reason is not None and closed.reason.code == code
        return error
    raise AssertionError(f"expected a close with {code}, got {message}")


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame (masked, as clients must), built by hand to carry what wsproto
    would refuse to send; ``fin`` False for a fragment that more will follow."""
    mask = b"\x5a\xa5\x0f\xf0"
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    pad = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(pad, "big")).to_bytes(size, "big")
    return head + mask + masked


async def raw_websocket(
    port: int, path: str
) -> tuple[trio.socket.SocketType, wsproto.WSConnection]:
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await sock.send(ws.send(ws_events.Request(host="127.0.0.1", target=path)))
    while True:
        ws.receive_data(await sock.recv(65536))
        for event in ws.events():
            assert isinstance(event, ws_events.AcceptConnection), event
            return sock, ws


async def raw_until_close(
    sock: trio.socket.SocketType, ws: wsproto.WSConnection
) -> tuple[list[dict[str, Any]], int | None]:
    """Messages and the close code the server sends, until it closes."""
    messages: list[dict[str, Any]] = []
    while True:
        data = await sock.recv(65536)
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, ws_events.TextMessage):
                assert event.message_finished
                messages.append(json.loads(event.data))
            elif isinstance(event, ws_events.CloseConnection):
                return checked(messages), event.code
        if not data:
            return checked(messages), None
