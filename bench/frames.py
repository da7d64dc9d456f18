"""The WebSocket bits a load generator needs, by hand (RFC 6455): the client's
handshake, masked client frames, and a check of the server's answer. Sans-IO.

Server frames are parsed inline in ``loadgen`` (the hot loop), not here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from typing import Any

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def handshake(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """The upgrade request for ``path``, and the ``Sec-WebSocket-Accept`` to expect."""
    key = base64.b64encode(os.urandom(16))
    request = (
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        ).encode()
        + b"Sec-WebSocket-Key: "
        + key
        + b"\r\n\r\n"
    )
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return request, accept


def check_handshake(head: bytes, accept: bytes) -> str | None:
    """None when ``head`` (the response up to the blank line) accepts the upgrade,
    else what is wrong."""
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        return f"upgrade refused: {status.decode('latin-1')[:80]}"
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            return None if value.strip() == accept else "bad Sec-WebSocket-Accept"
    return "no Sec-WebSocket-Accept"


def client_frame(payload: bytes, opcode: int = TEXT, key: bytes | None = None) -> bytes:
    """One final, masked client frame (clients must mask; RFC 6455 5.3)."""
    key = key if key is not None else os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + key + _mask(payload, key)


def json_frame(message: dict[str, Any]) -> bytes:
    return client_frame(json.dumps(message, separators=(",", ":")).encode(), TEXT)


def close_frame(code: int = 1000) -> bytes:
    return client_frame(struct.pack("!H", code), CLOSE)


def _mask(payload: bytes, key: bytes) -> bytes:
    size = len(payload)
    if not size:
        return b""
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")
