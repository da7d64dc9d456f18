"""Small helpers shared by the server tests."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import httpx
import trio
import trio.testing
import trio_websocket
from protocol_schemas import validate_http, validate_server_message

from babel_actors import logs
from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.server.app import Server, serve
from babel_actors.store import MemoryStore, SessionRecord, StoreUnavailable
from babel_actors.testing import EchoTranslator, ProtocolClient, connect


async def post(
    server: Server,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(path, json=body, headers=headers)
    data = response.json()
    validate_http(path, "post", response.status_code, data)
    return response.status_code, data


async def get(
    server: Server,
    path: str,
    template: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get(path, headers=headers)
    data = response.json()
    validate_http(template or path, "get", response.status_code, data)
    return response.status_code, data


async def start_session(server: Server, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    status, body = await post(server, "/session/start", headers=headers)
    assert status == 200, body
    return body


def listener_path(session_id: str, lang: str, **extra: Any) -> str:
    query = f"/translate?role=listener&sessionId={session_id}&targetLang={lang}"
    return query + "".join(f"&{k}={v}" for k, v in extra.items())


@asynccontextmanager
async def live_session(
    server: Server, target: str
) -> AsyncIterator[tuple[ProtocolClient, ProtocolClient, dict[str, Any]]]:
    """A new session's host and one listener reading ``target``, both greeted
    (``session_ready``, ``session_joined`` read), and the ``/session/start`` reply."""
    session = await start_session(server)
    async with (
        connect(server, listener_path(session["sessionId"], target)) as listener,
        connect(server, session["wsUrl"]) as host,
    ):
        await listener.receive()
        await host.receive()
        yield host, listener, session


def checked(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate each message against protocols/schemas; return them."""
    for message in messages:
        validate_server_message(message)
    return messages


def finals_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == "translation" and not m["isPartial"]]


@asynccontextmanager
async def connect_with(
    server: Server, path: str, headers: Mapping[str, str]
) -> AsyncIterator[ProtocolClient]:
    """``testing.connect`` with extra upgrade headers (``Origin``, ``X-Real-IP``, keys).
    A refused upgrade raises ``trio_websocket.ConnectionRejected``."""
    extra = [(k.encode(), v.encode()) for k, v in headers.items()]
    url = f"ws://127.0.0.1:{server.port}{path}"
    async with trio_websocket.open_websocket_url(url, extra_headers=extra) as ws:
        yield ProtocolClient(ws)


async def refusals(server: Server) -> dict[str, float]:
    """``babel_refusals_total`` by reason, scraped from ``GET /metrics`` (the operator
    key, when the server has one, is the test's business: pass it in the config)."""
    headers = {"X-API-Key": server.config.operator_key} if server.config.operator_key else {}
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    counts: dict[str, float] = {}
    for line in response.text.splitlines():
        if line.startswith('babel_refusals_total{reason="'):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('"')[1]] = float(value)
    return counts


class GatedStore(MemoryStore):
    """A shared in-process store (sessions served as a cluster node serves them) whose
    look-ups by code and creations wait at ``gate``: held shut (``hold``), it keeps
    every request that reaches the store in flight at once, so a test can see what a
    check admitted before the store answered."""

    def __init__(self) -> None:
        super().__init__(shared=True)
        self.gate = trio.Event()
        self.gate.set()
        self.unavailable = False
        """Creations raise ``StoreUnavailable`` while set."""

    def hold(self) -> trio.Event:
        """Shut the gate; set the returned event to open it."""
        self.gate = trio.Event()
        return self.gate

    async def create(self, record: SessionRecord) -> bool:
        await self.gate.wait()
        if self.unavailable:
            raise StoreUnavailable("the test made the store unavailable")
        return await super().create(record)

    async def resolve(self, code: str) -> str | None:
        await self.gate.wait()
        return await super().resolve(code)


@asynccontextmanager
async def running_server_on(
    store: MemoryStore, config: Config, stt: SpeechToText
) -> AsyncIterator[Server]:
    """``testing.running_server`` with its sessions in ``store``."""
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(
            partial(serve, config, stt, EchoTranslator(), store=store)
        )
        try:
            yield server
        finally:
            server.shutdown()


async def all_at_once(
    store: GatedStore, calls: Sequence[Callable[[], Awaitable[httpx.Response]]]
) -> list[httpx.Response]:
    """Run ``calls`` concurrently with the store's gate shut; once each is answered
    or waits in the store (every task is blocked), open it. Their responses, as they came."""
    responses: list[httpx.Response] = []
    gate = store.hold()

    async def call(index: int) -> None:
        responses.append(await calls[index]())

    async with trio.open_nursery() as nursery:
        for index in range(len(calls)):
            nursery.start_soon(call, index)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    return responses


@contextmanager
def captured_json() -> Iterator[io.StringIO]:
    """The root logger's records, as the CLI writes them with ``json``, in a buffer."""
    out = io.StringIO()
    handler = logs.handler("json", out)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@asynccontextmanager
async def closing_engines(stt: SpeechToText, mt: Translator) -> AsyncIterator[None]:
    """Close ``mt`` and ``stt`` when the block ends, however it ends (shielded: a
    cancelled test still stops Whisper's and Apertium's processes and threads)."""
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await mt.aclose()
            await stt.aclose()
