"""The query of ``/translate``: parsed once, each parameter checked as the contract
(``protocols/openapi.yaml``) says. Sans-IO: strings in, values out."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl

from babel_actors.wire.client import is_language

MAX_USER_NAME = 50
"""Longest ``userName`` a listener may give."""

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,256}")
_LAST_SEQ = re.compile(r"-1|0|[1-9][0-9]{0,17}")
"""ASCII digits only: ``int()`` would also take ``1_0``, ``+1``, spaces and other
scripts' digits."""


def parse_query(text: str) -> dict[str, str]:
    """``a=1&b=`` as a dict (the last of repeated names wins; blank values kept)."""
    return dict(parse_qsl(text, keep_blank_values=True))


def last_seq(value: str | None) -> int | None:
    """``lastSeq`` as an int (-1 or more); None when absent or empty. Raises
    ``ValueError`` for anything else."""
    if value is None or value == "":
        return None
    if _LAST_SEQ.fullmatch(value) is None:
        raise ValueError(value)
    return int(value)


def _is_last_seq(value: str) -> bool:
    try:
        last_seq(value)
    except ValueError:
        return False
    return True


SOCKET_PARAMETERS: dict[str, Callable[[str], bool]] = {
    "role": lambda value: value in ("host", "listener"),
    "sessionId": lambda value: _UUID.fullmatch(value) is not None,
    "token": lambda value: _TOKEN.fullmatch(value) is not None,
    "targetLang": is_language,
    "userName": lambda value: len(value) <= MAX_USER_NAME,
    "lastSeq": _is_last_seq,
    "apiKey": bool,
}
"""The ``/translate`` query parameters, and what each must be."""


def socket_query_problem(query: Mapping[str, str]) -> str | None:
    """What is malformed in a ``/translate`` query, or None."""
    for name, valid in SOCKET_PARAMETERS.items():
        if name in query and not valid(query[name]):
            return f"malformed query parameter {name}"
    return None
