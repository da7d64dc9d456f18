"""Hardening of a live session against what issue 15 found, each on real sockets beside
a bystander session (``bystander.py``) that must lose nothing:

- control messages are rate-limited per connection, and the host's ``session_stats``
  are paced, so a listener flooding ``change_language`` cannot get its host closed as
  too slow (finding 2);
- the audio meter runs on the host's own timeline, so audio the host sent in real time
  while the server was stalled is not refused when it is read at once (finding 3);
- ``resumedFrom`` says which finals aged out of history (finding 6);
- a host still sending as its session ends has an expected, quiet end (finding 7).

Time is trio's ``MockClock``, running at real speed and moved on at once where a test
needs time to pass (``clock.jump``): no sleeps, and no timing in the asserts beyond
counting against the clock's own time.
"""

from __future__ import annotations

import json
import logging
import socket
from collections import deque
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
import wsproto
import wsproto.events as ws_events
from bystander import SECONDS, bystander, config, reply, scripted
from helpers import listener_path, refusals, start_session
from protocol_schemas import validate_server_message
from trio.testing import MockClock

from babel_actors.audience import Role
from babel_actors.config import Config
from babel_actors.events import Segment
from babel_actors.history import History
from babel_actors.metrics import Metrics
from babel_actors.renderer import Renderer
from babel_actors.room import Room
from babel_actors.server.limits import AudioMeter, MessageMeter
from babel_actors.testing import EchoTranslator, ProtocolClient, connect, running_server, silence

TIMEOUT_S = 30
SLOW_BUFFER = 4096
"""SO_RCVBUF of a host that reads slowly, and SO_SNDBUF of the server's sockets: what
the kernel holds for a reader that does not read is then tiny, so what it owes shows up
in the server's backlog."""
BACKLOG = 16 << 10
"""``listener_backlog_bytes`` where a slow host is at stake: what it may owe."""
FLOOD = 1500
"""Messages in a flood: before the fixes, 1500 ``session_stats`` (about 180 KB) to a
host that does not read got it closed as too slow."""


@pytest.fixture
def clock() -> MockClock:
    """Real time that a test can also move on at once (``clock.jump``)."""
    return MockClock(rate=1.0)


# --- a raw client ---------------------------------------------------------------------


class RawClient:
    """A WebSocket client on a plain socket, for what trio-websocket cannot do: a tiny
    receive buffer (a host that reads slowly), and writes that never yield to the
    server (``send_now``: a host that goes on sending while the server is stalled)."""

    def __init__(self, sock: socket.socket, ws: wsproto.WSConnection) -> None:
        self.sock = sock
        self.trio_sock = trio.socket.from_stdlib_socket(sock)
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._pending: deque[dict[str, Any]] = deque()
        self._text = ""

    @classmethod
    async def connect(cls, port: int, path: str, *, rcvbuf: int | None = None) -> RawClient:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client = cls(sock, wsproto.WSConnection(wsproto.ConnectionType.CLIENT))
        await client.trio_sock.connect(("127.0.0.1", port))
        await client._send_bytes(client.ws.send(ws_events.Request(host="127.0.0.1", target=path)))
        while True:
            client.ws.receive_data(await client.trio_sock.recv(65536))
            for event in client.ws.events():
                assert isinstance(event, ws_events.AcceptConnection), event
                return client

    def send_now(self, data: bytes) -> bool:
        """Write a binary message at once, without a checkpoint: nothing else in the
        process (the server included) runs meanwhile. False when the server has hung
        up (what it said is read next)."""
        frame = self.ws.send(ws_events.BytesMessage(data=data))
        try:
            sent = self.sock.send(frame)
        except OSError:
            return False
        assert sent == len(frame), "the kernel should take it whole"
        return True

    async def send(self, message: dict[str, Any]) -> None:
        """Send a JSON message; dropped once the server has closed (see ``receive``)."""
        if self.close_code is not None:
            return
        await self._send_bytes(self.ws.send(ws_events.TextMessage(data=json.dumps(message))))

    async def receive(self) -> dict[str, Any] | None:
        """The next message, validated; None once the server has closed (its code in
        ``close_code``)."""
        while True:
            for event in self.ws.events():
                if isinstance(event, ws_events.TextMessage):
                    self._text += event.data
                    if event.message_finished:
                        self._pending.append(json.loads(self._text))
                        self._text = ""
                elif isinstance(event, ws_events.CloseConnection) and self.close_code is None:
                    self.close_code = event.code
                    if self.ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                        await self._send_bytes(self.ws.send(event.response()))
            if self._pending:
                break
            if self.close_code is not None:
                return None
            try:
                data = await self.trio_sock.recv(65536)
            except OSError:  # reset: the server is gone
                data = b""
            self.ws.receive_data(data or None)
        message = self._pending.popleft()
        validate_server_message(message)
        self.received.append(message)
        return message

    async def until(self, done: Any) -> dict[str, Any]:
        """Messages up to the first for which ``done`` holds; fails on a close."""
        while True:
            message = await self.receive()
            assert message is not None, f"closed with {self.close_code}: {self.received[-3:]}"
            if done(message):
                return message

    async def aclose(self) -> None:
        """Close with 1000 (a host ending its session) and wait for the server's close."""
        if self.close_code is None:
            await self._send_bytes(self.ws.send(ws_events.CloseConnection(code=1000)))
            while await self.receive() is not None:
                pass
        self.trio_sock.close()

    async def _send_bytes(self, data: bytes) -> None:
        """Send it all; dropped if the server has hung up (what it said is read next)."""
        view = memoryview(data)
        try:
            while view:
                view = view[await self.trio_sock.send(view) :]
        except OSError:
            pass


def stats_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["stats"] for m in messages if m["type"] == "session_stats"]


# --- finding 2: control floods and the host's stats ---------------------------------------


def slow_host_config(**changes: Any) -> Config:
    return attrs.evolve(
        config(), listener_backlog_bytes=BACKLOG, socket_send_buffer=SLOW_BUFFER, **changes
    )


SENTINEL = {"type": "ping", "timestamp": -42}


async def flood(client: ProtocolClient, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send every message, then a sentinel ping (until the server closes), reading the
    replies meanwhile: the replies, up to the sentinel's pong or the server's close."""
    replies: list[dict[str, Any]] = []

    async def read() -> None:
        try:
            while (message := await client.receive()) != {**SENTINEL, "type": "pong"}:
                validate_server_message(message)
                if message["type"] not in ("session_stats", "translation"):
                    replies.append(message)
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        try:
            for message in [*messages, SENTINEL]:
                await client.send(message)
        except trio_websocket.ConnectionClosed:
            pass
    return replies


async def test_a_listener_changing_language_in_a_flood_cannot_get_the_host_closed(
    clock: MockClock,
) -> None:
    """Stats are paced without the rate limit's help: it is off here, so all 1500
    changes are served, and the host, reading nothing meanwhile, still owes little.
    Failed before: every change sent the host a session_stats; it was closed (1013)."""
    settings = slow_host_config(control_rate=0.0)
    languages = ["fr", "ca", "es"]
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            host = await RawClient.connect(server.port, session["wsUrl"], rcvbuf=SLOW_BUFFER)
            await host.until(lambda m: m["type"] == "session_stats")
            async with connect(server, listener_path(session["sessionId"], "es")) as listener:
                assert (await reply(listener))["type"] == "session_joined"
                started = trio.current_time()
                changes = [
                    {"type": "change_language", "targetLang": languages[n % 3]}
                    for n in range(FLOOD)
                ]
                replies = await flood(listener, changes)
                assert [r["targetLang"] for r in replies] == [c["targetLang"] for c in changes]
                await by.speak()
                # The latest figures reach the host once the interval is over.
                clock.jump(settings.stats_interval_s)
                latest = {"listenerCount": 1, "languages": ["es"], "languageCounts": {"es": 1}}
                await host.until(lambda m: m.get("stats") == latest)
                elapsed = trio.current_time() - started
                await host.send({"type": "ping", "timestamp": 5})
                await host.until(lambda m: m["type"] == "pong")
            assert not [m for m in host.received if m["type"] == "error"], host.received[-3:]
            # One on connecting, then at most one an interval (plus one for the moments
            # between connecting and ``started``).
            paced = stats_of(host.received)
            assert len(paced) <= 2 + elapsed / settings.stats_interval_s, (len(paced), elapsed)
            await host.aclose()
            assert host.close_code == 1000


@pytest.mark.parametrize(
    ("role", "message"),
    [
        ("listener", {"type": "change_language", "targetLang": "fr"}),
        ("listener", {"type": "ping", "timestamp": 1}),
        ("host", {"type": "audio_end"}),
        ("host", {"type": "init", "sourceLang": "en"}),
        ("solo", {"type": "ping"}),
        ("listener", {"type": "no such thing"}),
    ],
    ids=[
        "listener-change_language",
        "listener-ping",
        "host-audio_end",
        "host-init",
        "solo-ping",
        "listener-garbage",
    ],
)
async def test_control_messages_past_the_rate_are_refused_then_closed(
    clock: MockClock, role: str, message: dict[str, Any]
) -> None:
    """Past ``control_burst`` at once, each message is answered with ``error`` 429
    (ignored, the connection goes on); ``control_burst`` refused in a row close the
    connection (1008, ``status`` 429). The session's host, reading slowly, is never
    closed. Failed before: no limit at all (every message served)."""
    settings = slow_host_config()
    burst = settings.control_burst
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            path = {
                "listener": listener_path(session["sessionId"], "es"),
                "host": session["wsUrl"],
                "solo": "/translate",
            }[role]
            host = None
            if role == "listener":  # the session's host reads slowly
                host = await RawClient.connect(server.port, session["wsUrl"], rcvbuf=SLOW_BUFFER)
                await host.until(lambda m: m["type"] == "session_stats")
            async with connect(server, path) as flooder:
                await reply(flooder)  # session_joined or session_ready
                replies = await flood(flooder, [message] * FLOOD)
            await by.speak()
            assert replies, "nothing was refused"
            closing = replies[-1]
            assert closing["type"] == "error" and closing["closing"] is True, replies[-3:]
            assert closing["code"] == 1008 and closing["status"] == 429
            refused = [r for r in replies if r["type"] == "error" and r["code"] == 429]
            assert all(r["closing"] is False and r["retryAfter"] >= 1 for r in refused)
            # The last ones before the close were refused in a row.
            assert replies[-burst:-1] == refused[-(burst - 1) :]
            if message["type"] != "audio_end":  # each is answered when served
                assert not [r for r in replies[:burst] if r.get("code") == 429]
            assert len(replies) < FLOOD / 10, "the rest was not served"
            assert (await refusals(server))["control_rate"] == len(refused) + 1
            if host is not None:
                clock.jump(settings.stats_interval_s)
                latest = {"listenerCount": 0, "languages": [], "languageCounts": {}}
                await host.until(lambda m: m.get("stats") == latest)
                assert not [m for m in host.received if m["type"] == "error"]
                await host.aclose()
                assert host.close_code == 1000


# --- finding 3: the audio meter on the host's timeline ------------------------------------

BURST_S = 2.0
CHUNK_S = 0.5
RATE = 8000  # the lowest sampleRate: the fewest bytes per second of audio


async def rate_limited_host(server: Any) -> tuple[RawClient, dict[str, Any]]:
    session = await start_session(server)
    host = await RawClient.connect(server.port, session["wsUrl"])
    await host.until(lambda m: m["type"] == "session_ready")
    await host.send({"type": "init", "sampleRate": RATE})
    await host.until(lambda m: m["type"] == "session_ready")
    return host, session


async def answer_to_ping(host: RawClient) -> list[dict[str, Any]]:
    """Send a ping; every message up to its pong, or up to the close."""
    await host.send({"type": "ping", "timestamp": 9})
    got = []
    while (message := await host.receive()) is not None:
        if message["type"] not in ("translation", "session_stats"):
            got.append(message)
        if message == {"type": "pong", "timestamp": 9}:
            break
    return got


def stream_during_a_stall(host: RawClient, clock: MockClock, chunks: int, pace: float) -> None:
    """``chunks`` of audio, the clock moved on by ``pace`` times each chunk's length
    after each, all without a checkpoint: the server, stalled, reads them later at
    once. ``pace`` 1 is a host sending in exact real time."""
    for _ in range(chunks):
        assert host.send_now(silence(CHUNK_S, RATE))
        clock.jump(CHUNK_S * pace)


async def test_a_host_streaming_in_real_time_through_a_server_stall_is_not_refused(
    clock: MockClock,
) -> None:
    """Six seconds of a 2 s burst, sent in real time while the server was stalled,
    read at once. Failed before: the meter counted audio when read, so the stall landed
    as one 6 s burst and the host was closed 1008 "audio faster than real time"."""
    settings = attrs.evolve(config(), audio_burst_s=BURST_S)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            host, _ = await rate_limited_host(server)
            stream_during_a_stall(host, clock, chunks=round(3 * BURST_S / CHUNK_S), pace=1.0)
            got = await answer_to_ping(host)
            assert got == [{"type": "pong", "timestamp": 9}], got
            # And it goes on in real time, as the server reads it.
            for _ in range(4):
                assert host.send_now(silence(CHUNK_S, RATE))
                clock.jump(CHUNK_S)
                await trio.testing.wait_all_tasks_blocked()
            assert await answer_to_ping(host) == [{"type": "pong", "timestamp": 9}]
            await by.speak()
            await host.aclose()
            assert "audio_rate" not in await refusals(server)


@pytest.mark.parametrize("read_late", [True, False], ids=["read-late", "read-live"])
async def test_a_host_faster_than_real_time_is_refused_however_it_is_read(
    clock: MockClock, read_late: bool
) -> None:
    """Three times real time, past the burst: refused whether the server reads it as
    it comes or all at once after a stall."""
    settings = attrs.evolve(config(), audio_burst_s=BURST_S)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            host, session = await rate_limited_host(server)
            chunks = round(4 * BURST_S / CHUNK_S)
            if read_late:
                stream_during_a_stall(host, clock, chunks=chunks, pace=1 / 3)
            else:
                for _ in range(chunks):
                    if not host.send_now(silence(CHUNK_S, RATE)):
                        break
                    clock.jump(CHUNK_S / 3)
                    await trio.testing.wait_all_tasks_blocked()
            got = await answer_to_ping(host)
            assert got[-1]["type"] == "error" and got[-1]["closing"] is True, got
            assert got[-1]["code"] == 1008 and got[-1]["status"] == 429
            assert "real time" in got[-1]["message"]
            assert host.close_code == 1008
            host.trio_sock.close()
            assert server.registry.get(session["sessionId"]) is not None, "its session goes on"
            await by.speak()
            assert (await refusals(server))["audio_rate"] == 1


def test_the_audio_meter_runs_on_the_hosts_timeline() -> None:
    meter = AudioMeter(rate=1.25, burst=10.0)
    stalled = trio.Event()
    # 12 s sent in real time from 0 s, all read at 12 s: within the timeline.
    assert all(meter.take("a", stalled, 0.5, now=12.0, began=0.0) is None for _ in range(24))
    # 24 s sent from 0 s and read at 4 s: six times real time, refused past the 15 s
    # its timeline allows.
    fast = trio.Event()
    takes = [meter.take("b", fast, 0.5, now=4.0, began=0.0) for _ in range(48)]
    assert takes.count(None) == 30 and takes[-1] is not None
    wait = takes[-1]
    assert meter.take("b", fast, 0.5, now=4.0 + wait + 0.01, began=0.0) is None
    # An owner whose sessions all ended keeps at most a burst, whatever they earned.
    stalled.set()
    again = trio.Event()
    assert meter.take("a", again, 10.0, now=1000.0) is None
    assert meter.take("a", again, 0.5, now=1000.0) == 0.0


def test_a_connection_may_send_a_burst_of_messages_then_the_rate() -> None:
    meter = MessageMeter(rate=5.0, burst=4, now=0.0)
    assert [meter.take(0.0) for _ in range(4)] == [MessageMeter.ADMIT] * 4
    assert meter.take(0.0) == MessageMeter.REFUSE and meter.retry_after(0.0) == 0.0
    assert meter.take(0.1) == MessageMeter.ADMIT, "a fifth of a second brings one back"
    assert [meter.take(0.1) for _ in range(4)] == [MessageMeter.REFUSE] * 3 + [
        MessageMeter.CLOSE
    ], "a burst refused in a row ends it"


# --- finding 6: resumedFrom ---------------------------------------------------------------


async def speak(host: ProtocolClient, sentences: int) -> None:
    """Audio for ``sentences`` of the script, in messages under the size limit."""
    for _ in range(2 * sentences):
        await host.send_audio(silence(SECONDS / 2))


async def test_resumed_from_says_which_finals_aged_out_of_history() -> None:
    """A listener that resumes after finals it missed have left the history is told
    so: ``resumedFrom`` is past its ``lastSeq`` and every final after ``resumedFrom``
    follows. Failed before: ``resumedFrom`` was always ``lastSeq``."""
    settings = attrs.evolve(config(), history_size=3)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            sid = session["sessionId"]
            async with connect(server, session["wsUrl"]) as host:
                assert (await reply(host))["type"] == "session_ready"
                await host.send_audio(silence(0.05))
                async with connect(server, listener_path(sid, "es")) as first:
                    assert (await reply(first))["type"] == "session_joined"
                    await speak(host, 2)
                    before = await first.finals(2)
                await speak(host, 4)
                spoken = await host.finals(6)
                seqs = [m["seqId"] for m in spoken]
                last_seq = before[-1]["seqId"]
                assert last_seq == seqs[1]
                # Finals 4, 5 and 6 are kept; final 3 has aged out.
                path = listener_path(sid, "es", lastSeq=last_seq)
                async with connect(server, path) as back:
                    joined = await back.receive()
                    assert joined["type"] == "session_joined", joined
                    assert joined["resumedFrom"] == seqs[3] - 1 > last_seq
                    replayed = await back.finals(3)
                    await speak(host, 1)
                    live = await back.finals(1)
                assert [m["seqId"] for m in replayed] == seqs[3:6]
                assert live[0]["seqId"] > seqs[5]
                assert all(m["seqId"] > joined["resumedFrom"] for m in replayed)
                # From a final still kept, nothing was lost: resumedFrom is lastSeq.
                path = listener_path(sid, "es", lastSeq=seqs[3])
                async with connect(server, path) as kept:
                    joined = await kept.receive()
                    assert joined["resumedFrom"] == seqs[3]
                    assert [m["seqId"] for m in await kept.finals(2)] == seqs[4:6]
            await by.speak()


def final(seq_id: int) -> Segment:
    return Segment(
        seq_id=seq_id,
        text=f"s{seq_id}",
        is_partial=False,
        source_lang="en",
        recognized_at=0.0,
        wall_ms=0,
    )


def test_history_knows_where_a_resume_really_starts() -> None:
    history = History(2)
    for seq in (2, 5, 9):  # seqIds count partials too: gaps are not losses
        history.admit(final(seq))
    assert history.first_seq() == 5 and history.dropped == 2
    assert history.resumed_from(1) == 4, "final 2 aged out: the replay starts after 4"
    assert history.resumed_from(-1) == 4
    assert history.resumed_from(2) == 2, "nothing after 2 was let go"
    assert history.resumed_from(3) == 3
    assert history.resumed_from(9) == 9
    history.admit(final(4))  # older than everything kept, in a full history: let go
    assert len(history) == 2 and history.resumed_from(3) == 4
    assert History(2).resumed_from(7) == 7
    nothing_kept = History(0)
    nothing_kept.admit(final(3))
    assert nothing_kept.resumed_from(1) == 3


class Recording:
    """A listener ``Member`` that keeps what it is sent, and the greeting before."""

    role = Role.LISTENER

    def __init__(self, target_lang: str) -> None:
        self.target_lang = target_lang
        self.events: list[tuple[str, int | None]] = []

    def send_caption(self, caption: Any, frame: bytes) -> None:
        self.events.append(("final", caption.segment.seq_id))

    def send_notice(self, message: dict[str, Any], frame: bytes) -> None:
        self.events.append((message["type"], None))

    def close(self, code: int, reason: str) -> None:
        self.events.append(("closed", code))

    def unsent_bytes(self) -> int:
        return 0

    def count_into(self, counters: Any) -> None:
        pass


class HeldTranslator(EchoTranslator):
    """Echo, except that translations into ``held`` wait for ``release``."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.release = trio.Event()
        self.waiting = 0

    async def translate(self, text: str, *, source: str, target: str, **kwargs: Any) -> str:
        if target == self.held:
            self.waiting += 1
            await self.release.wait()
        return await super().translate(text, source=source, target=target, **kwargs)


async def test_a_resume_point_is_read_with_the_replay_however_long_the_catch_up() -> None:
    """Finals that age out while a resume's catch-up is being translated move its
    resume point, and the greeting carries the point the replay really starts after:
    no final after it is missing, none comes before the greeting."""
    engine = HeldTranslator("fr")
    renderer = Renderer(engine, History(3), timeout_s=10.0, context_segments=0)
    room = Room(Config(history_size=3), renderer, metrics=Metrics())
    for seq in (1, 2, 3):
        renderer.admit(final(seq))
    member = Recording("fr")
    greeted: list[int | None] = []

    def greet(resumed_from: int | None) -> None:
        greeted.append(resumed_from)
        member.events.append(("session_joined", resumed_from))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:

            async def join() -> None:
                assert await room.add_member(member, last_seq=0, greet=greet) == 3

            nursery.start_soon(join)
            await trio.testing.wait_all_tasks_blocked()
            assert engine.waiting and not member.events
            for seq in (4, 5, 6):  # finals 1-3 age out meanwhile
                renderer.admit(final(seq))
            engine.release.set()
    assert greeted == [3]
    assert member.events == [("session_joined", 3), ("final", 4), ("final", 5), ("final", 6)]


# --- finding 7: a host still sending as its session ends ------------------------------------


async def stream_until_closed(host: RawClient, heard: trio.Event) -> None:
    """Send audio (each chunk once the server has read the last) until the server has
    closed, reading what it says meanwhile; ``heard`` is set at the first caption."""

    async def keep_sending() -> None:
        while host.close_code is None and host.send_now(silence(0.1, RATE)):
            await trio.testing.wait_all_tasks_blocked()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_sending)
        while (message := await host.receive()) is not None:
            if message["type"] == "translation":
                heard.set()


@pytest.mark.parametrize("end", ["expiry", "shutdown"])
async def test_a_host_still_sending_as_its_session_ends_ends_quietly(
    clock: MockClock, caplog: pytest.LogCaptureFixture, end: str
) -> None:
    """The host gets ``session_ended`` and a clean close, and nothing is logged as a
    failure. Reported as an ERROR with a traceback (``WebSocket ... failed``): the host's
    reader fed audio into a pipeline that had stopped. That no longer reproduces (late
    input is dropped by the pipeline since its redesign); the reader now also stops
    feeding a session that is ending, which a cluster session waiting for a pipeline
    would otherwise block on. A shutdown ends every session: the bystander there is the
    host's own (its captions go on until the end)."""
    caplog.set_level(logging.INFO, logger="babel_actors")
    # Not metered: the host sends as fast as the server reads, past real time.
    settings = attrs.evolve(config(), max_session_s=3600.0, audio_rate_slack=0.0)
    with trio.fail_after(TIMEOUT_S + settings.max_session_s):
        async with running_server(settings, stt=scripted()) as server:
            host, session = await rate_limited_host(server)
            heard = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream_until_closed, host, heard)
                await heard.wait()
                if end == "expiry":
                    # The bystander joins later, so that it outlives the expiry.
                    clock.jump(settings.max_session_s / 2)
                    async with bystander(server) as by:
                        clock.jump(settings.max_session_s / 2)
                        await by.speak()
                else:
                    server.shutdown()
            reasons = [m["reason"] for m in host.received if m["type"] == "session_ended"]
            assert reasons == ["expired" if end == "expiry" else "shutdown"]
            assert host.close_code == (1000 if end == "expiry" else 1001)
            await trio.testing.wait_all_tasks_blocked()
            assert server.registry.get(session["sessionId"]) is None
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [(r.levelname, r.getMessage()) for r in loud]
