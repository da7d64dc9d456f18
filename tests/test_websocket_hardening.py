"""The WebSocket frame layer under attack, over real sockets, each probe beside a
bystander session that must lose nothing (``bystander.py``):

- a client that never reads and floods pings cannot grow its send backlog past the
  limit, even after it tripped (finding 4 of issue 15: 85 MB in 2 s);
- a fragmented message is bounded by ``max_message_bytes`` counting each frame, and by
  ``max_message_fragments`` (finding 5: 3M empty continuation frames held 23 MB and
  were never closed).

Time that must pass is moved on with trio's ``MockClock``, running at real speed
otherwise: no sleeps, and no timing in the asserts.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import wsproto
import wsproto.events as ws_events
from bystander import bystander, config, masked_frame, scripted
from helpers import checked
from raw_http import connect_raw, rss_bytes, send_all
from trio.testing import MockClock

from babel_actors.server.websocket import EVENTS_PER_STEP, FRAME_COST
from babel_actors.testing import running_server

TIMEOUT_S = 60
OP_CONTINUATION, OP_TEXT, OP_PING = 0x0, 0x1, 0x9
BACKLOG = 64 << 10
"""``listener_backlog_bytes`` here: what a connection may owe."""
PING_FLOOD_BYTES = 12 << 20
"""Ping frames (125-byte payloads) a client sends without reading: before the fix each
one's pong stayed queued, some 400 bytes of memory apiece, ~37 MB in all."""
TINY_PINGS = 6400
"""Empty ping frames in one write: 38 KB, one read for the server."""
EMPTY_FRAGMENTS = 1_000_000
"""Empty continuation frames of one message: 6 MB on the wire."""
RSS_GROWTH_LIMIT = 16 << 20
PING = b'{"type":"ping","timestamp":7,"pad":"'


@pytest.fixture
def clock() -> MockClock:
    """Real time that a test can also move on at once (``clock.jump``)."""
    return MockClock(rate=1.0)


class RawPeer:
    """A WebSocket client on a raw socket that writes frames by hand and reads the
    server's with wsproto."""

    def __init__(self, sock: trio.socket.SocketType, ws: wsproto.WSConnection) -> None:
        self.sock = sock
        self.ws = ws

    @classmethod
    async def open(cls, port: int, *, receive_buffer: int | None = None) -> RawPeer:
        sock = await connect_raw(port, receive_buffer=receive_buffer)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await sock.send(ws.send(ws_events.Request(host="127.0.0.1", target="/translate")))
        while True:
            ws.receive_data(await sock.recv(1 << 16))
            for event in ws.events():
                assert isinstance(event, ws_events.AcceptConnection), event
                return cls(sock, ws)

    async def until_close(self) -> tuple[list[dict[str, Any]], int | None, int]:
        """Messages, the close code and how many pongs the server sent, until it
        closes."""
        messages: list[dict[str, Any]] = []
        text, pongs = "", 0
        while True:
            try:
                data = await self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                if isinstance(event, ws_events.TextMessage):
                    text += event.data
                    if event.message_finished:
                        messages.append(json.loads(text))
                        text = ""
                elif isinstance(event, ws_events.Pong):
                    pongs += 1
                elif isinstance(event, ws_events.CloseConnection):
                    return checked(messages), event.code, pongs
            if not data:
                return checked(messages), None, pongs


def padded_ping(size: int) -> bytes:
    """A valid ``ping`` message of exactly ``size`` bytes."""
    tail = b'"}'
    return PING + b"a" * (size - len(PING) - len(tail)) + tail


def in_frames(message: bytes, count: int) -> bytes:
    """``message`` as a text message in ``count`` frames."""
    step = -(-len(message) // count)
    parts = [message[n : n + step] for n in range(0, step * count, step)]
    return b"".join(
        masked_frame(OP_TEXT if n == 0 else OP_CONTINUATION, part, fin=n == count - 1)
        for n, part in enumerate(parts)
    )


async def test_a_ping_flood_from_a_client_that_never_reads_stays_bounded_then_closes(
    clock: MockClock,
) -> None:
    settings = attrs.evolve(config(), listener_backlog_bytes=BACKLOG, close_timeout_s=3600)
    ping = masked_frame(OP_PING, bytes(125))
    flood = ping * (PING_FLOOD_BYTES // len(ping))
    with trio.fail_after(TIMEOUT_S) as deadline:
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            peer = await RawPeer.open(server.port, receive_buffer=4096)
            with peer.sock:
                await trio.testing.wait_all_tasks_blocked()
                before = rss_bytes()
                sent = await send_all(peer.sock, flood)
                # The server reads the whole flood (it has till close_timeout_s to
                # leave), answering none past the limit.
                assert sent == len(flood)
                await trio.testing.wait_all_tasks_blocked()
                grown = rss_bytes() - before
                assert grown < RSS_GROWTH_LIMIT, f"RSS grew {grown >> 20} MB"
                await by.speak()
                await by.caught_up()
                deadline.deadline += settings.close_timeout_s
                clock.jump(settings.close_timeout_s)
                messages, code, pongs = await peer.until_close()
        assert code == 1013
        errors = [(m["code"], m["closing"]) for m in messages if m["type"] == "error"]
        assert errors == [(1013, True)] and messages[-1]["type"] == "error"
        # Every pong it got fit within the backlog limit and the kernel's buffers.
        assert 0 < pongs < len(flood) // len(ping) // 4


async def test_empty_fragments_past_the_cap_are_closed_1009_holding_nothing() -> None:
    settings = config()
    fragments = masked_frame(OP_TEXT, b"", fin=False) + masked_frame(
        OP_CONTINUATION, b"", fin=False
    ) * (EMPTY_FRAGMENTS - 1)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            peer = await RawPeer.open(server.port)
            with peer.sock:
                before = rss_bytes()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_all, peer.sock, fragments)
                    messages, code, _ = await peer.until_close()
                assert rss_bytes() - before < RSS_GROWTH_LIMIT
                await by.speak()
        assert code == 1009
        errors = [m for m in messages if m["type"] == "error"]
        assert [(m["code"], m["closing"]) for m in errors] == [(1009, True)]
        assert str(settings.max_message_fragments) in errors[0]["message"]


@pytest.mark.parametrize(
    ("frames", "over", "code"),
    [
        (1, 0, None),  # one frame: the whole limit
        (1, 1, 1009),
        (4, 0, None),  # each frame past the first costs FRAME_COST bytes of the limit
        (4, 1, 1009),
        (64, 0, None),  # the most frames a message may come in
        (65, -1000, 1009),  # one frame more, however small the message
    ],
)
async def test_a_fragmented_message_counts_its_frames_against_the_limit(
    frames: int, over: int, code: int | None
) -> None:
    settings = config()
    assert settings.max_message_fragments == 64
    size = settings.max_message_bytes - FRAME_COST * (frames - 1) + over
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server:
            peer = await RawPeer.open(server.port)
            with peer.sock:
                await send_all(peer.sock, in_frames(padded_ping(size), frames))
                await send_all(peer.sock, masked_frame(0x8, b"\x03\xe8"))
                messages, closed, _ = await peer.until_close()
    answers = [m for m in messages if m["type"] in ("pong", "error")]
    if code is None:
        assert closed == 1000
        assert answers == [{"type": "pong", "timestamp": 7}]
    else:
        assert closed == code
        assert [(m["type"], m["code"], m["closing"]) for m in answers] == [("error", code, True)]


class ConnectionSteps(trio.abc.Instrument):
    """Counts the steps of the tasks that read connections (``_serve_contained``)."""

    def __init__(self) -> None:
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("_serve_contained"):
            self.steps += 1


async def test_thousands_of_frames_in_one_read_are_handled_taking_turns() -> None:
    """Issue 15: no unbounded work per read without a checkpoint. One read of tiny
    frames is handled ``EVENTS_PER_STEP`` at a time, so other sessions run between."""
    counter = ConnectionSteps()
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server:
            peer = await RawPeer.open(server.port)
            with peer.sock:
                await trio.testing.wait_all_tasks_blocked()
                trio.lowlevel.add_instrument(counter)
                try:
                    await send_all(peer.sock, masked_frame(OP_PING, b"") * TINY_PINGS)
                    await send_all(peer.sock, masked_frame(0x8, b"\x03\xe8"))
                    _, code, pongs = await peer.until_close()
                finally:
                    trio.lowlevel.remove_instrument(counter)
    assert (code, pongs) == (1000, TINY_PINGS)
    assert counter.steps >= TINY_PINGS // EVENTS_PER_STEP
