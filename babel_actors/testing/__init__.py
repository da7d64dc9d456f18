"""Helpers for tests, the bench and embedders: a server on a free port, a WebSocket
client that speaks the protocol, and re-exports of the scripted and echo engines."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket

from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.engines.echo import EchoTranslator
from babel_actors.engines.scripted import (
    ScriptedSpeechToText,
    ScriptLine,
    sentence_script,
)
from babel_actors.server.app import Server, serve
from babel_actors.wire.client import encode_base64_pcm

__all__ = [
    "EchoTranslator",
    "ProtocolClient",
    "ScriptLine",
    "ScriptedSpeechToText",
    "connect",
    "running_server",
    "sentence_script",
    "silence",
]


def silence(seconds: float, sample_rate: int = 24000) -> bytes:
    """``seconds`` of 16-bit mono zeros: audio that drives the scripted engine.
    The default rate is the protocol's default (a host that sends no ``sampleRate``)."""
    return b"\0\0" * int(seconds * sample_rate)


@asynccontextmanager
async def running_server(
    config: Config | None = None,
    *,
    stt: SpeechToText | None = None,
    mt: Translator | None = None,
) -> AsyncIterator[Server]:
    """A server on 127.0.0.1 and a free port (scripted STT and echo MT by default),
    shut down gracefully when the block exits."""
    config = config or Config(port=0)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(
            serve, config, stt or ScriptedSpeechToText(), mt or EchoTranslator()
        )
        try:
            yield server
        finally:
            server.shutdown()


class ProtocolClient:
    """A real WebSocket client on ``/translate`` with JSON helpers."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(message))

    async def send_audio(self, pcm: bytes, *, binary: bool = True) -> None:
        if binary:
            await self.ws.send_message(pcm)
        else:
            await self.send(
                {"type": "audio", "audioData": encode_base64_pcm(pcm), "streaming": True}
            )

    async def receive(self) -> dict[str, Any]:
        """The next message; raises ``trio_websocket.ConnectionClosed`` when closed."""
        message: dict[str, Any] = json.loads(await self.ws.get_message())
        self.received.append(message)
        return message

    async def receive_until(self, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Messages up to and including the first for which ``done`` is true."""
        got = []
        while True:
            message = await self.receive()
            got.append(message)
            if done(message):
                return got

    async def finals(self, count: int) -> list[dict[str, Any]]:
        """Read until ``count`` finals have arrived; return those finals."""
        finals: list[dict[str, Any]] = []
        while len(finals) < count:
            message = await self.receive()
            if message.get("type") == "translation" and not message["isPartial"]:
                finals.append(message)
        return finals


@asynccontextmanager
async def connect(server: Server, path: str) -> AsyncIterator[ProtocolClient]:
    """Open ``path`` (``/translate?...``) on ``server`` as a WebSocket client."""
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{server.port}{path}") as ws:
        yield ProtocolClient(ws)
