"""HTTP/1.1 on a raw connection (h11, sans-IO): the JSON API and the WebSocket upgrade."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit

import h11
import trio

from babel_actors.config import Config
from babel_actors.errors import ProtocolError
from babel_actors.server.connection import Connection
from babel_actors.server.guard import REQUEST_TIMEOUT, Guard, Refusal
from babel_actors.server.roles import Caller, refuse, serve_role
from babel_actors.server.routes import Api, Request, allowed_methods
from babel_actors.server.static import Asset
from babel_actors.server.websocket import WebSocketPeer, accept_key
from babel_actors.wire.closes import SERVER_ERROR, TOO_BIG
from babel_actors.wire.query import parse_query

log = logging.getLogger(__name__)

Headers = Sequence[tuple[bytes, bytes]]

_CLOSE = [(b"connection", b"close")]


async def serve_connection(conn: Connection, api: Api, peer: str) -> None:
    """Serve one TCP connection from ``peer`` (an address): keep-alive HTTP requests,
    or one WebSocket.

    Backpressure: one request at a time per connection; bodies past the configured
    limit are refused with 413 before they are read in full. A connection counts
    against its client's open connections until it closes: from the moment it is
    accepted, or, from a trusted proxy (which names the client in each request), from
    its first request. A connection past the limit gets 429 and is closed, at once
    when it is counted on accept, before a byte of its request is read.
    Cancellation: the caller's scope; the socket is closed on the way out. A
    connection idle between requests for ``http_idle_s`` is closed; one that takes
    longer than that to send a request gets 408 and is closed.
    Error handling: malformed HTTP gets 400 and the connection closes; a refusal by an
    access rule or a limit gets its status, and closes the connection when it is about
    the connection itself; a failure inside a WebSocket role closes that WebSocket
    with 1011 and touches nothing else.
    """
    config = api.registry.config
    guard = api.guard
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
    slot = guard.connection_slot()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.drain)
        try:
            if not guard.proxies.trusts(peer):
                slot.claim(peer)
            while True:
                request, body = await _read_request(conn, http, config, guard)
                if request is None:
                    break
                headers = _headers(request)
                client = guard.client(peer, headers)
                slot.claim(client)
                if _is_upgrade(request):
                    await _serve_websocket(conn, http, request, headers, api, client)
                    break
                try:
                    await _answer(conn, http, request, headers, body, api, client)
                except Exception:
                    log.exception("%s %s failed", request.method.decode(), _target(request).path)
                    if http.our_state is not h11.SEND_RESPONSE:
                        raise
                    _respond(conn, http, 500, {"success": False, "error": "server error"})
                if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                    break
                http.start_next_cycle()
        except Refusal as refusal:
            if http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                _respond(conn, http, refusal.status, refusal.body(), [*refusal.headers(), *_CLOSE])
        except _Refused as refused:
            if http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                _respond(conn, http, refused.status, {"success": False, "error": refused.text})
        except h11.ProtocolError as exc:
            if http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                _respond(conn, http, 400, {"success": False, "error": f"bad HTTP: {exc}"})
        finally:
            slot.release()
            await conn.flushed(config.close_timeout_s)
            conn.close()
            nursery.cancel_scope.cancel()


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text


async def _read_request(
    conn: Connection, http: h11.Connection, config: Config, guard: Guard
) -> tuple[h11.Request | None, bytes]:
    """The next request and its body; (None, b"") when the client closed, or stayed
    idle ``http_idle_s`` before sending a byte of it. Raises ``Refusal`` (408) when the
    request, once begun, does not arrive whole within ``http_idle_s`` (a slowloris),
    (413) when its body passes ``max_http_body_bytes``. ``http_idle_s`` 0: no limit."""
    max_body = config.max_http_body_bytes
    idle_s = config.http_idle_s or math.inf
    request: h11.Request | None = None
    begun = False
    body = bytearray()
    with trio.move_on_after(idle_s) as waiting:
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = await conn.receive()
                http.receive_data(data)
                if not data and request is None:
                    return None, b""
                if not begun:
                    begun = True
                    waiting.deadline = trio.current_time() + idle_s
                continue
            begun = True
            if isinstance(event, h11.Request):
                request = event
                length = _header(event, b"content-length")
                if length is not None and length.isdigit() and int(length) > max_body:
                    raise _too_large(guard, max_body)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body:
                    raise _too_large(guard, max_body)
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""
    if not begun:
        return None, b""
    raise guard.refuse(
        "http_idle",
        REQUEST_TIMEOUT,
        f"the request did not arrive within {config.http_idle_s:g} s",
    )


def _too_large(guard: Guard, max_body: int) -> Refusal:
    return guard.refuse("body_size", 413, f"request body larger than {max_body} bytes")


async def _answer(
    conn: Connection,
    http: h11.Connection,
    request: h11.Request,
    headers: Mapping[str, str],
    body: bytes,
    api: Api,
    client: str,
) -> None:
    method = request.method.decode()
    target = _target(request)
    path = target.path
    cors = api.guard.origins.cors_headers(headers.get("origin"), headers.get("host"))
    head = method == "HEAD"
    try:
        if method == "POST":
            api.guard.check_origin(headers)
        if method == "OPTIONS":
            _respond(conn, http, 204, None, cors)
            return
        if method in ("GET", "HEAD") and (asset := api.site.find(path)) is not None:
            _send_asset(conn, http, request, asset, head=head)
            return
        if method in ("GET", "HEAD") and path == "/metrics":
            api.guard.check_operator(headers)
            _send_metrics(conn, http, api, head=head)
            return
        query = parse_query(target.query)
        status, reply = await api.handle(Request(method, path, body, query, headers, client))
    except Refusal as refusal:
        _respond(conn, http, refusal.status, refusal.body(), [*cors, *refusal.headers()], head=head)
        return
    extra = list(cors)
    if status == 405:
        extra.append((b"allow", ", ".join(allowed_methods(path) or ()).encode()))
    elif status == 426:
        extra += [(b"upgrade", b"websocket"), (b"connection", b"upgrade")]
    _respond(conn, http, status, reply, extra, head=head)


def _respond(
    conn: Connection,
    http: h11.Connection,
    status: int,
    body: dict[str, Any] | None,
    extra: Headers = (),
    *,
    head: bool = False,
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
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
    conn: Connection,
    http: h11.Connection,
    request: h11.Request,
    headers: Mapping[str, str],
    api: Api,
    client: str,
) -> None:
    target = _target(request)
    key = headers.get("sec-websocket-key")
    if target.path != "/translate":
        raise _Refused(404, "WebSocket endpoint is /translate")
    if key is None or headers.get("sec-websocket-version", "") != "13":
        raise _Refused(400, "not a valid WebSocket upgrade (version 13 and a key needed)")
    api.guard.check_origin(headers)
    conn.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
    )
    trailing, _ = http.trailing_data
    peer = WebSocketPeer(conn, api.registry.config, bytes(trailing))
    query = parse_query(target.query)
    with peer.read_scope:
        try:
            await serve_role(peer, query, api.registry, api.guard, Caller(client, headers))
        except Refusal as refusal:
            refuse(peer, refusal)
            await _until_closed(peer)
        except ProtocolError as exc:
            if exc.close_code == TOO_BIG:
                api.guard.count("message_size")
            peer.fail(exc.message, exc.close_code or SERVER_ERROR)
        except Exception:
            log.exception("WebSocket %s (%s) failed", conn.peer, query.get("role"))
            peer.fail("server error", SERVER_ERROR)
    if peer.close_code is None:
        peer.close(1000, "")


async def _until_closed(peer: WebSocketPeer) -> None:
    """Read and drop what the refused peer still sends until it answers the close
    (within the ``close_timeout_s`` that ``close`` gave it): closing a socket with
    unread data resets it, and the peer could lose the ``error`` telling it why."""
    try:
        async for _ in peer.messages():
            pass
    except ProtocolError:
        return


def _target(request: h11.Request) -> SplitResult:
    # h11 accepts any visible characters as the target; urlsplit does not.
    try:
        return urlsplit(request.target.decode("latin-1"))
    except ValueError:
        raise _Refused(400, "malformed request target") from None


def _headers(request: h11.Request) -> dict[str, str]:
    """Header values by name; repeated headers joined with commas (RFC 9110 5.3)."""
    headers: dict[str, str] = {}
    for key, value in request.headers:
        name = key.decode("latin-1")
        text = value.decode("latin-1")
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    return headers


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None
