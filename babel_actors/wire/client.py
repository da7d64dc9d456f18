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
from typing import Any, TypeGuard

import attrs

from babel_actors.errors import ProtocolError
from babel_actors.events import AUTO_LANGUAGE
from babel_actors.glossary import Glossary, parse_glossary

BAD_REQUEST = 400
"""``error.code`` for a message that is refused while the connection goes on."""

_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")


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
    """Parse one text message. Raises ``ProtocolError`` (code 400) on anything wrong.

    A field that is present must be valid: ``null`` is not the same as absent, and
    the schema's informational fields are checked too, so what passes here is exactly
    what validates against ``protocols/schemas``."""
    try:
        data = loads_json(text)
    except (ValueError, RecursionError):
        # ValueError, not only JSONDecodeError: an integer literal past Python's
        # int-digit limit is valid JSON that json.loads refuses with a plain ValueError.
        raise ProtocolError("malformed JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    kind = data.get("type")
    if kind == "audio":
        _check_informational(data)
        return Audio(decode_base64_pcm(data.get("audioData")))
    if kind == "init":
        return Init(
            source_lang=_language(data, "sourceLang", required=False, auto=True),
            target_lang=_language(data, "targetLang", required=False),
            sample_rate=_sample_rate(data, max_sample_rate),
            glossary=_glossary(data),
        )
    if kind == "audio_end":
        return AudioEnd()
    if kind == "ping":
        stamp = data.get("timestamp")
        if "timestamp" in data and not _is_number(stamp):
            raise ProtocolError("ping timestamp must be a number")
        return Ping(stamp)
    if kind == "change_language":
        lang = _language(data, "targetLang", required=True)
        assert lang is not None
        return ChangeLanguage(lang)
    if not isinstance(kind, str):
        raise ProtocolError("a message needs a string 'type'")
    raise ProtocolError(f"unknown message type {kind[:40]!r}")


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


def is_language(value: object) -> TypeGuard[str]:
    """Whether ``value`` looks like a language tag (``es``, ``pt-BR``, ``zh-Hant-TW``)."""
    return isinstance(value, str) and _LANGUAGE.fullmatch(value) is not None


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` for input from the network: NaN and Infinity, which Python reads
    by default, are not JSON and raise ``ValueError`` like any other malformed text."""
    return json.loads(text, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _check_informational(data: dict[str, Any]) -> None:
    """The audio fields the server does not use must still be what the schema says."""
    if "streaming" in data and not isinstance(data["streaming"], bool):
        raise ProtocolError("audio 'streaming' must be true or false")
    for key in ("chunkIndex", "startMs", "endMs", "clientTimestamp"):
        if key in data:
            value = data[key]
            whole = key == "chunkIndex"
            if not _is_number(value) or value < 0 or (whole and not _is_whole(value)):
                kind = "integer" if whole else "number"
                raise ProtocolError(f"audio {key!r} must be a non-negative {kind}")


def _is_whole(value: int | float) -> bool:
    # JSON Schema's integer is a number with no fractional part: 24000.0 is one.
    return isinstance(value, int) or value.is_integer()


def _sample_rate(data: dict[str, Any], max_sample_rate: int) -> int | None:
    if "sampleRate" not in data:
        return None
    rate = data["sampleRate"]
    if not (_is_number(rate) and _is_whole(rate) and 8000 <= rate <= max_sample_rate):
        raise ProtocolError(f"sampleRate must be an integer from 8000 to {max_sample_rate}")
    return int(rate)


def _glossary(data: dict[str, Any]) -> Glossary | None:
    if "glossary" not in data:
        return None
    try:
        return parse_glossary(data["glossary"])
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def _language(data: dict[str, Any], key: str, *, required: bool, auto: bool = False) -> str | None:
    if key not in data and not required:
        return None
    value = data.get(key)
    if auto and value == AUTO_LANGUAGE:
        return AUTO_LANGUAGE
    if not is_language(value):
        raise ProtocolError(f"{key} must be a language code such as 'es'")
    return value
