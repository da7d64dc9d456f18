"""Scale-out: several server processes share sessions through a real redis-server.

Each node is the installed ``babel-actors serve`` (scripted STT, echo MT) in its own
process, with ``BABEL_REDIS_URL`` pointing at a redis-server this module starts on a
free port in a temporary directory. Translations are counted at the MT engine: every
node appends each request to its own call log (``BABEL_MT_CALL_LOG``).

The in-process tests at the end run the same cluster logic on ``MemoryStore``
siblings (two registries in one process), for what is awkward to stage with
processes: a host moving between nodes, catch-up in a new language on another node.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio_websocket
from helpers import checked, finals_of, listener_path, post
from protocol_schemas import validate_http

from babel_actors.config import Config
from babel_actors.engines.calllog import read_call_log
from babel_actors.server.app import Server, serve
from babel_actors.store import MemoryStore
from babel_actors.testing import (
    EchoTranslator,
    ProtocolClient,
    ScriptedSpeechToText,
    connect,
    sentence_script,
    silence,
)

ENTRY_POINT = Path(sys.executable).parent / "babel-actors"
REDIS_SERVER = "/usr/bin/redis-server"
STARTUP_S = 60.0
"""Bound on a node's start-up: imports on two busy cores."""
SESSION_S = 60.0
"""Bound on each test's conversation."""
SENTENCES = [f"cluster sentence {n} is spoken right here" for n in range(1, 13)]
SECONDS = 1.0
SCRIPT = [
    {"at": (i + 1) * SECONDS - SECONDS / 2, "text": " ".join(s.split()[:3]), "final": False}
    for i, s in enumerate(SENTENCES)
] + [{"at": (i + 1) * SECONDS, "text": s, "final": True} for i, s in enumerate(SENTENCES)]

pytestmark = pytest.mark.skipif(
    not Path(REDIS_SERVER).exists(), reason="redis-server is not installed (make test installs it)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _read_until(stream: trio.abc.ReceiveStream, marker: bytes, seen: bytearray) -> None:
    while marker not in seen:
        chunk = await stream.receive_some()
        if not chunk:
            raise AssertionError(f"output ended before {marker!r}: {seen.decode()[-2000:]}")
        seen += chunk


@attrs.define
class Redis:
    """A redis-server on a fixed free port, which a test may stop and start again."""

    directory: Path
    persistent: bool = True
    """Append-only persistence, so a restart keeps the data (as a managed Redis
    does); without it a restart loses everything and the nodes re-assert it."""
    port: int = attrs.field(factory=free_port)
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start it and return once it accepts connections (it says so on stdout)."""
        persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        self.process = await trio.lowlevel.open_process(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *(persistence if self.persistent else ["--appendonly", "no"]),
             "--dir", str(self.directory), "--protected-mode", "no"],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        await _read_until(self.process.stdout, b"Ready to accept connections", bytearray())

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


@asynccontextmanager
async def redis_server(tmp_path: Path, *, persistent: bool = True) -> AsyncIterator[Redis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    redis = Redis(directory, persistent)
    await redis.start()
    try:
        yield redis
    finally:
        with trio.CancelScope(shield=True):
            if redis.process is not None:
                redis.process.kill()
            await redis.stop()


@attrs.define
class Node:
    """One ``babel-actors serve`` process."""

    name: str
    process: trio.Process
    calls: Path
    url: str = ""
    port: int = 0

    def kill(self) -> None:
        self.process.kill()


@asynccontextmanager
async def node(
    tmp_path: Path, redis: Redis, name: str, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[Node]:
    """Start a node and read its banner; SIGKILL it on the way out if it still runs."""
    script = tmp_path / "script.json"
    if not script.exists():
        script.write_text(json.dumps(SCRIPT))
    calls = tmp_path / f"calls-{name}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BABEL_")}
    environment.update(
        BABEL_REDIS_URL=redis.url,
        BABEL_NODE_ID=name,
        BABEL_MT_CALL_LOG=str(calls),
        BABEL_SCRIPT_PATH=str(script),
        BABEL_HOST_GRACE_S="60",
        **(env or {}),
    )
    stderr = (tmp_path / f"stderr-{name}.txt").open("wb")
    process = await trio.lowlevel.open_process(
        [str(ENTRY_POINT), "serve", "--port", "0", "--stt", "scripted", "--mt", "echo", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=environment,
    )
    stderr.close()
    assert process.stdout is not None
    try:
        seen = bytearray()
        with trio.fail_after(STARTUP_S):
            await _read_until(process.stdout, b"\n", seen)
        first = seen.split(b"\n")[0].decode()
        assert first.startswith("babel-actors serving on http://127.0.0.1:"), first
        url = first.rsplit(" ", 1)[1]
        yield Node(name, process, calls, url, int(url.rsplit(":", 1)[1]))
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.stdout.aclose()


async def http(node: Node, method: str, path: str, body: Any = None, *, template: str = "") -> Any:
    async with httpx.AsyncClient(base_url=node.url) as client:
        response = await client.request(method, path, json=body)
    data = response.json()
    validate_http(template or path, method.lower(), response.status_code, data)
    return response.status_code, data


@asynccontextmanager
async def ws(node: Node, path: str) -> AsyncIterator[ProtocolClient]:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{node.port}{path}") as socket_:
        yield ProtocolClient(socket_)


async def speak(host: ProtocolClient, sentences: int) -> None:
    """Audio for ``sentences`` scripted sentences, each as two binary frames."""
    for _ in range(sentences * 2):
        await host.send_audio(silence(SECONDS / 2))
    # The resampler holds back a few milliseconds; this tail pushes them through.
    await host.send_audio(silence(0.05))


def stats_show(counts: dict[str, int]) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "session_stats" and m["stats"]["languageCounts"] == counts


def final_requests(nodes: list[Node]) -> Counter[tuple[str, str]]:
    """Translation requests of whole sentences (finals) at every node's engine."""
    counted: Counter[tuple[str, str]] = Counter()
    for each in nodes:
        for target, text in read_call_log(str(each.calls)):
            if text in SENTENCES:
                counted[(text, target)] += 1
    return counted


def assert_exactly(messages: list[dict[str, Any]], sentences: list[str], lang: str) -> None:
    finals = finals_of(checked(messages))
    seqs = [m["seqId"] for m in finals]
    assert seqs == sorted(set(seqs)), f"finals once, in order: {seqs}"
    assert [m["originalText"] for m in finals] == sentences
    assert [m["translatedText"] for m in finals] == [
        s if lang == "en" else f"[{lang}] {s}" for s in sentences
    ]


async def test_three_nodes_every_final_once_in_order_translated_once_per_language(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        node(tmp_path, redis, "A") as a,
        node(tmp_path, redis, "B") as b,
        node(tmp_path, redis, "C") as c,
    ):
        with trio.fail_after(SESSION_S):
            _, session = await http(a, "POST", "/session/start", {})
            sid, code = session["sessionId"], session["sessionCode"]
            for other in (b, c):
                status, joined = await http(other, "POST", "/session/join",
                                            {"sessionCode": code.lower(), "targetLang": "fr"})
                assert status == 200 and joined["sessionId"] == sid, joined
            async with (
                ws(b, listener_path(sid, "es")) as b_es,
                ws(b, listener_path(sid, "fr")) as b_fr,
                ws(c, listener_path(sid, "es")) as c_es,
                ws(c, listener_path(sid, "fr")) as c_fr,
                ws(a, session["wsUrl"]) as host,
            ):
                for listener in (b_es, b_fr, c_es, c_fr):
                    assert (await listener.receive())["type"] == "session_joined"
                await host.receive_until(stats_show({"es": 2, "fr": 2}))
                await speak(host, 4)
                for listener in (b_es, b_fr, c_es, c_fr):
                    await listener.finals(4)
                await host.finals(4)
                _, info = await http(c, "GET", f"/session/{code}/info",
                                     template="/session/{code}/info")
        assert info["session"]["listenerCount"] == 4
        assert info["session"]["isActive"] is True
        for listener, lang in ((b_es, "es"), (b_fr, "fr"), (c_es, "es"), (c_fr, "fr")):
            assert_exactly(listener.received, SENTENCES[:4], lang)
        assert_exactly(host.received, SENTENCES[:4], "en")
        seqs = {tuple(m["seqId"] for m in finals_of(x.received)) for x in (b_es, c_fr, host)}
        assert len(seqs) == 1, "every node sees the same seqIds"
        requests = final_requests([a, b, c])
        assert requests == Counter({(s, lang): 1 for s in SENTENCES[:4] for lang in ("es", "fr")})
        assert not read_call_log(str(b.calls)) and not read_call_log(str(c.calls)), (
            "only the host's node translates"
        )


async def test_listener_of_a_killed_node_resumes_on_another_with_exactly_what_it_missed(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        node(tmp_path, redis, "A") as a,
        node(tmp_path, redis, "B") as b,
        node(tmp_path, redis, "C") as c,
    ):
        with trio.fail_after(SESSION_S):
            _, session = await http(a, "POST", "/session/start", {})
            sid = session["sessionId"]
            async with ws(a, session["wsUrl"]) as host:
                async with ws(b, listener_path(sid, "es")) as doomed:
                    await doomed.receive()
                    await host.receive_until(stats_show({"es": 1}))
                    await speak(host, 2)
                    before = await doomed.finals(2)
                    b.kill()
                    await b.process.wait()
                    with pytest.raises(trio_websocket.ConnectionClosed):
                        while True:
                            await doomed.receive()
                await speak(host, 2)
                await host.finals(4)
                last_seq = before[-1]["seqId"]
                async with ws(c, listener_path(sid, "es", lastSeq=last_seq)) as back:
                    joined = await back.receive()
                    missed = await back.finals(2)
                    await speak(host, 1)
                    live = await back.finals(1)
        assert joined["type"] == "session_joined" and joined["resumedFrom"] == last_seq
        assert_exactly(before, SENTENCES[:2], "es")
        assert_exactly(back.received, SENTENCES[2:5], "es")
        assert all(m["seqId"] > last_seq for m in missed + live)
        assert final_requests([a, c])[(SENTENCES[2], "es")] == 1


async def test_host_moves_to_another_node_after_its_node_dies(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        node(tmp_path, redis, "A") as a,
        node(tmp_path, redis, "B") as b,
        node(tmp_path, redis, "C") as c,
    ):
        with trio.fail_after(SESSION_S):
            _, session = await http(a, "POST", "/session/start", {})
            sid = session["sessionId"]
            async with ws(c, listener_path(sid, "fr")) as listener:
                await listener.receive()
                async with ws(a, session["wsUrl"]) as host:
                    await host.receive_until(stats_show({"fr": 1}))
                    await speak(host, 2)
                    await listener.finals(2)
                    a.kill()
                    await a.process.wait()
                async with ws(b, session["wsUrl"]) as moved:
                    ready = await moved.receive_until(lambda m: m["type"] == "session_ready")
                    await moved.receive_until(stats_show({"fr": 1}))
                    await speak(moved, 2)
                    await listener.finals(2)
        assert ready[-1]["sessionId"] == sid
        # The scripted engine starts its script again on the new node; seqIds go on.
        assert_exactly(listener.received, SENTENCES[:2] + SENTENCES[:2], "fr")
        assert not any(m["type"] == "session_ended" for m in listener.received)


@pytest.mark.parametrize("persistent", [True, False], ids=["data-kept", "data-lost"])
async def test_redis_restarted_mid_session_and_the_session_goes_on(
    tmp_path: Path, persistent: bool
) -> None:
    async with (
        redis_server(tmp_path, persistent=persistent) as redis,
        node(tmp_path, redis, "A") as a,
        node(tmp_path, redis, "B") as b,
    ):
        with trio.fail_after(SESSION_S):
            _, session = await http(a, "POST", "/session/start", {})
            sid, code = session["sessionId"], session["sessionCode"]
            async with (
                ws(b, listener_path(sid, "es")) as remote,
                ws(a, listener_path(sid, "fr")) as local,
                ws(a, session["wsUrl"]) as host,
            ):
                await remote.receive()
                await local.receive()
                await host.receive_until(stats_show({"es": 1, "fr": 1}))
                await speak(host, 1)
                await remote.finals(1)
                await local.finals(1)

                await redis.stop()
                status, refused = await http(b, "POST", "/session/start", {})
                assert status == 503, refused
                _, health = await http(b, "GET", "/health")
                assert health["store"]["connected"] is False
                await speak(host, 1)
                await local.finals(1)

                await redis.start()
                await remote.finals(1)
                await speak(host, 1)
                await remote.finals(1)
                await local.finals(1)
                status, joined = await http(b, "POST", "/session/join",
                                            {"sessionCode": code, "targetLang": "es"})
                _, health = await http(b, "GET", "/health")
        assert status == 200 and joined["sessionId"] == sid
        assert health["store"]["connected"] is True
        assert_exactly(remote.received, SENTENCES[:3], "es")
        assert_exactly(local.received, SENTENCES[:3], "fr")


async def test_workers_share_the_port_and_sessions(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        node(tmp_path, redis, "W", "--workers", "2") as server,
    ):
        with trio.fail_after(SESSION_S):
            _, session = await http(server, "POST", "/session/start", {})
            sid = session["sessionId"]
            listeners = [ws(server, listener_path(sid, lang)) for lang in ("es", "fr") * 3]
            async with listeners[0] as l0, listeners[1] as l1, listeners[2] as l2, \
                    listeners[3] as l3, listeners[4] as l4, listeners[5] as l5:
                clients = [l0, l1, l2, l3, l4, l5]
                for client in clients:
                    await client.receive()
                async with ws(server, session["wsUrl"]) as host:
                    await host.receive_until(stats_show({"es": 3, "fr": 3}))
                    await speak(host, 2)
                    for client in clients:
                        await client.finals(2)
                    server.process.send_signal(signal.SIGTERM)
                    await server.process.wait()
        assert server.process.returncode == 0
        for client, lang in zip(clients, ("es", "fr") * 3, strict=True):
            assert_exactly(client.received, SENTENCES[:2], lang)


async def test_several_workers_without_redis_exit_with_a_clear_message() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BABEL_")}
    with trio.fail_after(STARTUP_S):
        done = await trio.run_process(
            [str(ENTRY_POINT), "serve", "--workers", "2", "--port", "0"],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    last = done.stderr.decode().strip().splitlines()[-1]
    assert done.returncode == 2 and done.stdout == b""
    assert "--workers 2 needs BABEL_REDIS_URL" in last, last


# --- the same logic in one process, on MemoryStore siblings ----------------------------


@asynccontextmanager
async def two_nodes(
    echo: EchoTranslator, config: Config | None = None
) -> AsyncIterator[tuple[Server, Server]]:
    config = config or Config(port=0)
    first = MemoryStore(node="A")
    second = first.sibling("B")
    script = sentence_script(SENTENCES, seconds_each=SECONDS)
    async with trio.open_nursery() as nursery:
        servers = []
        for store in (first, second):
            server: Server = await nursery.start(
                _serve, config, ScriptedSpeechToText(script), echo, store
            )
            servers.append(server)
        try:
            yield servers[0], servers[1]
        finally:
            for server in servers:
                server.shutdown()


async def _serve(
    config: Config,
    stt: ScriptedSpeechToText,
    mt: EchoTranslator,
    store: MemoryStore,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve(config, stt, mt, store=store, task_status=task_status)


async def test_in_process_host_moves_and_seq_ids_continue() -> None:
    echo = EchoTranslator()
    with trio.fail_after(20):
        async with two_nodes(echo) as (a, b):
            _, session = await post(a, "/session/start")
            sid = session["sessionId"]
            async with connect(b, listener_path(sid, "es")) as listener:
                await listener.receive()
                async with connect(a, session["wsUrl"]) as host:
                    await host.receive_until(stats_show({"es": 1}))
                    await speak(host, 2)
                    first = await listener.finals(2)
                    async with connect(b, session["wsUrl"]) as moved:
                        await moved.receive_until(lambda m: m["type"] == "session_ready")
                        closed = await _closed_code(host)
                        await speak(moved, 1)
                        (after,) = await listener.finals(1)
        assert closed == 1000, "the stale host connection is replaced"
        assert after["seqId"] > first[-1]["seqId"]
        assert after["translatedText"] == f"[es] {SENTENCES[0]}"


async def test_in_process_late_joiner_on_another_node_catches_up_in_a_new_language() -> None:
    echo = EchoTranslator()
    with trio.fail_after(20):
        async with two_nodes(echo, Config(port=0, catchup_finals=2)) as (a, b):
            _, session = await post(a, "/session/start")
            sid = session["sessionId"]
            async with connect(a, session["wsUrl"]) as host:
                await host.receive()
                await speak(host, 3)
                await host.finals(3)
                async with connect(b, listener_path(sid, "de")) as late:
                    await late.receive()
                    recent = await late.finals(2)
                    await host.receive_until(stats_show({"de": 1}))
                    await speak(host, 1)
                    (live,) = await late.finals(1)
        assert [m["translatedText"] for m in recent] == [f"[de] {s}" for s in SENTENCES[1:3]]
        assert live["translatedText"] == f"[de] {SENTENCES[3]}"
        assert echo.calls[(SENTENCES[3], "de")] == 1


async def _closed_code(client: ProtocolClient) -> int | None:
    while True:
        try:
            await client.receive()
        except trio_websocket.ConnectionClosed as closed:
            return None if closed.reason is None else closed.reason.code
