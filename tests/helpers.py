"""Small helpers shared by the server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio_websocket
from protocol_schemas import validate_http, validate_server_message

from babel_actors.server.app import Server
from babel_actors.testing import ProtocolClient


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
