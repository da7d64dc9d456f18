"""Logs an operator can feed to a log pipeline: one JSON object a line, each record of
a session tagged with its id, and never a key, a host token or audio."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from helpers import captured_json, listener_path, live_session

from babel_actors import logs
from babel_actors.config import Config
from babel_actors.errors import ConfigError
from babel_actors.testing import (
    EchoTranslator,
    ProtocolClient,
    ScriptedSpeechToText,
    running_server,
    sentence_script,
)
from babel_actors.testing.faults import Fault, FaultySpeechToText, FaultyTranslator

TIMEOUT_S = 20
STARTUP_S = 60.0
ENTRY_POINT = Path(sys.executable).parent / "babel-actors"
BANNER = re.compile(r"^babel-actors serving on (http://127\.0\.0\.1:\d+)$")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object (a line that is not one fails)."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    return records


def audio(seconds: float, rate: int = 24000) -> bytes:
    """Distinctive PCM (not silence), whose base64 would stand out in a log."""
    pattern = bytes(range(1, 255))
    size = int(seconds * rate) * 2
    return (pattern * (size // len(pattern) + 1))[:size]


# --- the formatter and the filters ---------------------------------------------------


def test_records_are_json_lines_and_secrets_are_redacted() -> None:
    out = io.StringIO()
    log = logging.getLogger("babel_actors.test_logs.unit")
    log.propagate = False
    log.addHandler(logs.handler("json", out))
    log.setLevel(logging.DEBUG)
    pcm_b64 = base64.b64encode(audio(0.05)).decode()
    secrets = {
        "query token": ("GET /translate?role=host&token=%s&x=1", "tok-3f9a1c"),
        "query apiKey": ("ws /translate?apiKey=%s", "key-77ab21"),
        "bearer": ("headers: Authorization: Bearer %s", "sk-live-5e6f"),
        "x-api-key": ("headers: {'x-api-key': '%s'}", "xak-0c0ffee"),
        "header pair": ("headers: [(b'authorization', b'Bearer %s')]", "pair-9d8e"),
        "host token": ('reply {"hostToken": "%s"}', "ht-abc123def"),
        "audio": ('message {"type": "audio", "audioData": "%s"}', pcm_b64),
        "pcm": ("chunk %r", audio(0.01)),
    }
    try:
        for template, secret in secrets.values():
            log.info(template, secret)
        try:
            raise ValueError(f"bad token={secrets['query token'][1]}")
        except ValueError:
            log.exception("failed")
    finally:
        log.handlers.clear()
    text = out.getvalue()
    records = json_lines(text)
    assert len(records) == len(secrets) + 1
    for what, (_, secret) in secrets.items():
        shown = secret if isinstance(secret, str) else repr(secret)[2:40]
        assert shown not in text, what
    assert "sessionId" not in text and "session_id" not in records[0]
    assert records[-1]["level"] == "ERROR"
    assert "ValueError: bad token=[redacted]" in records[-1]["exception"]
    assert records[0]["message"] == "GET /translate?role=host&token=[redacted]&x=1"


async def test_a_task_bound_to_a_session_tags_its_records_and_its_children() -> None:
    out = io.StringIO()
    log = logging.getLogger("babel_actors.test_logs.tasks")
    log.propagate = False
    log.addHandler(logs.handler("json", out))
    log.setLevel(logging.INFO)

    async def child() -> None:
        log.info("from a child")

    async def bound() -> None:
        logs.bind_session("s-1")
        log.info("bound")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bound)
        log.info("unbound")
        log.info("explicit", extra={"session_id": "s-2"})
    finally:
        log.handlers.clear()
    records = {r["message"]: r.get("session_id") for r in json_lines(out.getvalue())}
    assert records == {"bound": "s-1", "from a child": "s-1", "unbound": None, "explicit": "s-2"}


def test_text_format_names_the_session() -> None:
    out = io.StringIO()
    log = logging.getLogger("babel_actors.test_logs.text")
    log.propagate = False
    log.addHandler(logs.handler("text", out))
    try:
        log.warning("hello key=abc", extra={"session_id": "s-3"})
    finally:
        log.handlers.clear()
    assert (
        out.getvalue()
        .rstrip()
        .endswith("WARNING babel_actors.test_logs.text [s-3]: hello key=[redacted]")
    )


def test_an_unknown_log_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        logs.configure("yaml")


# --- sessions in a live server -------------------------------------------------------


async def test_a_session_crash_and_end_carry_its_id() -> None:
    stt = FaultySpeechToText(
        ScriptedSpeechToText(sentence_script(["one two three"], seconds_each=0.5)), Fault.CRASH
    )
    with captured_json() as out, trio.fail_after(TIMEOUT_S):
        async with running_server(Config(port=0), stt=stt) as server:
            async with live_session(server, "fr") as (host, listener, session):
                sid = session["sessionId"]
                await host.send_audio(audio(0.1))
                await until_ended(listener)
    records = json_lines(out.getvalue())
    crash = [r for r in records if "crashed" in r["message"]]
    assert len(crash) == 1, records
    assert crash[0]["session_id"] == sid and crash[0]["level"] == "ERROR"
    assert "injected crash" in crash[0]["exception"]
    ended = [r for r in records if r["message"] == f"session {sid} ended: error"]
    assert ended and all(r["session_id"] == sid for r in ended)
    session_records = [r for r in records if sid in r["message"]]
    assert all(r.get("session_id") == sid for r in session_records), session_records


async def test_an_actors_warning_carries_its_session_id() -> None:
    mt = FaultyTranslator(EchoTranslator(), Fault.ERROR, for_targets=frozenset({"fr"}))
    stt = ScriptedSpeechToText(sentence_script(["one two three"], seconds_each=0.5))
    with captured_json() as out, trio.fail_after(TIMEOUT_S):
        async with running_server(Config(port=0), stt=stt, mt=mt) as server:
            async with live_session(server, "fr") as (host, listener, session):
                await host.send_audio(audio(0.6))
                await listener.finals(1)
    failed = [r for r in json_lines(out.getvalue()) if "translation en->fr failed" in r["message"]]
    assert failed and all(r["session_id"] == session["sessionId"] for r in failed), failed


async def until_ended(client: ProtocolClient) -> None:
    try:
        while (await client.receive())["type"] != "session_ended":
            pass
    except trio_websocket.ConnectionClosed:
        return


# --- the CLI -------------------------------------------------------------------------


@asynccontextmanager
async def serve_cli(tmp_path: Path, env: dict[str, str]) -> AsyncIterator[tuple[str, Path]]:
    """``babel-actors serve`` on a free port, its stderr (its logs) in a file; stopped
    with SIGINT on the way out. Yields its URL and the stderr file."""
    stderr_path = tmp_path / "stderr.txt"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BABEL_")}
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [str(ENTRY_POINT), "serve", "--port", "0", "--log-level", "DEBUG"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**clean, **env},
        )
    assert process.stdout is not None
    try:
        with trio.fail_after(STARTUP_S):
            first = b""
            while b"\n" not in first:
                chunk = await process.stdout.receive_some()
                assert chunk, stderr_path.read_text()
                first += chunk
        match = BANNER.match(first.split(b"\n", 1)[0].decode())
        assert match, first
        yield match.group(1), stderr_path
        process.send_signal(signal.SIGINT)
        with trio.fail_after(TIMEOUT_S):
            await process.wait()
        assert process.returncode == 0, stderr_path.read_text()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.stdout.aclose()


async def test_the_cli_logs_json_lines_without_keys_tokens_or_audio(tmp_path: Path) -> None:
    api_key = "key-for-the-log-test-6b1f"
    pcm = audio(2.1)
    env = {"BABEL_STT": "scripted", "BABEL_MT": "echo", "BABEL_API_KEYS": api_key}
    async with serve_cli(tmp_path, env) as (url, stderr_path):
        with trio.fail_after(TIMEOUT_S):
            async with httpx.AsyncClient(base_url=url) as client:
                response = await client.post(
                    "/session/start", json={}, headers={"Authorization": f"Bearer {api_key}"}
                )
                assert response.status_code == 200, response.text
                refused = await client.post(
                    "/session/start", json={}, headers={"X-API-Key": api_key + "-wrong"}
                )
                assert refused.status_code == 401
            session = response.json()
            sid, host_token = session["sessionId"], session["hostToken"]
            ws = url.replace("http://", "ws://")
            async with (
                trio_websocket.open_websocket_url(ws + listener_path(sid, "es")) as lws,
                trio_websocket.open_websocket_url(ws + session["wsUrl"]) as hws,
            ):
                listener, host = ProtocolClient(lws), ProtocolClient(hws)
                await listener.receive()
                await host.receive()
                await host.send_audio(pcm, binary=False)
                await listener.finals(1)
    text = stderr_path.read_text()
    records = json_lines(text)
    for secret in (api_key, host_token, base64.b64encode(pcm[:3000]).decode()[:64]):
        assert secret not in text
    ended = [r for r in records if r["message"] == f"session {sid} ended: host_ended"]
    assert ended and ended[0]["session_id"] == sid, records
