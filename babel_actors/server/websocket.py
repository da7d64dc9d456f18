"""A WebSocket connection on ``/translate``: the frame layer and the three roles.

Inbound frames are parsed by wsproto (sans-IO); outbound frames are built once by
``wire.server`` and written through the connection's non-blocking writer.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import trio
import wsproto.events as ws_events
from wsproto import ConnectionType
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from babel_actors.audience import Role
from babel_actors.config import Config
from babel_actors.counters import MemberCounters
from babel_actors.errors import ProtocolError
from babel_actors.events import Caption
from babel_actors.server.connection import Connection
from babel_actors.wire.closes import (
    BAD_DATA,
    NORMAL,
    TOO_BIG,
    TRY_AGAIN_LATER,
)
from babel_actors.wire.server import close_frame, error_message, message_frame

log = logging.getLogger(__name__)

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
EVENTS_PER_STEP = 64
"""Frames handled between two checkpoints: one read (64 KB) can hold ~10,000 tiny
frames, and handling them all at once would stall every session meanwhile."""
FRAME_COST = 6
"""Bytes each frame of a message counts against ``max_message_bytes`` besides its
payload: the smallest header a client frame has (2 bytes and a 4-byte mask)."""


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455)."""
    digest = hashlib.sha1((key + _GUID).encode()).digest()
    return base64.b64encode(digest).decode()


class WebSocketPeer:
    """One client on ``/translate``; a session ``Member`` once it has a role.

    Backpressure: writes never block (``Connection.write``); partials coalesce in the
    backlog, and a peer that owes more than the backlog limit is told it is too slow
    and closed with 1008 (it can resume with ``lastSeq``).
    Cancellation: ``close`` sends the close frame, then gives the peer
    ``close_timeout_s`` to answer before the read loop is cancelled.
    Error handling: malformed input raises ``ProtocolError`` out of ``messages``; the
    role decides whether to answer with ``error`` or to close.
    Counts: once it joins a session (``count_into``), its messages in by kind, its
    coalesced partials and its being closed as too slow.
    """

    def __init__(self, conn: Connection, config: Config, trailing: bytes) -> None:
        self.conn = conn
        self.config = config
        self.role = Role.LISTENER
        self.target_lang = config.default_source_lang
        self.close_code: int | None = None
        self.remote_close_code: int | None = None
        self.read_scope = trio.CancelScope()
        self._ws = WsConnection(ConnectionType.SERVER, trailing_data=trailing)
        self._counters: MemberCounters | None = None
        conn.on_overflow = self._too_slow

    # --- Member ----------------------------------------------------------------

    def send_caption(self, caption: Caption, frame: bytes) -> None:
        self.conn.write(frame, droppable=caption.segment.is_partial)

    def send_notice(self, message: dict[str, Any], frame: bytes) -> None:
        self.conn.write(frame)

    def close(self, code: int, reason: str, *, last_words: bytes = b"") -> None:
        """Send ``last_words`` (a closing ``error``) and the close frame: after what is
        queued for a normal close, ahead of it (dropping it) for any other."""
        if self.close_code is not None:
            return
        self.close_code = code
        frames = last_words + close_frame(code, reason)
        if code == NORMAL:
            self.conn.write(frames)
        else:
            self.conn.write_urgent(frames)
        self.read_scope.deadline = min(
            self.read_scope.deadline, trio.current_time() + self.config.close_timeout_s
        )

    def unsent_bytes(self) -> int:
        return self.conn.backlog_bytes

    def count_into(self, counters: MemberCounters | None) -> None:
        self._counters = counters
        if counters is not None:
            self.conn.coalesced = counters.coalesced

    # --- sending ---------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        self.conn.write(message_frame(message))

    def error(self, text: str, code: int = 400) -> None:
        """Refuse one message; the connection goes on."""
        self.send(error_message(text, code))

    def fail(self, text: str, code: int) -> None:
        """Tell the client why, then close with ``code``."""
        if self.close_code is None:
            last_words = message_frame(error_message(text, code, closing=True))
            self.close(code, text[:100], last_words=last_words)

    def _too_slow(self) -> None:
        if self._counters is not None:
            self._counters.too_slow.inc()
        message = error_message(
            "you fell too far behind; reconnect with lastSeq to resume",
            TRY_AGAIN_LATER,
            closing=True,
        )
        self.close(TRY_AGAIN_LATER, "too slow", last_words=message_frame(message))

    # --- receiving -------------------------------------------------------------

    async def messages(self) -> AsyncIterator[str | bytes]:
        """Complete text and binary messages, until the peer closes or is closed.

        Raises ``ProtocolError`` with close code 1009 for a message over the limit
        (``max_message_bytes``, frames counted) or in too many frames, 1007 for bad
        UTF-8 and 1002 for broken framing; answers pings and close frames itself,
        until it has begun to close (pings then go unanswered).
        """
        parts: list[str | bytes] = []
        size = frames = 0
        limit = self.config.max_message_bytes
        most_frames = self.config.max_message_fragments
        while True:
            for count, event in enumerate(self._events(), 1):
                if count % EVENTS_PER_STEP == 0:
                    await trio.lowlevel.checkpoint()
                if isinstance(event, ws_events.Message):
                    size += _byte_length(event.data)
                    if event.frame_finished:
                        frames += 1
                        size += FRAME_COST
                    if size > limit + FRAME_COST:
                        raise ProtocolError(
                            f"message larger than {limit} bytes", close_code=TOO_BIG
                        )
                    if frames > most_frames:
                        raise ProtocolError(
                            f"message in more than {most_frames} frames", close_code=TOO_BIG
                        )
                    if event.data:
                        parts.append(event.data)
                    if event.message_finished:
                        if isinstance(event.data, str):
                            message: str | bytes = "".join(parts)  # type: ignore[arg-type]
                        else:
                            message = b"".join(parts)  # type: ignore[arg-type]
                        parts, size, frames = [], 0, 0
                        yield message
                elif isinstance(event, ws_events.Ping):
                    if self.close_code is None:
                        self.conn.write(self._ws.send(event.response()))
                elif isinstance(event, ws_events.CloseConnection):
                    if self._ws.state is ConnectionState.OPEN:
                        # wsproto reports data it cannot parse (bad UTF-8, bad framing)
                        # as a close event without a close frame from the peer.
                        raise ProtocolError(
                            f"bad WebSocket data: {event.reason}", close_code=event.code
                        )
                    self.remote_close_code = event.code
                    if self.close_code is None:
                        self.close_code = event.code
                        self.conn.write(self._ws.send(event.response()))
                    return
            data = await self.conn.receive()
            if not data:
                return
            self._ws.receive_data(data)

    def count_in(self, *, audio: bool) -> None:
        """Count one message from the client, once its reader knows what it was."""
        counters = self._counters
        if counters is not None:
            (counters.audio_in if audio else counters.control_in).inc()

    def _events(self) -> Iterator[ws_events.Event]:
        # One at a time, so each event is answered in the state it left: a ping that
        # came before the peer's close frame gets its pong.
        try:
            yield from self._ws.events()
        except (RemoteProtocolError, LocalProtocolError) as exc:
            raise ProtocolError(f"bad WebSocket data: {exc}", close_code=BAD_DATA) from None


def _byte_length(data: str | bytes) -> int:
    """Size on the wire: the limit is in bytes, and a text message's characters may
    take up to four bytes each in UTF-8 (base64 audio is ASCII, so the common case
    costs no encoding)."""
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))
