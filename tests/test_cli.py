"""The ``babel-actors`` console script, run as an operator runs it: a real process.

Each test starts the installed entry point, reads its startup banner for the URL,
talks to it over HTTP and WebSocket, and stops it with a signal.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio_websocket
from helpers import checked, listener_path
from protocol_schemas import validate_http

from babel_actors.testing import ProtocolClient, silence

ENTRY_POINT = Path(sys.executable).parent / "babel-actors"
"""The console script installed next to the interpreter running the tests."""
STARTUP_S = 60.0
"""Bound on start-up to banner: imports and engine discovery on two busy cores."""
SHUTDOWN_S = 15.0
"""Bound on signal to exit: the server's shutdown grace is 5 s (Config)."""
GOING_AWAY = 1001
BANNER = re.compile(r"^babel-actors serving on (http://127\.0\.0\.1:(\d+))$")


@attrs.define
class Cli:
    """A running ``babel-actors serve`` process and what it printed so far."""

    process: trio.Process
    stderr_path: Path
    url: str = ""
    port: int = 0
    _buffer: bytearray = attrs.field(factory=bytearray)

    async def read_line(self) -> str:
        """The next line of stdout, without its newline; ``""`` at end of output."""
        assert self.process.stdout is not None
        while (end := self._buffer.find(b"\n")) < 0:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                line = self._buffer.decode()
                self._buffer.clear()
                return line
            self._buffer += chunk
        line = self._buffer[:end].decode()
        del self._buffer[: end + 1]
        return line

    async def read_banner(self) -> list[str]:
        """The three startup lines: URL, speech engine, translation engine."""
        first = await self.read_line()
        match = BANNER.match(first)
        assert match, f"unexpected first line {first!r}; stderr: {self.stderr()}"
        self.url, self.port = match.group(1), int(match.group(2))
        return [first, await self.read_line(), await self.read_line()]

    async def rest_of_stdout(self) -> list[str]:
        lines = []
        while line := await self.read_line():
            lines.append(line)
        return lines

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any ``BABEL_*`` setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BABEL_")}
    env.update(extra or {})
    return env


@asynccontextmanager
async def cli(
    tmp_path: Path, *args: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[Cli]:
    """Run ``babel-actors serve *args``; kill it on the way out if it still runs."""
    stderr_path = tmp_path / f"stderr-{len(list(tmp_path.iterdir()))}.txt"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [str(ENTRY_POINT), "serve", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=clean_env(env),
        )
    try:
        yield Cli(process, stderr_path)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            assert process.stdout is not None
            await process.stdout.aclose()


async def http_get(url: str, path: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get(path)
    body: dict[str, Any] = response.json()
    validate_http(path, "get", response.status_code, body)
    assert response.status_code == 200, body
    return body


async def start_session(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/session/start", json={})
    body: dict[str, Any] = response.json()
    validate_http("/session/start", "post", response.status_code, body)
    assert response.status_code == 200, body
    return body


@asynccontextmanager
async def ws_connect(port: int, path: str) -> AsyncIterator[ProtocolClient]:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}{path}") as ws:
        yield ProtocolClient(ws)


async def until_closed(client: ProtocolClient) -> int | None:
    """Read to the end of the connection; return the server's close code."""
    while True:
        try:
            await client.receive()
        except trio_websocket.ConnectionClosed as closed:
            return None if closed.reason is None else closed.reason.code


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@attrs.frozen
class Engines:
    args: tuple[str, ...]
    stt: str
    mt: str
    mt_pair: tuple[str, str]
    """A pair /health must list."""
    say: tuple[float, str] | None
    """Seconds of audio that make the engine speak a final, and that final as an ``es``
    listener reads it; None when silence makes no final (a real recogniser)."""


SCRIPTED = Engines(
    ("--stt", "scripted", "--mt", "echo"),
    "scripted",
    "echo",
    ("en", "es"),
    (2.05, "[es] Good morning, everyone, and welcome."),
)
DEFAULTS = Engines((), "whisper", "apertium", ("en", "es"), None)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("engines", [SCRIPTED, DEFAULTS], ids=["scripted-echo", "defaults"])
async def test_serve_banner_health_and_graceful_shutdown(
    tmp_path: Path, engines: Engines, signum: signal.Signals
) -> None:
    async with cli(tmp_path, "--port", "0", *engines.args) as server:
        with trio.fail_after(STARTUP_S):
            banner = await server.read_banner()
        assert banner[1].startswith(f"  speech: {engines.stt} (") and "en" in banner[1]
        source, target = engines.mt_pair
        assert banner[2].startswith(f"  translation: {engines.mt} (")
        assert re.search(rf"\b{source}->[a-z/]*\b{target}\b", banner[2]), banner[2]

        with trio.fail_after(STARTUP_S):
            health = await http_get(server.url, "/health")
            assert health["status"] == "ok"
            assert health["transcriptionProvider"] == engines.stt
            assert health["translationProvider"] == engines.mt
            assert target in health["mtPairs"][source]

            session = await start_session(server.url)
            async with (
                ws_connect(server.port, listener_path(session["sessionId"], "es")) as listener,
                ws_connect(server.port, session["wsUrl"]) as host,
            ):
                assert (await listener.receive())["type"] == "session_joined"
                await host.receive_until(lambda m: m["type"] == "session_ready")
                if engines.say is not None:
                    seconds, expected = engines.say
                    await host.send_audio(silence(seconds))
                    (final,) = await listener.finals(1)
                    assert final["translatedText"] == expected

                server.process.send_signal(signum)
                with trio.fail_after(SHUTDOWN_S):
                    listener_code = await until_closed(listener)
                    host_code = await until_closed(host)
                    await server.process.wait()
                    after = await server.rest_of_stdout()

    assert server.process.returncode == 0, server.stderr()
    assert f"{signum.name}: shutting down" in after
    assert "Traceback" not in server.stderr(), server.stderr()
    for client, code in ((listener, listener_code), (host, host_code)):
        messages = checked(client.received)
        ended = [m for m in messages if m["type"] == "session_ended"]
        assert len(ended) == 1 and ended[0]["reason"] == "shutdown", messages[-3:]
        assert messages[-1] is ended[0], "session_ended is the last message"
        assert code == GOING_AWAY


async def test_environment_chooses_port_and_engines(tmp_path: Path) -> None:
    port = free_port()
    env = {"BABEL_PORT": str(port), "BABEL_STT": "scripted", "BABEL_MT": "echo"}
    async with cli(tmp_path, env=env) as server:
        with trio.fail_after(STARTUP_S):
            banner = await server.read_banner()
            health = await http_get(server.url, "/health")
        assert server.port == port
        assert "speech: scripted" in banner[1] and "translation: echo" in banner[2]
        assert (health["transcriptionProvider"], health["translationProvider"]) == (
            "scripted",
            "echo",
        )
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(SHUTDOWN_S):
            await server.process.wait()
    assert server.process.returncode == 0, server.stderr()


async def test_flags_override_the_environment(tmp_path: Path) -> None:
    env = {"BABEL_PORT": "1", "BABEL_STT": "whisper", "BABEL_MT": "apertium"}
    async with cli(tmp_path, "--port", "0", "--stt", "scripted", "--mt", "echo", env=env) as server:
        with trio.fail_after(STARTUP_S):
            banner = await server.read_banner()
        assert server.port not in (0, 1)
        assert "speech: scripted" in banner[1] and "translation: echo" in banner[2]
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(SHUTDOWN_S):
            await server.process.wait()
    assert server.process.returncode == 0, server.stderr()


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (("--port", "0", "--stt", "klingon"), {}, ("klingon", "whisper", "scripted")),
        (("--port", "0", "--mt", "klingon"), {}, ("klingon", "apertium", "echo")),
        (("--port", "0"), {"BABEL_STT": "klingon"}, ("klingon", "whisper", "scripted")),
        (("--port", "0"), {"BABEL_MT": "klingon"}, ("klingon", "apertium", "echo")),
        ((), {"BABEL_PORT": "eighty"}, ("BABEL_PORT", "eighty")),
    ],
    ids=["stt-flag", "mt-flag", "stt-env", "mt-env", "port-env"],
)
async def test_bad_settings_exit_nonzero_with_a_clear_message(
    args: Sequence[str], env: Mapping[str, str], words: Sequence[str]
) -> None:
    with trio.fail_after(STARTUP_S):
        done = await trio.run_process(
            [str(ENTRY_POINT), "serve", *args],
            env=clean_env(env),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    stderr = done.stderr.decode()
    assert done.returncode != 0
    assert done.stdout == b"", "nothing is served"
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("babel-actors"), stderr
    assert all(word in last for word in words), last


def test_entry_point_is_installed() -> None:
    assert ENTRY_POINT.is_file(), f"{ENTRY_POINT}: run `pip install -e .` in the venv"


async def test_port_in_use_exits_nonzero_with_a_clear_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(STARTUP_S):
            done = await trio.run_process(
                [str(ENTRY_POINT), "serve", "--port", str(port), *SCRIPTED.args],
                env=clean_env(),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    stderr = done.stderr.decode()
    assert done.returncode != 0
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("babel-actors") and str(port) in last, last
