"""Server-to-client messages of ``/translate``, serialised once, framed once.

A server-to-client WebSocket frame is unmasked and uncompressed, so the same bytes go
to every listener: a caption is encoded here once per (message, language) and the
broadcaster writes those bytes to each socket.
"""

from __future__ import annotations

import json
import logging
import struct
from typing import Any

import attrs

from babel_actors.clock import now_ms
from babel_actors.events import AUTO_LANGUAGE, Caption, Segment

log = logging.getLogger(__name__)

SERVICE_UNAVAILABLE = 503
"""``error.code`` when the speech engine fails for a while: the session goes on."""

TEXT = 0x1
CLOSE = 0x8



def encode(message: dict[str, Any]) -> bytes:
    """JSON for the wire: compact, UTF-8."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked WebSocket text frame carrying ``payload``."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | TEXT, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | TEXT, 127, size)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked close frame; the reason is cut to fit the 125-byte control limit."""
    # Cut on a character boundary: a reason with half a UTF-8 sequence is invalid, and
    # the client would fail the connection with 1007 instead of seeing ``code``.
    body = struct.pack("!H", code) + reason.encode()[:123].decode(errors="ignore").encode()
    return struct.pack("!BB", 0x80 | CLOSE, len(body)) + body


def message_frame(message: dict[str, Any]) -> bytes:
    """``message`` as a ready-to-send text frame."""
    return text_frame(encode(message))


def caption_message(caption: Caption) -> dict[str, Any]:
    """The ``translation`` message a listener of ``caption.target_lang`` receives."""
    segment = caption.segment
    return {
        "type": "translation",
        "seqId": segment.seq_id,
        "serverTimestamp": now_ms(),
        "timestamp": segment.wall_ms,
        "isPartial": segment.is_partial,
        "originalText": segment.text,
        "translatedText": caption.text,
        "sourceLang": segment.source_lang,
        # Readers of ``auto`` read the transcript in whatever language it was heard.
        "targetLang": (
            segment.source_lang if caption.target_lang == AUTO_LANGUAGE else caption.target_lang
        ),
        "hasTranslation": caption.has_translation,
        **({"via": list(caption.via)} if caption.via else {}),
    }


@attrs.frozen
class Rendered:
    """A caption ready for the wire: built once, written to every reader of its
    language, kept in history for catch-up and published as it is to other nodes."""

    caption: Caption
    """What was said, in which language."""
    payload: bytes
    """The ``translation`` message, JSON (what the bus and the store carry)."""
    frame: bytes
    """``payload`` as one unmasked WebSocket text frame (what sockets get)."""


def render(caption: Caption) -> Rendered:
    """``caption`` as its ``translation`` message, encoded and framed once."""
    payload = encode(caption_message(caption))
    return Rendered(caption, payload, text_frame(payload))


def rendered_from_payload(payload: bytes) -> Rendered | None:
    """A ``translation`` message (another node's rendering) back into a ``Rendered``;
    None, logged, when it is malformed."""
    try:
        message = json.loads(payload)
        segment = Segment(
            seq_id=int(message["seqId"]),
            text=str(message["originalText"]),
            is_partial=bool(message["isPartial"]),
            source_lang=str(message["sourceLang"]),
            recognized_at=0.0,
            wall_ms=int(message["timestamp"]),
        )
        caption = Caption(
            segment,
            str(message["targetLang"]),
            str(message["translatedText"]),
            bool(message["hasTranslation"]),
            via=tuple(str(language) for language in message.get("via", ())),
        )
    except (ValueError, KeyError, TypeError):
        log.warning("dropping a malformed caption")
        return None
    return Rendered(caption, payload, text_frame(payload))


def error_message(message: str, code: int, *, closing: bool = False) -> dict[str, Any]:
    """An ``error``; ``closing`` tells the client the connection ends after it."""
    return {"type": "error", "message": message, "code": code, "closing": closing}


def session_ended_message(message: str, reason: str) -> dict[str, Any]:
    """``session_ended``, with a machine-readable ``reason``."""
    return {"type": "session_ended", "message": message, "reason": reason}
