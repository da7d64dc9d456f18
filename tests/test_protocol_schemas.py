"""The wire contract in protocols/ is well formed, and the helper enforces it."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import protocol_schemas as ps  # tests/ is on sys.path (pytest's rootdir insertion)
import pytest
from jsonschema import Draft202012Validator

SID = "5f0c8a4e-2b1d-4c3e-9f7a-1d2e3f4a5b6c"

EXPECTED_MESSAGES = {
    ("client", "init"),
    ("client", "audio"),
    ("client", "audio_end"),
    ("client", "ping"),
    ("client", "change_language"),
    ("server", "session_ready"),
    ("server", "session_joined"),
    ("server", "translation"),
    ("server", "session_stats"),
    ("server", "session_ended"),
    ("server", "error"),
    ("server", "pong"),
    ("server", "language_changed"),
}


# ------------------------------------------------------------------ the documents


def test_every_expected_message_has_a_schema() -> None:
    assert set(ps.message_schemas()) == EXPECTED_MESSAGES


@pytest.mark.parametrize("key", sorted(EXPECTED_MESSAGES), ids=lambda k: ".".join(k))
def test_message_schema_is_valid_2020_12(key: tuple[str, str]) -> None:
    direction, msg_type = key
    schema = ps.message_schemas()[key]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{direction}.{msg_type}.json")
    assert schema["properties"]["type"] == {
        "const": msg_type,
        "description": "Message discriminator.",
    }
    assert "type" in schema["required"]
    # Server messages are closed so tests catch drift; clients may send extras.
    assert schema["additionalProperties"] is (direction == "client")
    for ref_at, ref in ps.iter_refs(schema):
        assert ref.startswith("#/$defs/"), (ref_at, ref)
        assert ref.removeprefix("#/$defs/") in schema["$defs"], (ref_at, ref)


@pytest.mark.parametrize("key", sorted(EXPECTED_MESSAGES), ids=lambda k: ".".join(k))
def test_message_schema_examples_validate(key: tuple[str, str]) -> None:
    schema = ps.message_schemas()[key]
    assert schema["examples"], "each schema carries at least one example"
    validate = ps.validate_client_message if key[0] == "client" else ps.validate_server_message
    for example in schema["examples"]:
        validate(example)


def test_openapi_parses() -> None:
    doc = ps.load_openapi()
    assert re.fullmatch(r"3\.1\.\d+", doc["openapi"])
    assert doc["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(doc["paths"]) == {
        "/session/start",
        "/session/join",
        "/session/{code}/info",
        "/sessions",
        "/health",
        "/stats",
        "/stats/reset",
        "/metrics",
        "/translate",
    }
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status in operation["responses"]:
                assert isinstance(status, str), (path, method, status)


def test_every_openapi_ref_resolves() -> None:
    refs = list(ps.iter_refs(ps.load_openapi()))
    assert len(refs) > 20
    for where, ref in refs:
        assert ref.startswith("#/"), (where, ref)
        assert ps.resolve_openapi_ref(ref) is not None, (where, ref)


def test_openapi_component_schemas_are_valid_2020_12() -> None:
    schemas = ps.load_openapi()["components"]["schemas"]
    assert schemas
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)


def test_websocket_message_list_matches_schema_files() -> None:
    listed = ps.load_openapi()["paths"]["/translate"]["get"]["x-websocket-messages"]
    for direction in ps.DIRECTIONS:
        names = {p.removeprefix("schemas/").removesuffix(".json") for p in listed[direction]}
        assert names == {f"{direction}.{t}" for t in ps.message_types(direction)}
        for p in listed[direction]:
            assert (ps.PROTOCOLS_DIR / p).is_file()


def test_openapi_examples_validate() -> None:
    doc = ps.load_openapi()
    checked = 0
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = ps.resolve_openapi_ref(response["$ref"])
                media = (response.get("content") or {}).get("application/json")
                if media and "example" in media:
                    ps.validate_http(path, method, int(status), media["example"])
                    checked += 1
            request = (operation.get("requestBody") or {}).get("content", {})
            if "example" in request.get("application/json", {}):
                ps.validate_http_request(path, method, request["application/json"]["example"])
                checked += 1
    assert checked >= 10


# ------------------------------------------------- the reference's examples, HTTP


def test_reference_http_examples_validate() -> None:
    token = "q3Jx0mB7c1VtZ2xv8pYkR4sN6aWfHdLe"
    ps.validate_http_request("/session/start", "POST", None)
    ps.validate_http(
        "/session/start",
        "POST",
        200,
        {
            "success": True,
            "sessionId": SID,
            "sessionCode": "ABC123",
            "hostToken": token,
            "wsUrl": f"/translate?role=host&sessionId={SID}&token={token}",
        },
    )
    ps.validate_http("/session/start", "post", 500, {"success": False, "error": "boom"})
    ps.validate_http_request(
        "/session/join",
        "POST",
        {"sessionCode": "ABC123", "targetLang": "es", "userName": "Ana"},
    )
    ps.validate_http(
        "/session/join",
        "POST",
        200,
        {
            "success": True,
            "sessionId": SID,
            "sessionCode": "ABC123",
            "sourceLang": "en",
            "targetLang": "es",
            "wsUrl": f"/translate?role=listener&sessionId={SID}&targetLang=es&userName=Ana",
        },
    )
    for status in (400, 404, 413):
        ps.validate_http("/session/join", "POST", status, {"success": False, "error": "no"})
    session = {
        "sessionId": SID,
        "sessionCode": "ABC123",
        "isActive": True,
        "listenerCount": 10,
        "languages": ["es"],
        "languageCounts": {"es": 10},
        "createdAt": 1730000000000,
        "lastActivity": 1730000005000,
        "duration": 5000,
    }
    ps.validate_http("/session/{code}/info", "GET", 200, {"success": True, "session": session})
    ps.validate_http("/session/{code}/info", "GET", 404, {"success": False, "error": "nope"})
    ps.validate_http("/sessions", "GET", 200, {"success": True, "sessions": [session]})
    ps.validate_http("/sessions", "GET", 200, {"success": True, "sessions": []})
    ps.validate_http(
        "/health",
        "GET",
        200,
        {
            "status": "ok",
            "activeSessions": 1,
            "transcriptionProvider": "whisper",
            "translationProvider": "apertium",
            "endpoint": "/translate",
            "sttLanguages": ["en"],
            "mtPairs": {"en": ["es", "ca"]},
            "uptimeSeconds": 12,
            "version": "0.1.0",  # extra fields allowed on /health only
        },
    )
    ps.validate_http("/translate", "GET", 101, None)
    ps.validate_http("/translate", "GET", 426, {"success": False, "error": "WebSocket only"})


def test_common_http_errors_validate() -> None:
    err = {"success": False, "error": "x"}
    ps.validate_http("/session/start", "GET", 405, err)  # a method the path lacks
    ps.validate_http("/health", "DELETE", 405, err)
    ps.validate_http("/session/start", "POST", 413, err)
    ps.validate_http("/session/start", "POST", 400, err)  # malformed JSON
    ps.validate_http("/health", "GET", 500, err)
    ps.validate_http("/session/start", "POST", 429, {**err, "retryAfter": 3})


# -------------------------------------------- the reference's examples, WebSocket


CLIENT_EXAMPLES: list[dict[str, Any]] = [
    {"type": "init", "sourceLang": "en"},
    {"type": "init", "sourceLang": "en", "targetLang": "es"},
    {"type": "init", "sourceLang": "en", "sampleRate": 24000},
    {"type": "audio", "audioData": "AAABAP//AgA=", "streaming": True},
    {
        "type": "audio",
        "audioData": "AAAA",
        "streaming": True,
        "chunkIndex": 3,
        "startMs": 300,
        "endMs": 400.5,
        "clientTimestamp": 1730000000000,
    },
    {"type": "audio_end"},
    {"type": "ping", "timestamp": 1730000000000},
    {"type": "change_language", "targetLang": "fr"},
    # Clients' extra fields are allowed (the server ignores them).
    {"type": "init", "sourceLang": "en", "tier": "basic"},
]

SERVER_EXAMPLES: list[dict[str, Any]] = [
    {"type": "pong", "timestamp": 1730000000000},
    {"type": "language_changed", "targetLang": "fr"},
    {
        "type": "session_ready",
        "sessionId": SID,
        "sessionCode": "ABC123",
        "role": "host",
    },
    {
        "type": "session_ready",
        "sessionId": SID,
        "sessionCode": None,
        "role": "solo",
        "sourceLang": "en",
        "targetLang": "es",
    },
    {
        "type": "session_joined",
        "sessionId": SID,
        "sessionCode": "ABC123",
        "role": "listener",
        "targetLang": "es",
        "sourceLang": "en",
        "message": "Connected to session ABC123",
    },
    {
        "type": "translation",
        "seqId": 0,
        "serverTimestamp": 1730000000000,
        "timestamp": 1730000000000,
        "isPartial": True,
        "originalText": "",
        "translatedText": "",
        "sourceLang": "en",
        "targetLang": "es",
        "hasTranslation": False,
    },
    {
        "type": "translation",
        "seqId": 7,
        "serverTimestamp": 1730000000000,
        "timestamp": 1730000000000,
        "isPartial": False,
        "originalText": "Hello.",
        "translatedText": "Hola.",
        "sourceLang": "en",
        "targetLang": "es",
        "hasTranslation": True,
    },
    {
        "type": "session_stats",
        "stats": {
            "listenerCount": 10,
            "languages": ["es"],
            "languageCounts": {"es": 10},
        },
    },
    {
        "type": "session_stats",  # the original sends the whole session object
        "stats": {
            "sessionId": SID,
            "sessionCode": "ABC123",
            "isActive": True,
            "listenerCount": 1,
            "languages": ["pt-BR"],
            "languageCounts": {"pt-BR": 1},
            "createdAt": 1730000000000,
            "lastActivity": 1730000000000,
            "duration": 0,
        },
    },
    {"type": "session_ended", "message": "The host ended the session"},
    {"type": "session_ended", "message": "Server shutting down", "reason": "shutdown"},
    {"type": "error", "message": "Session not found", "code": 1008, "closing": True},
    {"type": "error", "message": "Unknown message type", "code": 400},
]


@pytest.mark.parametrize("msg", CLIENT_EXAMPLES, ids=lambda m: m["type"])
def test_reference_client_examples_validate(msg: dict[str, Any]) -> None:
    ps.validate_client_message(msg)
    json.dumps(msg)


@pytest.mark.parametrize("msg", SERVER_EXAMPLES, ids=lambda m: m["type"])
def test_reference_server_examples_validate(msg: dict[str, Any]) -> None:
    ps.validate_server_message(msg)


# ------------------------------------------------------------- what is rejected

FINAL = SERVER_EXAMPLES[6]


def _without(msg: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k != key}


BAD_SERVER: list[tuple[str, dict[str, Any], str]] = [
    ("missing seqId", _without(FINAL, "seqId"), "seqId"),
    ("seqId as string", {**FINAL, "seqId": "7"}, "seqId"),
    ("negative seqId", {**FINAL, "seqId": -1}, "seqId"),
    ("timestamp in float seconds", {**FINAL, "timestamp": 1730000000.25}, "timestamp"),
    ("isPartial as string", {**FINAL, "isPartial": "false"}, "isPartial"),
    ("extra field", {**FINAL, "confidence": 0.9}, "confidence"),
    ("empty final", {**FINAL, "originalText": ""}, "originalText"),
    (
        "unflagged source text",
        {**FINAL, "hasTranslation": False},
        "translatedText differs",
    ),
    (
        "unknown type",
        {"type": "transcript", "text": "hi"},
        "unknown server message type",
    ),
    ("missing type", {"message": "x", "code": 400}, "no string 'type'"),
    ("type not a string", {"type": 3}, "no string 'type'"),
    (
        "host ready without code",
        {
            "type": "session_ready",
            "sessionId": SID,
            "sessionCode": None,
            "role": "host",
        },
        "sessionCode",
    ),
    (
        "solo ready without languages",
        {
            "type": "session_ready",
            "sessionId": SID,
            "sessionCode": None,
            "role": "solo",
        },
        "required",
    ),
    (
        "lowercase code",
        {
            "type": "session_ready",
            "sessionId": SID,
            "sessionCode": "abc123",
            "role": "host",
        },
        "sessionCode",
    ),
    (
        "bad uuid",
        {
            "type": "session_ready",
            "sessionId": "42",
            "sessionCode": "ABC123",
            "role": "host",
        },
        "sessionId",
    ),
    (
        "closing error with HTTP status",
        {"type": "error", "message": "x", "code": 400, "closing": True},
        "code",
    ),
    ("error without code", {"type": "error", "message": "x"}, "code"),
    ("error with odd code", {"type": "error", "message": "x", "code": 200}, "code"),
    (
        "ended, unknown reason",
        {"type": "session_ended", "message": "x", "reason": "bored"},
        "reason",
    ),
    (
        "stats count not integer",
        {
            "type": "session_stats",
            "stats": {
                "listenerCount": 1,
                "languages": [],
                "languageCounts": {"es": "1"},
            },
        },
        "languageCounts",
    ),
]


@pytest.mark.parametrize(("name", "msg", "needle"), BAD_SERVER, ids=[b[0] for b in BAD_SERVER])
def test_bad_server_messages_are_rejected(name: str, msg: dict[str, Any], needle: str) -> None:
    with pytest.raises(jsonschema.ValidationError) as info:
        ps.validate_server_message(msg)
    assert needle in str(info.value.message), info.value.message


BAD_CLIENT: list[tuple[str, dict[str, Any], str]] = [
    ("audio without data", {"type": "audio", "streaming": True}, "audioData"),
    ("audio not base64", {"type": "audio", "audioData": "not base64!"}, "audioData"),
    ("sample rate too high", {"type": "init", "sampleRate": 192000}, "sampleRate"),
    ("sample rate float", {"type": "init", "sampleRate": 24000.5}, "sampleRate"),
    (
        "bad language",
        {"type": "change_language", "targetLang": "Spanish"},
        "targetLang",
    ),
    ("change without language", {"type": "change_language"}, "targetLang"),
    (
        "server type from client",
        {"type": "pong", "timestamp": 1},
        "unknown client message type",
    ),
]


@pytest.mark.parametrize(("name", "msg", "needle"), BAD_CLIENT, ids=[b[0] for b in BAD_CLIENT])
def test_bad_client_messages_are_rejected(name: str, msg: dict[str, Any], needle: str) -> None:
    with pytest.raises(jsonschema.ValidationError) as info:
        ps.validate_client_message(msg)
    assert needle in str(info.value.message), info.value.message


def test_bad_http_bodies_are_rejected() -> None:
    good_start = {
        "success": True,
        "sessionId": SID,
        "sessionCode": "ABC123",
        "hostToken": "q3Jx0mB7c1VtZ2xv8pYkR4sN6aWfHdLe",
        "wsUrl": f"/translate?role=host&sessionId={SID}&token=q3Jx0mB7c1VtZ2xv8pYkR4sN6aWfHdLe",
    }
    cases: list[tuple[str, str, int, Any, str]] = [
        ("/session/start", "POST", 200, _without(good_start, "hostToken"), "hostToken"),
        (
            "/session/start",
            "POST",
            200,
            {**good_start, "sessionCode": "ABC12"},
            "sessionCode",
        ),
        (
            "/session/start",
            "POST",
            404,
            {"success": False, "error": "x"},
            "not documented",
        ),
        ("/session/join", "POST", 404, {"success": True, "error": "x"}, "success"),
        ("/session/join", "POST", 400, {"success": False}, "error"),
        ("/session/{code}/info", "GET", 200, {"success": True}, "session"),
        ("/health", "GET", 200, {"status": "ok"}, "required"),
        ("/health", "POST", 200, {"status": "ok"}, "only 405"),
        ("/nope", "GET", 200, {}, "no path"),
        ("/translate", "GET", 101, {"success": True}, "without a JSON body"),
    ]
    for path, method, status, body, needle in cases:
        with pytest.raises(jsonschema.ValidationError) as info:
            ps.validate_http(path, method, status, body)
        assert needle in info.value.message, (path, status, info.value.message)
    with pytest.raises(jsonschema.ValidationError):
        ps.validate_http_request("/session/join", "POST", {"targetLang": "es"})
    with pytest.raises(jsonschema.ValidationError):
        ps.validate_http_request("/session/join", "POST", None)
