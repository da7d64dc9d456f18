"""HTTP/1.1 on a raw connection (h11, sans-IO): the JSON API and the WebSocket upgrade."""

from __future__ import annotations

import binascii
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit

import h11
import trio

from babel_actors.errors import ProtocolError
from babel_actors.server.connection import Connection
from babel_actors.server.guard import REQUEST_TIMEOUT, Refusal
from babel_actors.server.roles import Caller, refuse, serve_role
from babel_actors.server.routes import WEBSOCKET_PATH, Api, Request, allowed_methods
from babel_actors.server.static import Asset
from babel_actors.server.websocket import WebSocketPeer, accept_key
from babel_actors.wire.closes import SERVER_ERROR, TOO_BIG
from babel_actors.wire.query import parse_query

log = logging.getLogger(__name__)
access_log = logging.getLogger("babel_actors.access")
"""One INFO line per HTTP request or refusal and per WebSocket opened and closed:
client, method, path without its query, status; never a header, a query or a body."""

Headers = Sequence[tuple[bytes, bytes]]

MAX_HEAD_BYTES = 16 * 1024
"""The longest request line and headers h11 buffers before refusing the request."""
LOGGED_PATH_CHARS = 200

_CLOSE = [(b"connection", b"close")]
_ROLES = frozenset({"host", "listener"})
_SESSION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
"""What a session id looks like (a UUID): only that much of the query is logged."""


async def serve_connection(conn: Connection, api: Api, peer: str) -> None:
    """Serve one TCP connection from ``peer`` (an address): keep-alive HTTP requests,
    pipelined or not, or one WebSocket."""
    await _HttpConnection(conn, api, peer).serve()


class _Refused(Exception):
    """A request this layer refuses itself (bad framing, a bad upgrade): answered with
    ``status`` and ``text``, and the connection closes."""

    def __init__(self, status: int, text: str, headers: Headers = ()) -> None:
        self.status = status
        self.text = text
        self.headers = headers


class _HttpConnection:
    """One connection's requests, answered in order.

    Backpressure: a request is read only once the kernel has taken every byte of the
    answers before it, so at most one answer waits in the process however many
    requests a client pipelines without reading; the kernel's socket buffers do the
    pipelining. A client that leaves its answers unread for ``http_idle_s`` is closed.
    Between requests the connection yields (a checkpoint), so a batch pipelined in one
    write is answered a request at a time, taking turns with every other connection.
    Request bodies past ``max_http_body_bytes`` are refused with 413 before they are
    read in full. A connection counts against its client's open connections until it
    closes: from the moment it is accepted, or, from a trusted proxy (which names the
    client in each request), from its first request. A connection past the limit gets
    429 and is closed, at once when it is counted on accept, before a byte of its
    request is read.
    Cancellation: the caller's scope; the socket is closed on the way out. A
    connection idle between requests for ``http_idle_s`` is closed; one that takes
    longer than that to send a request gets 408 and is closed.
    Error handling: framing is strict (RFC 9112): a malformed request, or one framed
    two ways (Content-Length and Transfer-Encoding, or Transfer-Encoding on HTTP/1.0)
    gets 400 and the connection closes, so nothing behind it is read as a request. An
    upgrade that is not a valid WebSocket handshake (RFC 6455 4.2.1) gets 400 (426
    for a version other than 13) and no upgrade. A refusal by an access rule or a
    limit gets its status, and closes the connection when it is about the connection
    itself; a failure inside a WebSocket role closes that WebSocket with 1011 and
    touches nothing else. Every answer is logged on ``babel_actors.access``.
    """

    def __init__(self, conn: Connection, api: Api, peer: str) -> None:
        self.conn = conn
        self.api = api
        self.config = api.registry.config
        self.guard = api.guard
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.client = peer
        self.request: h11.Request | None = None
        """The request being read or answered."""

    async def serve(self) -> None:
        conn, http, guard = self.conn, self.http, self.guard
        peer = self.client
        slot = guard.connection_slot()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.drain)
            try:
                if not guard.proxies.trusts(peer):
                    slot.claim(peer)
                while await self._answers_taken():
                    await trio.lowlevel.checkpoint()
                    self.request = None
                    body = await self._read_request()
                    request = self.request
                    if request is None:
                        break
                    headers = _headers(request)
                    self.client = guard.client(peer, headers)
                    slot.claim(self.client)
                    if _is_upgrade(headers):
                        # The socket outlives the request: hold none of its HTTP state.
                        handshake = [request, headers]
                        del request, headers, body, http
                        await self._serve_websocket(handshake)
                        break
                    await self._answer_safely(request, headers, body)
                    if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                        break
                    http.start_next_cycle()
            except Refusal as refusal:
                self._refuse(refusal.status, refusal.body(), [*refusal.headers(), *_CLOSE])
                self._log(refusal.status, refusal.reason)
            except _Refused as refused:
                answer = {"success": False, "error": refused.text}
                self._refuse(refused.status, answer, [*refused.headers, *_CLOSE])
                self._log(refused.status, refused.text)
            except h11.ProtocolError as exc:
                self._refuse(400, {"success": False, "error": f"bad HTTP: {exc}"}, _CLOSE)
                self._log(400, "bad HTTP")
            finally:
                slot.release()
                await conn.shut(self.config.close_timeout_s)
                nursery.cancel_scope.cancel()

    async def _answers_taken(self) -> bool:
        """Wait until the kernel has taken every answer sent so far; False when the
        client left them unread for ``http_idle_s``."""
        if not self.conn.backlog:
            return True
        with trio.move_on_after(self.config.http_idle_s or math.inf):
            await self.conn.sent()
            return True
        access_log.info(
            "%s closed: its answers went unread for %g s", self.client, self.config.http_idle_s
        )
        return False

    async def _read_request(self) -> bytes:
        """The next request's body; the request itself is ``self.request``, None when
        the client closed, or stayed idle ``http_idle_s`` before sending a byte of it.
        Raises ``Refusal`` (408) when the request, once begun, does not arrive whole
        within ``http_idle_s`` (a slowloris), (413) when its body passes
        ``max_http_body_bytes``; ``_Refused`` (400) when it is framed two ways.
        ``http_idle_s`` 0: no limit."""
        conn, http, config = self.conn, self.http, self.config
        max_body = config.max_http_body_bytes
        idle_s = config.http_idle_s or math.inf
        begun = False
        body = bytearray()
        with trio.move_on_after(idle_s) as waiting:
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    data = await conn.receive()
                    http.receive_data(data)
                    if not data and self.request is None:
                        return b""
                    if not begun:
                        begun = True
                        waiting.deadline = trio.current_time() + idle_s
                    continue
                begun = True
                if isinstance(event, h11.Request):
                    self.request = event
                    _check_framing(event)
                    length = _header(event, b"content-length")
                    if length is not None and length.isdigit() and int(length) > max_body:
                        raise self._too_large(max_body)
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > max_body:
                        raise self._too_large(max_body)
                elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                    return bytes(body)
                elif isinstance(event, h11.ConnectionClosed):
                    self.request = None
                    return b""
        if not begun:
            log.debug("%s closed: idle for %g s", self.client, config.http_idle_s)
            return b""
        raise self.guard.refuse(
            "http_idle",
            REQUEST_TIMEOUT,
            f"the request did not arrive within {config.http_idle_s:g} s",
        )

    def _too_large(self, max_body: int) -> Refusal:
        return self.guard.refuse("body_size", 413, f"request body larger than {max_body} bytes")

    async def _answer_safely(
        self, request: h11.Request, headers: Mapping[str, str], body: bytes
    ) -> None:
        try:
            status, note = await self._answer(request, headers, body)
        except _Refused:
            raise
        except Exception:
            log.exception("%s %s failed", request.method.decode(), _logged_path(request))
            if self.http.our_state is not h11.SEND_RESPONSE:
                raise
            status, note = 500, "server error"
            self._respond(500, {"success": False, "error": "server error"})
        self._log(status, note)

    async def _answer(
        self, request: h11.Request, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, str]:
        """Answer one request; its status, and the refusal's reason if it was one."""
        api = self.api
        method = request.method.decode()
        target = _target(request)
        path = target.path
        cors = api.guard.origins.cors_headers(headers.get("origin"), headers.get("host"))
        head = method == "HEAD"
        try:
            if method == "POST":
                api.guard.check_origin(headers)
            if method == "OPTIONS":
                return self._respond(204, None, cors), ""
            if method in ("GET", "HEAD") and (asset := api.site.find(path)) is not None:
                return self._send_asset(request, asset, head=head), ""
            if method in ("GET", "HEAD") and path == "/metrics":
                api.guard.check_operator(headers)
                return self._send_metrics(head=head), ""
            query = parse_query(target.query)
            status, reply = await api.handle(
                Request(method, path, body, query, headers, self.client)
            )
        except Refusal as refusal:
            extra = [*cors, *refusal.headers()]
            return self._respond(refusal.status, refusal.body(), extra, head=head), refusal.reason
        extra = list(cors)
        if status == 405:
            extra.append((b"allow", ", ".join(allowed_methods(path) or ()).encode()))
        elif status == 426:
            extra += [(b"upgrade", b"websocket"), (b"connection", b"upgrade")]
        return self._respond(status, reply, extra, head=head), ""

    # --- answers: each written whole, in one write ----------------------------------

    def _respond(
        self,
        status: int,
        body: dict[str, Any] | None,
        extra: Headers = (),
        *,
        head: bool = False,
    ) -> int:
        """Send a JSON answer; its status."""
        payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"cache-control", b"no-store"),
            *extra,
        ]
        self._send(status, headers, b"" if head else payload)
        return status

    def _refuse(self, status: int, body: dict[str, Any], extra: Headers) -> None:
        """Answer with a refusal, if an answer can still be sent."""
        if self.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._respond(status, body, extra)

    def _send_asset(self, request: h11.Request, asset: Asset, *, head: bool) -> int:
        """A file of the web client, or 304 when the browser's copy is current."""
        fresh = asset.etag in (_header(request, b"if-none-match") or "")
        headers = asset.headers
        if not fresh:
            headers.append((b"content-length", str(len(asset.body)).encode()))
        status = 304 if fresh else 200
        self._send(status, headers, b"" if fresh or head else asset.body)
        return status

    def _send_metrics(self, *, head: bool) -> int:
        """Prometheus text exposition of this server's metrics."""
        body, content_type = self.api.registry.metrics.exposition()
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        self._send(200, headers, b"" if head else body)
        return 200

    def _send(self, status: int, headers: Headers, body: bytes) -> None:
        http = self.http
        data = http.send(h11.Response(status_code=status, headers=list(headers))) or b""
        if body:
            data += http.send(h11.Data(data=body)) or b""
        data += http.send(h11.EndOfMessage()) or b""
        self.conn.write(data)

    def _log(self, status: int, note: str = "") -> None:
        request = self.request
        if request is None:
            what = "-"
        else:
            what = f"{request.method.decode('ascii', 'replace')} {_logged_path(request)}"
        access_log.info("%s %s %d%s", self.client, what, status, f" ({note})" if note else "")

    # --- the WebSocket ----------------------------------------------------------------

    async def _serve_websocket(self, handshake: list[Any]) -> None:
        """Upgrade and serve the socket; ``handshake`` holds the request and its
        headers, and is emptied: once switched, the connection's HTTP state (the
        request, the h11 connection) is let go, ~3 KB a listener."""
        conn, api = self.conn, self.api
        request, headers = handshake
        handshake.clear()
        target = _target(request)
        if not _is_websocket_path(target.path):
            raise _Refused(404, f"the WebSocket endpoint is {WEBSOCKET_PATH}")
        key = _check_handshake(request, headers)
        api.guard.check_origin(headers)
        conn.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
        )
        trailing, _ = self.http.trailing_data
        del request
        self.request = None
        self.http = _SWITCHED
        peer = WebSocketPeer(conn, self.config, bytes(trailing))
        query = parse_query(target.query)
        role = _role(query)
        session_id = query.get("sessionId", "")
        tag = {"session_id": session_id} if _SESSION_ID.fullmatch(session_id) else {}
        opened = f" (session {session_id})" if tag else ""
        access_log.info("%s WS %s opened%s", self.client, role, opened, extra=tag)
        started = trio.current_time()
        note = ""
        with peer.read_scope:
            try:
                await serve_role(peer, query, api.registry, api.guard, Caller(self.client, headers))
            except Refusal as refusal:
                note = f"refused: {refusal.reason}"
                refuse(peer, refusal)
                await _until_closed(peer)
            except ProtocolError as exc:
                if exc.close_code == TOO_BIG:
                    api.guard.count("message_size")
                note = exc.message[:100]
                peer.fail(exc.message, exc.close_code or SERVER_ERROR)
            except Exception:
                log.exception("WebSocket %s (%s) failed", conn.peer, role)
                note = "server error"
                peer.fail("server error", SERVER_ERROR)
        code = peer.close_code
        if code is None:
            note = "the connection dropped"
        elif peer.remote_close_code is not None and peer.remote_close_code != code:
            note = f"the client's close: {peer.remote_close_code}" + (f"; {note}" if note else "")
        access_log.info(
            "%s WS %s closed %d after %.1f s%s",
            self.client,
            role,
            1006 if code is None else code,
            trio.current_time() - started,
            f" ({note})" if note else "",
            extra=tag,
        )
        if code is None:
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


# --- the rules of RFC 9112 and RFC 6455 --------------------------------------------------


_SWITCHED = h11.Connection(h11.SERVER)
"""What a connection's ``http`` becomes once it switched to WebSocket: one shared,
unused h11 connection in place of its own."""


def _check_framing(request: h11.Request) -> None:
    """Raises ``_Refused`` (400) for a request whose body length could be read two
    ways (RFC 9112 6.1, 6.3): Transfer-Encoding with Content-Length, or on HTTP/1.0.
    A proxy in front that read it the other way would see a second, smuggled request
    where this server sees a body."""
    if _header(request, b"transfer-encoding") is None:
        return
    if _header(request, b"content-length") is not None:
        raise _Refused(400, "Content-Length and Transfer-Encoding together")
    if request.http_version == b"1.0":
        raise _Refused(400, "Transfer-Encoding on HTTP/1.0")


def _is_upgrade(headers: Mapping[str, str]) -> bool:
    return "websocket" in _tokens(headers.get("upgrade"))


def _is_websocket_path(path: str) -> bool:
    """``/translate``, or any path under it: the original accepted those, and its
    client, deployed with a URL that ends in ``/translate``, asks for
    ``/translate/translate``."""
    return path == WEBSOCKET_PATH or path.startswith(WEBSOCKET_PATH + "/")


def _check_handshake(request: h11.Request, headers: Mapping[str, str]) -> str:
    """The ``Sec-WebSocket-Key`` of a valid opening handshake (RFC 6455 4.2.1); raises
    ``_Refused``: 400 for a malformed one, 426 (with the version this server speaks)
    for a version other than 13."""
    if request.method != b"GET":
        raise _Refused(400, "a WebSocket upgrade is a GET")
    if request.http_version == b"1.0":
        raise _Refused(400, "a WebSocket upgrade needs HTTP/1.1")
    if "upgrade" not in _tokens(headers.get("connection")):
        raise _Refused(400, "a WebSocket upgrade needs Connection: Upgrade")
    version = headers.get("sec-websocket-version")
    if version is None:
        raise _Refused(400, "a WebSocket upgrade needs Sec-WebSocket-Version: 13")
    if version.strip() != "13":
        raise _Refused(
            426, "this server speaks WebSocket version 13", [(b"sec-websocket-version", b"13")]
        )
    key = headers.get("sec-websocket-key", "").strip()
    try:
        nonce = binascii.a2b_base64(key, strict_mode=True)
    except binascii.Error:
        nonce = b""
    if len(nonce) != 16:
        raise _Refused(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return key


def _tokens(value: str | None) -> set[str]:
    """A comma-separated header's tokens, in lower case."""
    return {token.strip().lower() for token in (value or "").split(",")}


def _role(query: Mapping[str, str]) -> str:
    """The role the query asks for, as the log names it (never the client's own text)."""
    role = query.get("role")
    if role in _ROLES:
        return role
    return "solo" if role in (None, "", "solo") else "unknown-role"


def _logged_path(request: h11.Request) -> str:
    """The target's path, without its query (which may carry a token or a key)."""
    path = request.target.split(b"?", 1)[0].decode("latin-1")
    return path if len(path) <= LOGGED_PATH_CHARS else path[:LOGGED_PATH_CHARS] + "..."


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
