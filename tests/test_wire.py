"""The sans-IO codec of ``/translate``: client messages in, server frames out."""

from __future__ import annotations

import json
import math
import string
from typing import Any

import pytest
import wsproto.events as ws_events
from hypothesis import example, given
from hypothesis import strategies as st
from protocol_schemas import validate_server_message
from wsproto import ConnectionType
from wsproto.connection import Connection as WsConnection

from babel_actors.errors import ProtocolError
from babel_actors.server.websocket import accept_key
from babel_actors.wire.client import (
    Audio,
    AudioEnd,
    ChangeLanguage,
    Init,
    Ping,
    decode_base64_pcm,
    encode_base64_pcm,
    parse_binary,
    parse_text,
)
from babel_actors.wire.query import last_seq, parse_query, socket_query_problem
from babel_actors.wire.server import (
    close_frame,
    encode,
    error_message,
    message_frame,
    session_ended_message,
    text_frame,
)

MAX_RATE = 96000
_PCM = st.binary(min_size=2, max_size=4096).map(lambda b: b[: len(b) // 2 * 2])
_ODD = st.binary(min_size=1, max_size=4095).map(lambda b: b if len(b) % 2 else b[:-1])
_B64_ALPHABET = set(string.ascii_letters + string.digits + "+/=")

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_TYPES = st.sampled_from(["init", "audio", "audio_end", "ping", "change_language", "", "Audio"])
_FIELDS = ["sourceLang", "targetLang", "sampleRate", "audioData", "timestamp", "streaming"]
_MESSAGES = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    _TYPES | _JSON,
    st.dictionaries(st.sampled_from(_FIELDS), _JSON | st.sampled_from(["es", "pt-BR", "AAA="])),
)


def parses_or_refuses(text: str) -> object:
    """``parse_text``'s result, or None when it refused with ``ProtocolError``."""
    try:
        message = parse_text(text, max_sample_rate=MAX_RATE)
    except ProtocolError as exc:
        assert exc.message and exc.close_code is None
        return None
    assert isinstance(message, Init | Audio | AudioEnd | Ping | ChangeLanguage)
    return message


# --- base64 PCM ------------------------------------------------------------------


@given(_PCM)
def test_base64_pcm_round_trips(pcm: bytes) -> None:
    encoded = encode_base64_pcm(pcm)
    assert decode_base64_pcm(encoded) == pcm
    assert parse_text(
        json.dumps({"type": "audio", "audioData": encoded}), max_sample_rate=MAX_RATE
    ) == Audio(pcm)


@given(_ODD)
def test_odd_length_pcm_is_refused(pcm: bytes) -> None:
    with pytest.raises(ProtocolError, match="even length"):
        decode_base64_pcm(encode_base64_pcm(pcm))
    with pytest.raises(ProtocolError, match="even length"):
        parse_binary(pcm)


@given(_PCM)
def test_even_binary_frames_are_audio(pcm: bytes) -> None:
    assert parse_binary(pcm) == Audio(pcm)


@given(_PCM, st.data())
def test_a_stray_character_makes_base64_invalid(pcm: bytes, data: st.DataObject) -> None:
    encoded = encode_base64_pcm(pcm)
    stray = data.draw(st.characters().filter(lambda c: c not in _B64_ALPHABET))
    at = data.draw(st.integers(0, len(encoded)))
    with pytest.raises(ProtocolError, match="not valid base64"):
        decode_base64_pcm(encoded[:at] + stray + encoded[at:])


@pytest.mark.parametrize("value", ["AAA", "A", "AA=A", "====", "AAAAA", "QUJD\n"])
def test_broken_padding_is_invalid_base64(value: str) -> None:
    with pytest.raises(ProtocolError, match="not valid base64"):
        decode_base64_pcm(value)


@given(st.text(max_size=40))
def test_any_text_decodes_to_even_pcm_or_is_refused(text: str) -> None:
    try:
        pcm = decode_base64_pcm(text)
    except ProtocolError:
        return
    assert pcm and len(pcm) % 2 == 0


@given(_JSON.filter(lambda v: not isinstance(v, str)) | st.binary())
@example("")
def test_audio_data_must_be_a_nonempty_string(value: Any) -> None:
    with pytest.raises(ProtocolError, match="non-empty base64 string"):
        decode_base64_pcm(value)


# --- parse_text ------------------------------------------------------------------


@given(st.text())
@example('{"type": "ping", "timestamp": ' + "1" * 5000 + "}")
@example("[" * 100_000)
@example('{"type": "audio", "audioData": "' + "A" * 4001 + '"}')
def test_any_text_parses_or_is_refused(text: str) -> None:
    parses_or_refuses(text)


@given(_JSON)
def test_any_json_value_parses_or_is_refused(value: Any) -> None:
    parsed = parses_or_refuses(json.dumps(value))
    if not isinstance(value, dict):
        assert parsed is None


@given(_MESSAGES)
@example({"type": "ping", "timestamp": float("nan")})
@example({"type": "ping", "timestamp": float("inf")})
@example({"type": "ping", "timestamp": "\ud800"})
@example({"type": "ping", "timestamp": 10**400})
@example({"type": "ping", "timestamp": False})
@example({"type": ["nested"] * 50})
@example({"type": "init", "sampleRate": True})
@example({"type": "init", "sampleRate": 8000.0})
def test_messages_with_any_fields_parse_or_are_refused(message: dict[str, Any]) -> None:
    parsed = parses_or_refuses(json.dumps(message))
    if isinstance(parsed, Ping):
        # The pong echoes it: it has to be a number the contract allows.
        stamp = parsed.timestamp
        assert stamp is None or not isinstance(stamp, bool)
        assert stamp is None or isinstance(stamp, int) or math.isfinite(stamp)
    if isinstance(parsed, Init) and parsed.sample_rate is not None:
        assert isinstance(parsed.sample_rate, int) and 8000 <= parsed.sample_rate <= MAX_RATE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type": "audio_end"}', AudioEnd()),
        ('{"type": "ping", "timestamp": 1234}', Ping(1234)),
        ('{"type": "ping"}', Ping(None)),
        ('{"type": "change_language", "targetLang": "pt-BR"}', ChangeLanguage("pt-BR")),
        (
            '{"type": "init", "sourceLang": "en", "targetLang": "es", "sampleRate": 48000}',
            Init("en", "es", 48000),
        ),
        ('{"type": "init"}', Init(None, None, None)),
        ('{"type": "init", "sampleRate": 24000.0}', Init(None, None, 24000)),
        ('{"type": "change_language", "targetLang": "zh-Hant-TW"}', ChangeLanguage("zh-Hant-TW")),
    ],
)
def test_well_formed_messages(text: str, expected: object) -> None:
    assert parse_text(text, max_sample_rate=MAX_RATE) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "JSON object"),
        ('{"audioData": "AAAA"}', "'type'"),
        ('{"type": "shout"}', "unknown message type 'shout'"),
        ('{"type": "init", "sampleRate": "x"}', "sampleRate"),
        ('{"type": "init", "sampleRate": 96001}', "sampleRate"),
        ('{"type": "init", "targetLang": 5}', "targetLang"),
        ('{"type": "change_language"}', "targetLang"),
        ('{"type": "ping", "timestamp": "soon"}', "timestamp"),
        # Present is not absent: null is a wrong value, as the schemas say.
        ('{"type": "init", "sourceLang": null}', "sourceLang"),
        ('{"type": "init", "sampleRate": null}', "sampleRate"),
        ('{"type": "init", "glossary": null}', "glossary must be an object"),
        ('{"type": "ping", "timestamp": null}', "timestamp"),
        ('{"type": "init", "sampleRate": 24000.5}', "sampleRate"),
        ('{"type": "change_language", "targetLang": "es\\n"}', "targetLang"),
        # NaN and Infinity are not JSON, though Python reads them.
        ('{"type": "ping", "timestamp": NaN}', "malformed JSON"),
        ('{"type": "ping", "timestamp": -Infinity}', "malformed JSON"),
        # The audio fields the server ignores must still be what the schema says.
        ('{"type": "audio", "audioData": "AAAA", "chunkIndex": -1}', "chunkIndex"),
        ('{"type": "audio", "audioData": "AAAA", "chunkIndex": 1.5}', "chunkIndex"),
        ('{"type": "audio", "audioData": "AAAA", "streaming": "yes"}', "streaming"),
        ('{"type": "audio", "audioData": "AAAA", "clientTimestamp": "now"}', "clientTimestamp"),
    ],
)
def test_malformed_messages_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        parse_text(text, max_sample_rate=MAX_RATE)


# --- server frames -----------------------------------------------------------------


def client_events(frames: bytes, chunks: list[int] | None = None) -> list[ws_events.Event]:
    """What a WebSocket client makes of ``frames`` from the server, fed in ``chunks``."""
    client = WsConnection(ConnectionType.CLIENT)
    events: list[ws_events.Event] = []
    at = 0
    for size in [*(chunks or []), len(frames)]:
        client.receive_data(frames[at : at + size])
        at += size
        events.extend(client.events())
    return events


def client_texts(events: list[ws_events.Event]) -> list[str]:
    texts, parts = [], []
    for event in events:
        assert isinstance(event, ws_events.TextMessage), event
        parts.append(event.data)
        if event.message_finished:
            texts.append("".join(parts))
            parts = []
    assert not parts
    return texts


def fit(text: str, size: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 takes at most ``size`` bytes."""
    while len(text.encode()) > size:
        text = text[:-1]
    return text


def payload_of_size(prefix: str, size: int) -> str:
    """``prefix`` cut to whole characters and padded with ASCII to ``size`` UTF-8 bytes."""
    prefix = fit(prefix, size)
    return prefix + "a" * (size - len(prefix.encode()))


_SIZES = st.sampled_from([0, 1, 124, 125, 126, 127, 65535, 65536, 65537]) | st.integers(0, 70000)


@given(st.lists(st.tuples(st.text(max_size=50), _SIZES), min_size=1, max_size=3), st.data())
def test_text_frames_parse_back_in_a_client(
    payloads: list[tuple[str, int]], data: st.DataObject
) -> None:
    texts = [payload_of_size(prefix, size) for prefix, size in payloads]
    frames = b"".join(text_frame(t.encode()) for t in texts)
    chunks = data.draw(st.lists(st.integers(1, len(frames) or 1), max_size=5))
    assert client_texts(client_events(frames, chunks)) == texts


@pytest.mark.parametrize("size", [125, 126, 65535, 65536])
def test_text_frame_length_encodings(size: int) -> None:
    frame = text_frame(b"x" * size)
    header = len(frame) - size
    assert header == {125: 2, 126: 4, 65535: 4, 65536: 10}[size]
    assert client_texts(client_events(frame)) == ["x" * size]


_CLOSE_CODES = st.sampled_from(
    [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011]
) | st.integers(3000, 4999)


@given(_CLOSE_CODES, st.text(max_size=140))
@example(1008, "unknown role '" + "\U0001f600" * 20 + "'; use host, listener or none (solo)")
@example(1008, "é" * 62)
def test_close_frames_parse_back_in_a_client(code: int, reason: str) -> None:
    (event,) = client_events(close_frame(code, reason))
    assert isinstance(event, ws_events.CloseConnection)
    assert event.code == code
    assert event.reason == fit(reason, 123)


@given(_MESSAGES)
def test_message_frames_carry_compact_json(message: dict[str, Any]) -> None:
    (text,) = client_texts(client_events(message_frame(message)))
    assert json.loads(text) == message and encode(message) == text.encode()


@pytest.mark.parametrize(
    "message",
    [
        error_message("unknown message type 'shout'", 400),
        error_message("message larger than 65536 bytes", 1009, closing=True),
        session_ended_message("The host ended the session.", "host_ended"),
    ],
)
def test_notices_match_the_contract(message: dict[str, Any]) -> None:
    (text,) = client_texts(client_events(message_frame(message)))
    validate_server_message(json.loads(text))


def test_accept_key_matches_rfc_6455_example() -> None:
    # RFC 6455, section 1.3.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# --- the /translate query ------------------------------------------------------------


@pytest.mark.parametrize("text", ["-1", "0", "7", "123456789"])
def test_last_seq_takes_ascii_integers_from_minus_one(text: str) -> None:
    assert last_seq(text) == int(text)


@pytest.mark.parametrize("text", ["1_0", "+1", " 1", "1 ", "-2", "01", "\u0661", "1.0", "0x1"])
def test_last_seq_refuses_what_int_would_take_or_the_contract_does_not(text: str) -> None:
    with pytest.raises(ValueError):
        last_seq(text)
    assert socket_query_problem({"lastSeq": text}) == "malformed query parameter lastSeq"


def test_an_absent_or_empty_last_seq_means_no_resume() -> None:
    assert last_seq(None) is None and last_seq("") is None


def test_the_query_keeps_blank_values_and_the_last_repeat() -> None:
    assert parse_query("role=listener&targetLang=&role=host") == {
        "role": "host",
        "targetLang": "",
    }
