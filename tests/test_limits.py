"""Limits over real sockets, each beside a bystander session that must lose nothing:
audio rate per host, listeners per session, sessions per key, connections per client,
HTTP idle time (slowloris), session lifetime, message size. Then the counting
structures on their own, with time passed in.

Time that must pass is moved on with trio's ``MockClock``, running at real speed
otherwise: no sleeps, and no timing in the asserts.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio_websocket
from bystander import (
    MAX_MESSAGE,
    SECONDS,
    SENTENCES,
    bystander,
    closed_with,
    config,
    reply,
    scripted,
)
from helpers import (
    GatedStore,
    all_at_once,
    connect_with,
    get,
    listener_path,
    post,
    refusals,
    running_server_on,
    start_session,
)
from protocol_schemas import validate_http
from trio.testing import MockClock

from babel_actors.server.app import Server
from babel_actors.server.limits import (
    AudioMeter,
    ClientCounts,
    FailureWindow,
    LiveCounts,
    TokenBucket,
)
from babel_actors.testing import ProtocolClient, connect, running_server, silence

TIMEOUT_S = 20
BURST_S = 3.0
CHUNK_S = 0.5
CROWD = {"X-Real-IP": "203.0.113.7"}
OTHER = {"X-Real-IP": "198.51.100.9"}


@pytest.fixture
def clock() -> MockClock:
    """Real time that a test can also move on at once (``clock.jump``)."""
    return MockClock(rate=1.0)


async def end_by_host(server: Server, session: dict[str, Any]) -> None:
    """End ``session`` as its host does (close with 1000), and wait until it is gone
    (drained and ended, not only ending)."""
    async with connect(server, session["wsUrl"]) as host:
        await reply(host)
    while session["sessionId"] in server.registry.by_id:
        await trio.testing.wait_all_tasks_blocked()


async def settled() -> None:
    """Every task, the server's too, has done what it can (closed sockets let go)."""
    await trio.testing.wait_all_tasks_blocked()


# --- audio rate -------------------------------------------------------------------------


async def stream_in_real_time(host: ProtocolClient, clock: MockClock, seconds: float) -> None:
    """``seconds`` of audio in chunks, the clock moved on by each chunk's length."""
    for _ in range(round(seconds / CHUNK_S)):
        await host.send_audio(silence(CHUNK_S))
        clock.jump(CHUNK_S)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "base64"])
async def test_a_host_flooding_audio_is_closed_while_a_real_time_host_goes_on(
    clock: MockClock, binary: bool
) -> None:
    settings = attrs.evolve(config(), audio_burst_s=BURST_S)
    spoken_s = len(SENTENCES) * SECONDS  # four bursts' worth
    with trio.fail_after(TIMEOUT_S + 2 * spoken_s):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            flooded = await start_session(server)
            async with connect(server, flooded["wsUrl"]) as flooder:
                assert (await reply(flooder))["type"] == "session_ready"
                try:
                    for _ in range(round(spoken_s / CHUNK_S)):
                        await flooder.send_audio(silence(CHUNK_S), binary=binary)
                except trio_websocket.ConnectionClosed:
                    pass
                error = await closed_with(flooder, 1008)
            assert error["status"] == 429 and error["retryAfter"] >= 1
            assert "real time" in error["message"]

            # Its session goes on; its host may come back and stream in real time.
            assert server.registry.get(flooded["sessionId"]) is not None
            async with connect(server, flooded["wsUrl"]) as again:
                assert (await reply(again))["type"] == "session_ready"
                clock.jump(error["retryAfter"])
                await stream_in_real_time(again, clock, 2 * BURST_S)
                await again.send({"type": "ping", "timestamp": 1})
                assert await reply(again) == {"type": "pong", "timestamp": 1}

            # A host streaming in real time, far past the burst, is never refused.
            steady = await start_session(server)
            async with (
                connect(server, listener_path(steady["sessionId"], "es")) as listener,
                connect(server, steady["wsUrl"]) as host,
            ):
                assert (await reply(listener))["type"] == "session_joined"
                assert (await reply(host))["type"] == "session_ready"
                await host.send_audio(silence(0.05))
                await stream_in_real_time(host, clock, spoken_s)
                finals = await listener.finals(len(SENTENCES))
                await host.send({"type": "ping", "timestamp": 2})
                assert await reply(host) == {"type": "pong", "timestamp": 2}
            assert [m["originalText"] for m in finals] == SENTENCES
            assert not [m for m in host.received + listener.received if m["type"] == "error"]
            await by.speak()
            assert (await refusals(server))["audio_rate"] == 1


async def start_solo(solo: ProtocolClient, sample_rate: int) -> None:
    assert (await reply(solo))["type"] == "session_ready"
    await solo.send({"type": "init", "sampleRate": sample_rate})
    assert (await reply(solo))["type"] == "session_ready"


async def send_then_ping(client: ProtocolClient, pcm: bytes) -> None:
    """Send ``pcm``, then a ping: an admitted message is answered by the pong, a
    refused one by the closing ``error`` before it."""
    await client.send_audio(pcm)
    with contextlib.suppress(trio_websocket.ConnectionClosed):
        await client.send({"type": "ping", "timestamp": 7})


async def test_a_solo_client_gets_no_fresh_burst_by_reconnecting() -> None:
    # At this slack, time gives back next to nothing while the test runs: what the
    # client gets back, it gets from reconnecting.
    settings = attrs.evolve(
        config(), trust_proxy=True, audio_burst_s=BURST_S, audio_rate_slack=0.01
    )
    rate = 8000  # the lowest sampleRate: the most seconds of audio per byte
    piece = silence(2.5, rate)  # two of them: the 3 s burst, then 2 s of debt
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            async with connect_with(server, "/translate", CROWD) as solo:
                await start_solo(solo, rate)
                await solo.send_audio(piece)
                await send_then_ping(solo, piece)
                assert await reply(solo) == {"type": "pong", "timestamp": 7}
            # A new connection is a new solo session, of the same owner: same budget.
            async with connect_with(server, "/translate", CROWD) as again:
                await start_solo(again, rate)
                await send_then_ping(again, piece)
                error = await closed_with(again, 1008)
            assert error["status"] == 429 and error["retryAfter"] >= 1

            # One message longer than the burst is refused, however full the bucket.
            async with connect_with(server, "/translate", OTHER) as other:
                await start_solo(other, rate)
                await send_then_ping(other, silence(BURST_S + CHUNK_S, rate))
                error = await closed_with(other, 1008)
            assert error["status"] == 429 and "retryAfter" not in error
            assert "at once" in error["message"]
            await by.speak()
            assert (await refusals(server))["audio_rate"] == 2


def test_an_owners_sessions_share_an_audio_bucket_that_outlives_them() -> None:
    meter = AudioMeter(rate=1.0, burst=10.0)
    first, second = trio.Event(), trio.Event()
    # Two sessions of one owner, each in real time, go on for ever.
    for n in range(1, 100):
        assert meter.take("key", first, 1.0, now=float(n)) is None
        assert meter.take("key", second, 1.0, now=float(n)) is None
    # One session is held to its own timeline (the burst plus the rate for each second
    # since its stream began: 209 s by now, 99 s sent), whatever its owner has left.
    assert meter.take("key", first, 110.0, now=200.0) is None
    assert meter.take("key", first, 1.0, now=200.0) == 0.0
    assert meter.take("key", second, 1.0, now=200.0) is None

    solo, again = trio.Event(), trio.Event()
    assert meter.take("solo", solo, 6.0, now=0.0) is None
    assert meter.take("solo", solo, 6.0, now=0.0) is None  # 2 s in debt
    solo.set()  # the session ends; the owner starts another
    assert meter.take("solo", again, 1.0, now=1.0) == 1.0, "the owner's debt is still there"
    assert meter.take("solo", again, 1.0, now=2.5) is None

    # Owners with no live session are forgotten once their bucket is full again.
    meter = AudioMeter(rate=1.0, burst=10.0)
    ended = trio.Event()
    ended.set()
    live = trio.Event()
    meter.take("live", live, 5.0, now=0.0)
    meter.take("in debt", ended, 12.0, now=90.0)
    for n in range(62):
        meter.take(f"gone {n}", ended, 1.0, now=0.0)
    assert len(meter) == 64
    meter.take("new", trio.Event(), 1.0, now=95.0)  # one more owner: the table is swept
    assert len(meter) == 3, "kept: live, new, and in debt"


def test_a_token_bucket_meters_audio_seconds_against_real_time() -> None:
    bucket = TokenBucket(rate=1.25, burst=10.0, now=0.0)
    # Real time, or anything up to the slack, goes on for ever.
    assert all(bucket.take(1.25, now=float(n)) for n in range(1, 1000))
    # A burst ahead of real time is fine once; then the host waits it off.
    fresh = TokenBucket(rate=1.0, burst=10.0, now=0.0)
    assert all(fresh.take(1.0, now=0.0) for _ in range(10))
    assert not fresh.take(0.1, now=0.0)
    assert not fresh.take(0.1, now=0.0), "a refusal takes nothing and gives nothing"
    assert fresh.take(0.5, now=0.5)
    # One message longer than the burst is not cut; the next waits off its debt.
    long = TokenBucket(rate=1.0, burst=10.0, now=0.0)
    assert long.take(15.0, now=0.0)
    assert not long.take(0.1, now=4.9)
    assert long.take(0.1, now=5.1)


# --- listeners per session --------------------------------------------------------------


async def test_a_full_session_refuses_more_listeners() -> None:
    settings = attrs.evolve(config(), max_listeners_per_session=2)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            path = listener_path(session["sessionId"], "es")
            async with connect(server, path) as first, connect(server, path) as second:
                assert (await reply(first))["type"] == "session_joined"
                assert (await reply(second))["type"] == "session_joined"
                status, body = await post(
                    server, "/session/join", {"sessionCode": session["sessionCode"]}
                )
                assert status == 429 and "full" in body["error"], body
                async with connect(server, path) as third:
                    error = await closed_with(third, 1013)
                    assert error["status"] == 429
                await by.speak()
            await settled()
            status, joined = await post(
                server, "/session/join", {"sessionCode": session["sessionCode"]}
            )
            assert status == 200, "the places were given back"
            async with connect(server, joined["wsUrl"]) as listener:
                assert (await reply(listener))["type"] == "session_joined"
            assert (await refusals(server))["listeners"] == 2


# --- sessions per key -----------------------------------------------------------------------


async def test_each_api_key_holds_a_limited_number_of_live_sessions() -> None:
    settings = attrs.evolve(config(), api_keys="alpha-key-1,beta-key-2", max_sessions_per_key=2)
    alpha, beta = {"X-API-Key": "alpha-key-1"}, {"Authorization": "Bearer beta-key-2"}
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server:
            held = [await start_session(server, alpha) for _ in range(2)]
            status, body = await post(server, "/session/start", headers=alpha)
            assert status == 429 and "end one" in body["error"], body
            async with connect(server, "/translate?apiKey=alpha-key-1") as solo:
                assert (await closed_with(solo, 1013))["status"] == 429
            await start_session(server, beta)
            async with connect_with(server, "/translate", beta) as solo:
                assert (await reply(solo))["type"] == "session_ready"

            await end_by_host(server, held[0])
            await start_session(server, alpha)
            assert (await refusals(server))["sessions_per_key"] == 2


async def test_without_keys_each_client_address_holds_a_limited_number_of_sessions() -> None:
    settings = attrs.evolve(config(), trust_proxy=True, max_sessions_per_key=2)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            for _ in range(2):
                await start_session(server, CROWD)
            status, _ = await post(server, "/session/start", headers=CROWD)
            assert status == 429
            async with connect_with(server, "/translate", CROWD) as solo:
                assert (await closed_with(solo, 1013))["status"] == 429
            await start_session(server, OTHER)
            await by.speak()


async def test_parallel_starts_get_no_more_sessions_than_the_key_may_hold() -> None:
    settings = attrs.evolve(config(), api_keys="alpha-key-1", max_sessions_per_key=2)
    alpha = {"X-API-Key": "alpha-key-1"}
    store = GatedStore()

    async def start() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.url) as http:
            return await http.post("/session/start", headers=alpha)

    with trio.fail_after(TIMEOUT_S):
        async with running_server_on(store, settings, scripted()) as server:
            # A start that fails gives its place back.
            store.unavailable = True
            for _ in range(3):
                status, _ = await post(server, "/session/start", headers=alpha)
                assert status == 503
            store.unavailable = False
            # Every start is in flight before the store creates a session.
            responses = await all_at_once(store, [start] * 8)
            for response in responses:
                validate_http("/session/start", "post", response.status_code, response.json())
            assert sorted(r.status_code for r in responses) == [200] * 2 + [429] * 6
            assert (await refusals(server))["sessions_per_key"] == 6


# --- connections per client ---------------------------------------------------------------


async def test_a_client_past_its_open_connections_is_refused_before_the_upgrade() -> None:
    settings = attrs.evolve(config(), trust_proxy=True, max_connections_per_ip=3)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            path = listener_path(session["sessionId"], "es")
            async with (
                connect_with(server, path, CROWD) as a,
                connect_with(server, path, CROWD) as b,
                connect_with(server, path, CROWD) as c,
            ):
                for listener in (a, b, c):
                    assert (await reply(listener))["type"] == "session_joined"
                with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                    async with connect_with(server, path, CROWD):
                        pass
                assert rejected.value.status_code == 429
                assert rejected.value.body is not None
                validate_http("/translate", "get", 429, json.loads(rejected.value.body))

                async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
                    await stream.send_all(
                        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Real-IP: 203.0.113.7\r\n\r\n"
                    )
                    response = await read_to_end(stream)
                head, body = response.split(b"\r\n\r\n", 1)
                assert head.startswith(b"HTTP/1.1 429 ") and b"connection: close" in head
                validate_http("/health", "get", 429, json.loads(body))

                async with connect_with(server, path, OTHER) as other:
                    assert (await reply(other))["type"] == "session_joined"
                await by.speak()
            await settled()
            async with connect_with(server, path, CROWD) as back:
                assert (await reply(back))["type"] == "session_joined"
            assert (await refusals(server))["connections_per_ip"] == 2


async def test_connections_that_send_nothing_count_from_their_accept() -> None:
    settings = attrs.evolve(config(), max_connections_per_ip=3)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server:
            idle = []
            for _ in range(3):
                idle.append(await trio.open_tcp_stream("127.0.0.1", server.port))
                await settled()  # accepted and counted
            async with await trio.open_tcp_stream("127.0.0.1", server.port) as extra:
                head, body = (await read_to_end(extra)).split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 429 ") and b"connection: close" in head
            assert "open connections" in json.loads(body)["error"]
            for stream in idle:
                await stream.aclose()
            await settled()
            status, _ = await get(server, "/health")
            assert status == 200, "the places were given back"
            assert (await refusals(server))["connections_per_ip"] == 1


# --- HTTP idle time -------------------------------------------------------------------------


async def read_to_end(stream: trio.SocketStream) -> bytes:
    received = b""
    while data := await stream.receive_some():
        received += data
    return received


async def test_idle_connections_are_closed_and_slow_requests_get_408(clock: MockClock) -> None:
    settings = attrs.evolve(config(), http_idle_s=30.0)
    with trio.fail_after(TIMEOUT_S + settings.http_idle_s):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            idle = await trio.open_tcp_stream("127.0.0.1", server.port)
            kept = await trio.open_tcp_stream("127.0.0.1", server.port)
            await kept.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            slow = await trio.open_tcp_stream("127.0.0.1", server.port)
            await slow.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            await by.caught_up()
            await settled()

            clock.jump(settings.http_idle_s)
            async with idle, kept, slow:
                assert await read_to_end(idle) == b""
                answered = await read_to_end(kept)
                assert answered.startswith(b"HTTP/1.1 200 ")
                assert answered.count(b"HTTP/1.1 ") == 1, "idle after its answer: closed too"
                head, body = (await read_to_end(slow)).split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head
            validate_http("/health", "get", 408, json.loads(body))
            await by.speak()  # WebSockets are not HTTP requests: the bystander goes on
            assert (await refusals(server))["http_idle"] == 1


# --- session lifetime -------------------------------------------------------------------------


async def test_a_session_ends_when_its_lifetime_is_over(clock: MockClock) -> None:
    settings = attrs.evolve(config(), max_session_s=3600.0)
    with trio.fail_after(TIMEOUT_S + settings.max_session_s):
        async with running_server(settings, stt=scripted()) as server:
            session = await start_session(server)
            async with (
                connect(server, listener_path(session["sessionId"], "es")) as listener,
                connect(server, session["wsUrl"]) as host,
            ):
                assert (await reply(listener))["type"] == "session_joined"
                assert (await reply(host))["type"] == "session_ready"
                await host.send_audio(silence(1.05))  # a busy session: it expires anyway
                await listener.finals(1)
                await settled()
                clock.jump(settings.max_session_s)
                for member in (listener, host):
                    ended = await reply(member)
                    assert ended["type"] == "session_ended" and ended["reason"] == "expired"
            assert server.registry.get(session["sessionId"]) is None
            status, _ = await post(server, "/session/join", {"sessionCode": session["sessionCode"]})
            assert status == 404


# --- message and body size (kept, and counted) --------------------------------------------------


async def test_too_big_messages_and_bodies_are_refused_and_counted() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            async with connect(server, session["wsUrl"]) as host:
                await reply(host)
                await host.send_audio(bytes(MAX_MESSAGE + 2))
                await closed_with(host, 1009)
            big = {"sessionCode": "x" * server.config.max_http_body_bytes}
            status, _ = await post(server, "/session/join", big)
            assert status == 413
            await by.speak()
            counted = await refusals(server)
            assert counted["message_size"] == 1 and counted["body_size"] == 1


# --- the counting, on its own -------------------------------------------------------------------


def test_failed_joins_slide_out_of_their_window() -> None:
    window = FailureWindow(limit=3, window_s=10.0, max_clients=100)
    for at in (0.0, 1.0, 2.0):
        assert window.retry_after("guesser", at) is None
        window.fail("guesser", at)
    assert window.retry_after("guesser", 5.0) == 5.0
    assert window.retry_after("guesser", 10.0) is None, "the oldest failure left the window"
    window.fail("guesser", 10.0)
    assert window.retry_after("guesser", 10.5) == 0.5


def test_a_full_join_table_forgets_no_live_client_and_new_ones_share_one_window() -> None:
    window = FailureWindow(limit=2, window_s=10.0, max_clients=3)
    for client in ("a", "b", "c"):
        window.fail(client, 0.0)
    # No room: new clients are counted together, in the overflow window.
    window.fail("d", 1.0)
    assert window.retry_after("e", 2.0) is None
    window.fail("e", 2.0)
    assert window.retry_after("never seen", 2.0) == 9.0, "full: every new client waits"
    assert window.retry_after("a", 2.0) is None, "clients in the table keep their own budget"
    assert len(window) == 3
    # Clients whose failures all aged out leave from the front, in the order of
    # their latest failure: a's later one keeps it.
    window.fail("a", 5.0)
    assert window.retry_after("never seen", 10.5) is None
    assert len(window) == 1


def test_open_counts_and_live_sessions_forget_what_is_gone() -> None:
    counts = ClientCounts(limit=2)
    assert counts.acquire("a") and counts.acquire("a") and not counts.acquire("a")
    counts.release("a")
    assert counts.acquire("a")
    counts.release("a")
    counts.release("a")
    assert len(counts) == 0

    live = LiveCounts()
    events = [trio.Event() for _ in range(3)]
    for n, event in enumerate(events):
        live.add("key", event)
        live.add(f"owner {n}", event)
    assert live.count("key") == 3
    events[0].set()
    assert live.count("key") == 2
    for event in events:
        event.set()
    for n in range(200):
        live.add(f"later {n}", trio.Event())
    assert len(live) == 200, "owners whose sessions all ended were swept"
