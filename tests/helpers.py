"""Small helpers shared by the server tests."""

from __future__ import annotations

from typing import Any

import httpx
from protocol_schemas import validate_http, validate_server_message

from babel_actors.server.app import Server


async def post(server: Server, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(path, json=body)
    data = response.json()
    validate_http(path, "post", response.status_code, data)
    return response.status_code, data


async def get(server: Server, path: str, template: str | None = None) -> tuple[int, Any]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get(path)
    data = response.json()
    validate_http(template or path, "get", response.status_code, data)
    return response.status_code, data


async def start_session(server: Server) -> dict[str, Any]:
    status, body = await post(server, "/session/start")
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
