"""HTTP/1.1 on a raw connection (h11, sans-IO): the JSON API and the WebSocket upgrade."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

import h11
import trio

from babel_actors.errors import ProtocolError
from babel_actors.registry import Registry
from babel_actors.server.connection import Connection
from babel_actors.server.roles import serve_role
from babel_actors.server.routes import Api
from babel_actors.server.static import Asset
from babel_actors.server.websocket import SERVER_ERROR, WebSocketPeer, accept_key

log = logging.getLogger(__name__)

_CORS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (b"access-control-allow-headers", b"content-type, authorization, x-api-key"),
]


async def serve_connection(conn: Connection, api: Api, registry: Registry) -> None:
    """Serve one TCP connection: keep-alive HTTP requests, or one WebSocket.

    Backpressure: one request at a time per connection; bodies past the configured
    limit are refused with 413 before they are read in full.
    Cancellation: the caller's scope; the socket is closed on the way out.
    Error handling: malformed HTTP gets 400 and the connection closes; a failure
    inside a WebSocket role closes that WebSocket with 1011 and touches nothing else.
    """
    config = registry.config
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.drain)
        try:
            while True:
                request, body = await _read_request(conn, http, config.max_http_body_bytes)
                if request is None:
                    break
                if _is_upgrade(request):
                    await _serve_websocket(conn, http, request, registry)
                    break
                try:
                    await _answer(conn, http, request, body, api)
                except Exception:
                    log.exception("%s %s failed", request.method.decode(), _target(request).path)
                    if http.our_state is not h11.SEND_RESPONSE:
                        raise
                    _respond(conn, http, 500, {"success": False, "error": "server error"})
                if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                    break
                http.start_next_cycle()
        except _Refused as refused:
            if http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                _respond(conn, http, refused.status, {"success": False, "error": refused.text})
        except h11.ProtocolError as exc:
            if http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                _respond(conn, http, 400, {"success": False, "error": f"bad HTTP: {exc}"})
        finally:
            await conn.flushed(config.close_timeout_s)
            conn.close()
            nursery.cancel_scope.cancel()


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text


async def _read_request(
    conn: Connection, http: h11.Connection, max_body: int
) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            data = await conn.receive()
            http.receive_data(data)
            if not data and request is None:
                return None, b""
            continue
        if isinstance(event, h11.Request):
            request = event
            length = _header(event, b"content-length")
            if length is not None and length.isdigit() and int(length) > max_body:
                raise _Refused(413, f"request body larger than {max_body} bytes")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise _Refused(413, f"request body larger than {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


async def _answer(
    conn: Connection, http: h11.Connection, request: h11.Request, body: bytes, api: Api
) -> None:
    method = request.method.decode()
    path = _target(request).path
    if method == "OPTIONS":
        _respond(conn, http, 204, None)
        return
    if method in ("GET", "HEAD") and (asset := api.site.find(path)) is not None:
        _send_asset(conn, http, request, asset, head=method == "HEAD")
        return
    if method in ("GET", "HEAD") and path == "/metrics":
        _send_metrics(conn, http, api, head=method == "HEAD")
        return
    status, reply = await api.handle(method, path, body)
    _respond(conn, http, status, reply, head=method == "HEAD")


def _respond(
    conn: Connection,
    http: h11.Connection,
    status: int,
    body: dict[str, Any] | None,
    *,
    head: bool = False,
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
        *_CORS,
    ]
    conn.write(http.send(h11.Response(status_code=status, headers=headers)) or b"")
    if payload and not head:
        conn.write(http.send(h11.Data(data=payload)) or b"")
    conn.write(http.send(h11.EndOfMessage()) or b"")


def _send_asset(
    conn: Connection, http: h11.Connection, request: h11.Request, asset: Asset, *, head: bool
) -> None:
    """A file of the web client, or 304 when the browser's copy is current."""
    fresh = asset.etag in (_header(request, b"if-none-match") or "")
    headers = asset.headers
    if not fresh:
        headers.append((b"content-length", str(len(asset.body)).encode()))
    conn.write(http.send(h11.Response(status_code=304 if fresh else 200, headers=headers)) or b"")
    if not (fresh or head):
        conn.write(http.send(h11.Data(data=asset.body)) or b"")
    conn.write(http.send(h11.EndOfMessage()) or b"")


def _send_metrics(conn: Connection, http: h11.Connection, api: Api, *, head: bool) -> None:
    """Prometheus text exposition of this server's metrics."""
    body, content_type = api.registry.metrics.exposition()
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    conn.write(http.send(h11.Response(status_code=200, headers=headers)) or b"")
    if not head:
        conn.write(http.send(h11.Data(data=body)) or b"")
    conn.write(http.send(h11.EndOfMessage()) or b"")


def _is_upgrade(request: h11.Request) -> bool:
    upgrade = _header(request, b"upgrade") or ""
    return upgrade.lower() == "websocket"


async def _serve_websocket(
    conn: Connection, http: h11.Connection, request: h11.Request, registry: Registry
) -> None:
    target = _target(request)
    key = _header(request, b"sec-websocket-key")
    if target.path != "/translate":
        raise _Refused(404, "WebSocket endpoint is /translate")
    if key is None or (_header(request, b"sec-websocket-version") or "") != "13":
        raise _Refused(400, "not a valid WebSocket upgrade (version 13 and a key needed)")
    conn.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
    )
    trailing, _ = http.trailing_data
    peer = WebSocketPeer(conn, registry.config, bytes(trailing))
    query = dict(parse_qsl(target.query))
    with peer.read_scope:
        try:
            await serve_role(peer, query, registry)
        except ProtocolError as exc:
            peer.fail(exc.message, exc.close_code or SERVER_ERROR)
        except Exception:
            log.exception("WebSocket %s (%s) failed", conn.peer, query.get("role"))
            peer.fail("server error", SERVER_ERROR)
    if peer.close_code is None:
        peer.close(1000, "")


def _target(request: h11.Request) -> SplitResult:
    # h11 accepts any visible characters as the target; urlsplit does not.
    try:
        return urlsplit(request.target.decode("latin-1"))
    except ValueError:
        raise _Refused(400, "malformed request target") from None


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None
