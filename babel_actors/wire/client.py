"""Client-to-server messages of ``/translate``: JSON text in, typed events out.

Sans-IO: no sockets, no trio. Every malformed input raises ``ProtocolError`` with a
message a client developer can act on.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

import attrs

from babel_actors.errors import ProtocolError
from babel_actors.glossary import Glossary, parse_glossary

BAD_REQUEST = 400
"""``error.code`` for a message that is refused while the connection goes on."""

_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


@attrs.frozen
class Init:
    """``init``: the languages spoken and wanted, and the PCM rate that will follow."""

    source_lang: str | None
    """Language the host speaks, when given."""
    target_lang: str | None
    """Language a solo user reads, when given."""
    sample_rate: int | None
    """Rate of the client's PCM, when given."""
    glossary: Glossary | None = None
    """The session's glossary, replacing the previous one, when given."""


@attrs.frozen
class Audio:
    """``audio`` (base64 in JSON) or a binary frame: 16-bit little-endian mono PCM."""

    pcm: bytes
    """The samples, an even number of bytes."""


@attrs.frozen
class AudioEnd:
    """``audio_end``: the speaker stopped; pending speech should become a final."""


@attrs.frozen
class Ping:
    """``ping``: answered at once with a ``pong`` carrying the same timestamp."""

    timestamp: int | float | None
    """Echoed back untouched; None when the ping had none. Always a finite number
    otherwise, since the pong carries it and must be valid JSON (no NaN)."""


@attrs.frozen
class ChangeLanguage:
    """``change_language``: a listener switches the language it reads."""

    target_lang: str
    """The new language."""


ClientMessage = Init | Audio | AudioEnd | Ping | ChangeLanguage


def parse_text(text: str, *, max_sample_rate: int) -> ClientMessage:
    """Parse one text message. Raises ``ProtocolError`` (code 400) on anything wrong."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        # ValueError, not only JSONDecodeError: an integer literal past Python's
        # int-digit limit is valid JSON that json.loads refuses with a plain ValueError.
        raise ProtocolError("malformed JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    kind = data.get("type")
    if kind == "audio":
        return Audio(decode_base64_pcm(data.get("audioData")))
    if kind == "init":
        rate = data.get("sampleRate")
        if rate is not None and not (
            isinstance(rate, int) and not isinstance(rate, bool) and 8000 <= rate <= max_sample_rate
        ):
            raise ProtocolError(f"sampleRate must be an integer from 8000 to {max_sample_rate}")
        return Init(
            source_lang=_language(data, "sourceLang", required=False),
            target_lang=_language(data, "targetLang", required=False),
            sample_rate=rate,
            glossary=_glossary(data.get("glossary")),
        )
    if kind == "audio_end":
        return AudioEnd()
    if kind == "ping":
        stamp = data.get("timestamp")
        if stamp is not None and not _is_finite_number(stamp):
            raise ProtocolError("ping timestamp must be a number")
        return Ping(stamp)
    if kind == "change_language":
        lang = _language(data, "targetLang", required=True)
        assert lang is not None
        return ChangeLanguage(lang)
    if kind is None:
        raise ProtocolError("a message needs a string 'type'")
    raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")


def parse_binary(data: bytes) -> Audio:
    """A binary frame is raw PCM; it must hold whole 16-bit samples."""
    if len(data) % 2:
        raise ProtocolError("binary audio must hold whole 16-bit samples (even length)")
    return Audio(bytes(data))


def decode_base64_pcm(value: object) -> bytes:
    """Decode ``audioData``: strict base64 of 16-bit PCM, so an even number of bytes."""
    if not isinstance(value, str) or not value:
        raise ProtocolError("audio needs 'audioData', a non-empty base64 string")
    try:
        pcm = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("audioData is not valid base64") from None
    if len(pcm) % 2:
        raise ProtocolError("audioData must hold whole 16-bit samples (even length)")
    return pcm


def encode_base64_pcm(pcm: bytes) -> str:
    """The inverse of ``decode_base64_pcm``, for clients, tests and the bench."""
    return base64.b64encode(pcm).decode("ascii")


def is_language(value: object) -> bool:
    """Whether ``value`` looks like a language tag (``es``, ``pt-BR``)."""
    return isinstance(value, str) and _LANGUAGE.match(value) is not None


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _glossary(value: object) -> Glossary | None:
    if value is None:
        return None
    try:
        return parse_glossary(value)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def _language(data: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not is_language(value):
        raise ProtocolError(f"{key} must be a language code such as 'es'")
    assert isinstance(value, str)
    return value
