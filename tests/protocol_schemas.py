"""Check wire traffic against the language-neutral contract in ``protocols/``.

- WebSocket messages: ``protocols/schemas/<direction>.<type>.json`` (JSON Schema
  2020-12), chosen by direction (``client`` or ``server``) and the message's ``type``.
- HTTP responses: ``protocols/openapi.yaml`` (OpenAPI 3.1), chosen by path template,
  method and status, with every ``$ref`` resolved against the document.

Every failure raises ``jsonschema.ValidationError`` whose message names what was being
checked (e.g. ``server message 'translation': 'seqId' is a required property``).
Loaded documents and built validators are cached for the life of the process.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

PROTOCOLS_DIR = Path(__file__).resolve().parent.parent / "protocols"
SCHEMAS_DIR = PROTOCOLS_DIR / "schemas"
OPENAPI_PATH = PROTOCOLS_DIR / "openapi.yaml"
OPENAPI_URI = "https://babel-actors.example/protocols/openapi.yaml"
"""Base URI under which the OpenAPI document is registered for ``$ref`` resolution."""

DIRECTIONS = ("client", "server")
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER
_MAX_DETAIL = 400


# --------------------------------------------------------------------------- loading


@functools.cache
def message_schemas() -> Mapping[tuple[str, str], dict[str, Any]]:
    """Every WebSocket message schema, keyed by ``(direction, type)``."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(SCHEMAS_DIR.glob("*.json")):
        direction, _, rest = path.name.partition(".")
        msg_type = rest.removesuffix(".json")
        if direction not in DIRECTIONS or not msg_type:
            raise ValueError(f"{path}: schema files are named <client|server>.<type>.json")
        found[(direction, msg_type)] = json.loads(path.read_text(encoding="utf-8"))
    return found


def message_types(direction: str) -> frozenset[str]:
    """The message ``type`` values the contract defines for ``direction``."""
    return frozenset(t for d, t in message_schemas() if d == direction)


@functools.cache
def _message_validator(direction: str, msg_type: str) -> Draft202012Validator:
    schema = message_schemas()[(direction, msg_type)]
    return Draft202012Validator(schema, format_checker=_FORMAT_CHECKER)


@functools.cache
def load_openapi() -> dict[str, Any]:
    """The parsed OpenAPI document."""
    with OPENAPI_PATH.open(encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    if not isinstance(doc, dict):
        raise TypeError(f"{OPENAPI_PATH} is not a YAML mapping")
    return doc


@functools.cache
def openapi_registry() -> Registry[Any]:
    """A registry holding the OpenAPI document at ``OPENAPI_URI`` (for ``$ref``)."""
    resource: Resource[Any] = DRAFT202012.create_resource(load_openapi())
    registry: Registry[Any] = Registry().with_resource(OPENAPI_URI, resource)
    return registry


def resolve_openapi_ref(ref: str) -> Any:
    """The node a ``$ref`` of the OpenAPI document (``#/...``) points at."""
    resolver = openapi_registry().resolver(base_uri=OPENAPI_URI)
    return resolver.lookup(ref).contents


def iter_refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    """Every ``(location, $ref value)`` pair in a JSON/YAML tree."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield where, ref
        for key, value in node.items():
            yield from iter_refs(value, f"{where}/{_escape(str(key))}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from iter_refs(value, f"{where}/{index}")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _pointer_ref(*tokens: str) -> str:
    return OPENAPI_URI + "#/" + "/".join(_escape(t) for t in tokens)


@functools.cache
def _openapi_validator(ref: str) -> Draft202012Validator:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": ref}
    return Draft202012Validator(schema, registry=openapi_registry(), format_checker=_FORMAT_CHECKER)


# --------------------------------------------------------------------- validation


def _raise_best(validator: Draft202012Validator, instance: Any, what: str) -> None:
    error = best_match(validator.iter_errors(instance))
    if error is None:
        return
    where = "".join(f"[{p!r}]" for p in error.absolute_path) or "(top level)"
    detail = error.message
    if len(detail) > _MAX_DETAIL:  # e.g. a whole base64 audio chunk quoted back
        detail = detail[: _MAX_DETAIL // 2] + " ... " + detail[-_MAX_DETAIL // 2 :]
    raise jsonschema.ValidationError(
        f"{what}: {detail} at {where}",
        validator=error.validator,
        path=error.absolute_path,
        schema_path=error.absolute_schema_path,
        instance=error.instance,
        schema=error.schema,
        validator_value=error.validator_value,
    )


def _validate_message(direction: str, msg: dict[str, Any]) -> None:
    if not isinstance(msg, dict):
        raise jsonschema.ValidationError(
            f"{direction} message must be a JSON object, got {type(msg).__name__}"
        )
    msg_type = msg.get("type")
    if not isinstance(msg_type, str):
        raise jsonschema.ValidationError(f"{direction} message has no string 'type' field: {msg!r}")
    if (direction, msg_type) not in message_schemas():
        known = ", ".join(sorted(message_types(direction)))
        raise jsonschema.ValidationError(
            f"unknown {direction} message type {msg_type!r} (known: {known})"
        )
    _raise_best(
        _message_validator(direction, msg_type),
        msg,
        f"{direction} message {msg_type!r}",
    )


def validate_client_message(msg: dict[str, Any]) -> None:
    """Validate a client-to-server WebSocket message; raise ValidationError if bad."""
    _validate_message("client", msg)


def validate_server_message(msg: dict[str, Any]) -> None:
    """Validate a server-to-client WebSocket message; raise ValidationError if bad.

    Beyond the schema: a ``translation`` with ``hasTranslation: false`` must carry the
    source text as ``translatedText`` (what the flag means).
    """
    _validate_message("server", msg)
    if (
        msg["type"] == "translation"
        and msg["hasTranslation"] is False
        and msg["translatedText"] != msg["originalText"]
    ):
        raise jsonschema.ValidationError(
            "server message 'translation': hasTranslation is false but "
            "translatedText differs from originalText"
        )


def _response_object(path_template: str, method: str, status: int) -> tuple[dict[str, Any], str]:
    """The response object for the request, and a ref to it (for error messages)."""
    doc = load_openapi()
    paths = doc.get("paths", {})
    if path_template not in paths:
        raise jsonschema.ValidationError(
            f"HTTP: no path {path_template!r} in openapi.yaml (known: {', '.join(paths)})"
        )
    method = method.lower()
    if method not in _HTTP_METHODS:
        raise jsonschema.ValidationError(f"HTTP: {method.upper()!r} is not an HTTP method")
    operation = paths[path_template].get(method)
    common = doc.get("x-common-responses", {})
    code = str(status)
    found: tuple[Any, tuple[str, ...]] | None = None
    if operation is None:
        # Only the "method not allowed" answer applies to a method the path lacks.
        if code == "405" and code in common:
            found = (common[code], ("x-common-responses", code))
        else:
            raise jsonschema.ValidationError(
                f"HTTP {method.upper()} {path_template}: no such operation, so only 405 "
                f"is allowed, not {status}"
            )
    else:
        responses = operation.get("responses", {})
        for key in (code, f"{code[0]}XX"):
            if key in responses:
                found = (
                    responses[key],
                    ("paths", path_template, method, "responses", key),
                )
                break
        if found is None and code in common and code != "405":
            found = (common[code], ("x-common-responses", code))
        if found is None and "default" in responses:
            found = (
                responses["default"],
                ("paths", path_template, method, "responses", "default"),
            )
        if found is None:
            raise jsonschema.ValidationError(
                f"HTTP {method.upper()} {path_template}: status {status} is not documented "
                f"(documented: {', '.join(responses)}; common: {', '.join(common)})"
            )
    response, tokens = found
    ref = _pointer_ref(*tokens)
    seen = 0
    while "$ref" in response:
        ref = response["$ref"]
        if ref.startswith("#"):
            ref = OPENAPI_URI + ref
        response = resolve_openapi_ref(ref)
        seen += 1
        if seen > 10:
            raise jsonschema.ValidationError(f"HTTP: $ref loop at {ref}")
    return response, ref


def validate_http(
    path_template: str,
    method: str,
    status: int,
    body: dict[str, Any] | list[Any] | None,
) -> None:
    """Validate an HTTP response body against openapi.yaml.

    ``path_template`` is the OpenAPI path as written there (``/session/{code}/info``),
    ``method`` any case. The status must be documented for the operation (or be one of
    ``x-common-responses``; 405 for a method the path does not have). A response with
    no JSON content (101) requires ``body`` to be None.
    """
    response, ref = _response_object(path_template, method, status)
    what = f"HTTP {method.upper()} {path_template} {status}"
    content = response.get("content") or {}
    media = content.get("application/json")
    if media is None:
        if body is not None:
            raise jsonschema.ValidationError(
                f"{what}: documented without a JSON body, got {body!r}"
            )
        return
    if body is None:
        raise jsonschema.ValidationError(f"{what}: a JSON body is required")
    if "schema" not in media:
        return
    _raise_best(_openapi_validator(ref + "/content/application~1json/schema"), body, what)


def validate_http_request(path_template: str, method: str, body: dict[str, Any] | None) -> None:
    """Validate an HTTP request body against the operation's requestBody schema."""
    doc = load_openapi()
    method = method.lower()
    operation = doc.get("paths", {}).get(path_template, {}).get(method)
    what = f"HTTP request {method.upper()} {path_template}"
    if operation is None:
        raise jsonschema.ValidationError(f"{what}: no such operation in openapi.yaml")
    request = operation.get("requestBody")
    if request is None:
        if body is not None:
            raise jsonschema.ValidationError(f"{what}: takes no body")
        return
    if body is None:
        if request.get("required", False):
            raise jsonschema.ValidationError(f"{what}: a JSON body is required")
        return
    ref = _pointer_ref(
        "paths",
        path_template,
        method,
        "requestBody",
        "content",
        "application/json",
        "schema",
    )
    _raise_best(_openapi_validator(ref), body, what)
