"""Fuzzing a live server: every bad input gets a defined answer, and nothing else is harmed.

Hypothesis throws malformed, oversized and out-of-order messages at live host, listener
and solo connections, raw frames below the WebSocket layer, and schemathesis throws
generated requests at the HTTP API of ``protocols/openapi.yaml``, each while a bystander
session runs beside the abuse (``bystander.py``), which must get every final exactly
once, in order, translated.

The oracle is the contract, not the server's code: a client message is valid when it
validates against its schema in ``protocols/schemas`` and passes the rules
``protocols/README.md`` states (supported languages, whole 16-bit samples); a valid
message gets its documented reply, and anything else the documented ``error`` or close.
Which role sends what, which role receives what and which close codes exist are read
from the README's own tables, so the test follows the contract when it changes.

How the fuzz runs: ``@given`` does not run under pytest-trio, so each test starts one
server and its bystander, then runs the hypothesis test in a worker thread whose examples
drive the live server with ``trio.from_thread.run``: one server lives across all examples.
The protocol's own messages in the wrong order for each role, and each kind of broken
frame, are thrown as explicit examples every run; the generated ones come on top.

Leaks are checked after every example, without sleeping: once the whole process is idle
(``trio.testing.wait_all_tasks_blocked``: every task, the server's included, waits on
something), the server must hold no session but the bystander's (its registry) and no
accepted socket but the bystander's two. Sockets are counted as the kernel sees them
(psutil: this process's TCP sockets on the server's port), not as the server accounts
for them, so a connection the server forgot to close shows up too; a connection gauge
in ``/metrics`` would only repeat the server's own belief. Closing is asynchronous (the
server tears down after the client has seen the close), so the check is repeated at
each idle point until it holds, within a bound.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import attrs
import httpx
import hypothesis
import jsonschema
import psutil
import pytest
import schemathesis
import trio
import trio.testing
import trio_websocket
import wsproto
import wsproto.events as ws_events
from bystander import SECONDS, SENTENCES, Bystander, bystander, config, scripted
from helpers import start_session
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from protocol_schemas import (
    OPENAPI_PATH,
    PROTOCOLS_DIR,
    load_openapi,
    message_types,
    validate_client_message,
    validate_http,
    validate_server_message,
)
from raw_http import exchange
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from babel_actors.config import Config
from babel_actors.server.app import Server
from babel_actors.testing import ProtocolClient, running_server

EXAMPLES = 100
"""Examples per hypothesis test; with ``derandomize`` every CI run throws the same ones."""
HTTP_EXAMPLES = 25
"""Generated requests per HTTP operation and generation mode."""
TEST_TIMEOUT_S = 300
"""Bounds a whole test, shrinking included (a passing one takes seconds)."""
EXAMPLE_TIMEOUT_S = 15
"""Bounds one example, so a hang is reported as a falsifying example, not a stuck run."""
SETTLE_TIMEOUT_S = 10
"""Longest wait for the server to let go of a closed connection or an ended session."""
BYSTANDER_SOCKETS = 2
"""The bystander's host and listener connections, the only ones that stay open."""
SPEAK_EVERY = 8
"""The bystander speaks (and is heard) every this many examples."""

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # No explain phase: it names lines of the trio and outcome plumbing, and costs runs.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)


# --- the contract, read from protocols/README.md ---------------------------------------

ROLES = ("host", "listener", "solo")
ASYNC_TYPES = frozenset({"translation", "session_stats"})
"""Server messages that come whenever the session has news, not as a reply."""
CLIENT_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999)
"""Close codes a client may send (RFC 6455 7.4); the server echoes them."""
INVALID_CLOSE_CODES = (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)


@dataclass(frozen=True)
class Contract:
    sends: dict[str, frozenset[str]]
    """Client message types each role may send (the README's roles table)."""
    receives: dict[str, frozenset[str]]
    """Server message types each role may receive."""
    close_codes: frozenset[int]
    """The close codes the README documents."""
    recoverable_codes: frozenset[int]
    """The recoverable ``error`` codes the README documents."""


@cache
def contract() -> Contract:
    text = (PROTOCOLS_DIR / "README.md").read_text(encoding="utf-8")
    sends: dict[str, frozenset[str]] = {}
    receives: dict[str, frozenset[str]] = {}
    close_codes: set[int] = set()
    recoverable: set[int] = set()
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in ROLES:
            sends[cells[0]] = frozenset(re.findall(r"`(\w+)`", cells[2])) & message_types("client")
            receives[cells[0]] = frozenset(re.findall(r"`(\w+)`", cells[3])) & message_types(
                "server"
            )
        elif match := re.match(r"^\| (\d{3,4}) \|", line):
            code = int(match.group(1))
            (close_codes if code >= 1000 else recoverable).add(code)
    assert set(sends) == set(ROLES), "the README's roles table has changed shape"
    assert {1000, 1008, 1009} <= close_codes and {400, 403} <= recoverable
    return Contract(sends, receives, frozenset(close_codes), frozenset(recoverable))


def sends_binary(role: str) -> bool:
    """Binary frames carry the same PCM as ``audio`` (README, Audio), so a role may send
    them exactly when it may send ``audio``."""
    return "audio" in contract().sends[role]


@dataclass(frozen=True)
class Languages:
    """What the server's engines offer, from ``GET /health``."""

    speech: frozenset[str]
    pairs: dict[str, frozenset[str]]

    def readable(self, source: str) -> frozenset[str]:
        """Languages a listener of ``source`` may read: its targets and the source."""
        return self.pairs.get(source, frozenset()) | {source}


# --- what the client throws ---------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """A text message, sent whole."""

    text: str

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 160 else self.text[:160] + "..."
        return f"Text({shown!r}, {len(self.text.encode())} bytes)"


@dataclass(frozen=True)
class Binary:
    """A binary message, sent whole."""

    data: bytes

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 16 else self.data[:16] + b"..."
        return f"Binary({shown!r}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class Padded:
    """A valid ping padded to exactly ``limit + delta`` bytes of UTF-8 with ``char``, so
    its size in characters is well under its size in bytes."""

    char: str
    delta: int

    def text(self, limit: int) -> str:
        head, tail = '{"type":"ping","timestamp":7,"pad":"', '"}'
        room = limit + self.delta - len(head) - len(tail)
        width = len(self.char.encode())
        return head + self.char * (room // width) + "a" * (room % width) + tail


@dataclass(frozen=True)
class Sized:
    """A binary message of exactly ``limit + delta`` bytes."""

    delta: int

    def data(self, limit: int) -> bytes:
        return bytes(limit + self.delta)


Item = Text | Binary | Padded | Sized


def _serialise(message: Any, ascii_only: bool) -> str:
    text = json.dumps(message, ensure_ascii=ascii_only, allow_nan=True)
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate travels only as a \u escape
        text = json.dumps(message, ensure_ascii=True, allow_nan=True)
    return text


LANGUAGE_TAGS = ["en", "es", "fr", "de", "ca", "pt-BR", "zh-Hant-TW", "xx", "EN", "e", "es\n", ""]
SURROGATES = ["\ud800", "\udfff", "a\ud83d", "\ude00b"]
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(SURROGATES)
)
json_values = st.recursive(
    _scalars | st.sampled_from([math.nan, math.inf, -math.inf]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=5,
)
languages = st.sampled_from(LANGUAGE_TAGS) | json_values
sample_rates = (
    st.sampled_from([8000, 16000, 24000, 44100, 48000, 96000, 7999, 96001, 0, -1, 2**63, 24000.0])
    | st.integers(min_value=8000, max_value=96000)
    | json_values
)
phrases = st.text(alphabet="abcdé xyz", min_size=1, max_size=12).filter(str.strip)
glossaries = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "terms": st.dictionaries(
                phrases,
                phrases | st.dictionaries(st.sampled_from(["es", "fr", "pt-BR"]), phrases),
                max_size=3,
            ),
            "keep": st.lists(phrases, max_size=3),
        },
    ),
    st.sampled_from(
        [
            {"terms": {"x": ""}},
            {"terms": {"": "y"}},
            {"terms": {"x": {}}},
            {"terms": {"x": {"ES": "y"}}},
            {"terms": {"x": "y" * 101}},
            {"keep": "word"},
            {"keep": [""]},
            {"terms": ["x"]},
        ]
    ),
    json_values,
)
b64_audio = st.binary(max_size=600).map(lambda pcm: base64.b64encode(pcm).decode())
bad_b64 = st.sampled_from(
    ["@@", "AAA", "AA=A", "A===", "AAAA====", "AQ==", "AAE=AAAA", "-_-_", " AAAA", "AAAA\n", ""]
)
timestamps = (
    st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, -0.0, 1e308, 5e-324, 2**53 + 1, 10**30, 1730000000000])
    | json_values
)
informational = {
    "streaming": st.booleans() | json_values,
    "chunkIndex": st.integers(min_value=0) | json_values,
    "startMs": st.floats(min_value=0, allow_infinity=False) | json_values,
    "clientTimestamp": st.integers(min_value=0) | json_values,
}
protocol_messages = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("init")},
        optional={
            "sourceLang": languages,
            "targetLang": languages,
            "sampleRate": sample_rates,
            "glossary": glossaries,
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("audio"), "audioData": b64_audio | bad_b64 | json_values},
        optional=informational,
    ),
    st.fixed_dictionaries({"type": st.just("audio"), "audioData": b64_audio}),
    st.just({"type": "audio_end"}),
    st.fixed_dictionaries({"type": st.just("ping")}, optional={"timestamp": timestamps}),
    st.fixed_dictionaries({"type": st.just("change_language")}, optional={"targetLang": languages}),
)
types = st.sampled_from(["Ping", "ping ", "shout", "gemini_ready", "tts/start", "", "pong"])


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A protocol message with extra fields, a field dropped, retyped, or a bad type."""
    message = dict(draw(protocol_messages))
    for key, value in draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)).items():
        message.setdefault(key, value)
    how = draw(st.sampled_from(["extra", "drop", "retype", "type"]))
    key = draw(st.sampled_from(sorted(message)))
    if how == "drop":
        del message[key]
    elif how == "retype":
        message[key] = draw(json_values)
    elif how == "type":
        message["type"] = draw(types | json_values)
    return message


def _nest(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


BROKEN_JSON = [
    "",
    " ",
    "null",
    "42",
    '"ping"',
    "[]",
    '[{"type": "ping"}]',
    "{}",
    '{"type": null}',
    '{"type": "ping",}',
    "{'type': 'ping'}",
    '\ufeff{"type": "ping"}',
    '{"type": "ping"} trailing',
    '{"type": "ping"}{"type": "ping"}',
    '{"type": "ping", "type": "shout"}',
    '{"type": "shout", "type": "ping"}',
    '{"type": "ping", "timestamp": NaN}',
    '{"type": "ping", "timestamp": -Infinity}',
    '{"type": "audio_end", "x": NaN}',
    '{"type": "ping", "timestamp": 1e400}',
    '{"type": "ping", "timestamp": -1e400}',
    '{"type": "ping", "timestamp": 1e-400}',
    '{"type": "ping", "timestamp": ' + "9" * 4300 + "}",
    '{"type": "ping", "timestamp": ' + "9" * 4301 + "}",
    '{"type": "ping", "timestamp": "\\ud800"}',
    '{"type": "change_language", "targetLang": "\\udfff"}',
    '{"type": "\\ud800"}',
    '{"type": "ping", "x": "\\ud800"}',
    _nest(100_000)[:60_000],
    _nest(30_000),
    '{"type": "ping", "timestamp": 3, "x": ' + _nest(200) + "}",
    '{"type": "ping", "timestamp": 3, "x": ' + _nest(20_000) + "}",
    '{"type": "audio", "audioData": ' + _nest(5_000, '"AAAA"') + "}",
]


@st.composite
def truncated(draw: st.DrawFn) -> str:
    text = json.dumps(draw(protocol_messages), allow_nan=True)
    return text[: draw(st.integers(min_value=0, max_value=len(text) - 1))]


def _as_text(message: Any, ascii_only: bool) -> Text:
    return Text(_serialise(message, ascii_only))


# Hypothesis picks among one_of's branches evenly: repeating a branch weighs it.
protocol_texts = st.builds(_as_text, protocol_messages, st.booleans())
broken_texts = st.one_of(
    st.sampled_from(BROKEN_JSON),
    truncated(),
    st.text(max_size=20),
    st.text(max_size=20).map(json.dumps),
).map(Text)
items: st.SearchStrategy[Item] = st.one_of(
    protocol_texts,
    protocol_texts,
    protocol_texts,
    st.builds(_as_text, mutated(), st.booleans()),
    st.builds(_as_text, mutated(), st.booleans()),
    broken_texts,
    st.binary(max_size=700).map(Binary),
    st.one_of(
        st.builds(
            Padded, st.sampled_from(["a", "é", "€", "😀"]), st.integers(-3, 3) | st.just(1000)
        ),
        st.builds(Sized, st.integers(-3, 3) | st.just(999)),
    ),
)


# --- the oracle ------------------------------------------------------------------------


@dataclass(frozen=True)
class Silent:
    """No reply (audio, audio_end)."""


@dataclass(frozen=True)
class Refused:
    """A recoverable ``error`` with one of ``codes``; the connection goes on."""

    codes: frozenset[int]


@dataclass(frozen=True)
class Closed:
    """``error`` with ``code`` and ``closing: true``, then a close with ``code``."""

    code: int


@dataclass(frozen=True)
class Pong:
    """``pong`` with ``timestamp`` (None: the server's Unix ms)."""

    timestamp: int | float | None


@dataclass(frozen=True)
class Ready:
    """``session_ready`` stating the languages now in force."""

    source: str
    target: str | None


@dataclass(frozen=True)
class Changed:
    """``language_changed``."""

    target: str


Answer = Silent | Refused | Closed | Pong | Ready | Changed
BAD = Refused(frozenset({400}))


@dataclass
class Peer:
    """What the oracle knows about one connection."""

    role: str
    session_id: str
    session_code: str | None
    source: str = "en"
    target: str = "en"
    sample_rate: int = 24000
    audio_s: float = 0.0


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def expect(peer: Peer, item: Item, limit: int, langs: Languages, burst_s: float) -> list[Answer]:
    """Every answer the contract allows to ``item``; updates ``peer`` as if accepted.

    Where the contract is silent: a message both malformed and not allowed for the role
    may get 400 or 403; JSON past what a parser must hold (nesting past Python's recursion
    limit, integers past its digit limit, a timestamp past a double, which no pong could
    carry back) gets 400; audio past the burst a host may send at once may be refused by
    the audio-rate limit (429, or 1008 and a close).
    """
    if isinstance(item, Padded | Text):
        text = item.text(limit) if isinstance(item, Padded) else item.text
        if len(text.encode()) > limit:
            return [Closed(1009)]
        return _expect_text(peer, text, langs, burst_s)
    data = item.data(limit) if isinstance(item, Sized) else item.data
    if len(data) > limit:
        return [Closed(1009)]
    if not sends_binary(peer.role):
        return [Refused(frozenset({403} if len(data) % 2 == 0 else {400, 403}))]
    if len(data) % 2:
        return [BAD]
    return _audio(peer, data, burst_s)


def _audio(peer: Peer, pcm: bytes, burst_s: float) -> list[Answer]:
    peer.audio_s += len(pcm) / 2 / peer.sample_rate
    if peer.audio_s <= burst_s:
        return [Silent()]
    return [Silent(), Refused(frozenset({429})), Closed(1008)]


PATTERNED = ("sourceLang", "targetLang", "audioData")
"""Top-level fields whose schema is a ``pattern``."""


def _schema_valid(message: dict[str, Any]) -> bool:
    # JSON Schema patterns are ECMA-262 regular expressions, whose $ does not match
    # before a final newline; Python's (jsonschema's) does, and would pass "es\n".
    if any(isinstance(message.get(key), str) and message[key].endswith("\n") for key in PATTERNED):
        return False
    try:
        validate_client_message(message)
    except jsonschema.ValidationError:
        return False
    return True


def _expect_text(peer: Peer, text: str, langs: Languages, burst_s: float) -> list[Answer]:
    try:
        message = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return [BAD]
    if not isinstance(message, dict):
        return [BAD]
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in message_types("client"):
        return [BAD]
    if kind not in contract().sends[peer.role]:
        sender = next(role for role in ROLES if kind in contract().sends[role])
        as_sent = _expect_message(replace(peer, role=sender), message, langs, burst_s)
        return [Refused(frozenset({400, 403} if as_sent == [BAD] else {403}))]
    return _expect_message(peer, message, langs, burst_s)


def _expect_message(
    peer: Peer, message: dict[str, Any], langs: Languages, burst_s: float
) -> list[Answer]:
    """The answers to a message of a type ``peer``'s role may send."""
    if not _schema_valid(message):
        return [BAD]
    kind = message["type"]
    if kind == "audio":
        pcm = base64.b64decode(message["audioData"], validate=True)
        return [BAD] if len(pcm) % 2 else _audio(peer, pcm, burst_s)
    if kind == "audio_end":
        return [Silent()]
    if kind == "ping":
        stamp = message.get("timestamp")
        if "timestamp" in message and not _finite(stamp):
            return [BAD]  # a pong could not carry it back as JSON
        return [Pong(stamp)]
    if kind == "change_language":
        if message["targetLang"] not in langs.readable(peer.source):
            return [BAD]
        peer.target = message["targetLang"]
        return [Changed(peer.target)]
    assert kind == "init"
    source = message.get("sourceLang", peer.source)
    if source not in langs.speech:
        return [BAD]
    target = message.get("targetLang", peer.target) if peer.role == "solo" else source
    if target not in langs.readable(source):
        return [BAD]
    peer.source, peer.target = source, target
    peer.sample_rate = message.get("sampleRate", peer.sample_rate)
    return [Ready(source, target if peer.role == "solo" else None)]


def matches(answer: Answer, peer: Peer, got: list[dict[str, Any]], closed: int | None) -> bool:
    """Whether the replies ``got`` (and the close code, if the server closed) are
    ``answer``."""
    if isinstance(answer, Closed):
        return (
            len(got) == 1
            and got[0] == {**got[0], "type": "error", "code": answer.code, "closing": True}
            and closed == answer.code
        )
    if closed is not None:
        return False
    if isinstance(answer, Silent):
        return got == []
    if len(got) != 1:
        return False
    (reply,) = got
    if isinstance(answer, Refused):
        return (
            reply["type"] == "error" and reply["code"] in answer.codes and reply["closing"] is False
        )
    if isinstance(answer, Pong):
        return reply == {"type": "pong", "timestamp": answer.timestamp} or (
            answer.timestamp is None and reply["type"] == "pong"
        )
    if isinstance(answer, Changed):
        return reply == {"type": "language_changed", "targetLang": answer.target}
    ready = {
        "type": "session_ready",
        "sessionId": peer.session_id,
        "sessionCode": peer.session_code,
        "role": peer.role,
        "sourceLang": answer.source,
    }
    if answer.target is not None:
        ready["targetLang"] = answer.target
    return reply == ready


# --- the live side ------------------------------------------------------------------


class Target:
    """The server under fuzz, its bystander, and what they must come back to."""

    def __init__(self, server: Server, by: Bystander, langs: Languages) -> None:
        self.server = server
        self.by = by
        self.langs = langs
        self.limit = server.config.max_message_bytes
        self.burst_s = server.config.audio_burst_s
        (self.bystander_id,) = server.registry.by_id
        self.examples = 0
        self.sentinel = -(10**15)
        self.process = psutil.Process()
        # All the bystander's audio (a short lead, then a sentence at a time: during the
        # fuzz, once after it, once as it stops) stays within the burst a host may send
        # at once, so the audio-rate limit cannot touch it however fast the fuzz runs.
        self.max_spoken = min(len(SENTENCES), int(self.burst_s / SECONDS) - 1) - 2

    def next_sentinel(self) -> int:
        self.sentinel -= 1
        return self.sentinel

    def server_sockets(self) -> list[Any]:
        """The connections the server has accepted and not closed, as the kernel sees
        them (this process holds both ends; the server's end has the server's port)."""
        return [
            conn
            for conn in self.process.net_connections(kind="tcp")
            if conn.laddr
            and conn.laddr.port == self.server.port
            and conn.status != psutil.CONN_LISTEN
        ]

    async def until(self, holds: Callable[[], bool], failure: Callable[[], str]) -> None:
        """Wait for ``holds`` without sleeping: check again each time every task in the
        process (the server's too) is blocked, within ``SETTLE_TIMEOUT_S``."""
        deadline = trio.current_time() + SETTLE_TIMEOUT_S
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if holds():
                return
            if trio.current_time() > deadline:
                raise AssertionError(failure())

    async def settle(self) -> None:
        """The server is back to the bystander alone: its sessions and its sockets."""

        def sessions() -> set[str]:
            return set(self.server.registry.by_id) - {self.bystander_id}

        def settled() -> bool:
            return not sessions() and len(self.server_sockets()) == BYSTANDER_SOCKETS

        await self.until(
            settled,
            lambda: (
                f"leaked: sessions {sessions()}, {len(self.server_sockets())} sockets "
                f"open for {BYSTANDER_SOCKETS}: {self.server_sockets()}"
            ),
        )

    async def example_done(self) -> None:
        """After each example: nothing leaked, and now and then the bystander speaks and
        must be heard while the abuse goes on."""
        await self.settle()
        self.examples += 1
        if self.examples % SPEAK_EVERY == 1 and self.by.spoken < self.max_spoken:
            await self.by.speak()
            await self.by.caught_up()

    async def end_session(self, session: dict[str, Any]) -> None:
        """End a session, if it is still live, the way its host does: connect, close
        with 1000."""
        await trio.testing.wait_all_tasks_blocked()
        if self.server.registry.get(session["sessionId"]) is None:
            return
        async with open_client(self.server, session["wsUrl"]) as host:
            while (await host.receive())["type"] != "session_ready":
                pass

    def run_examples(
        self,
        strategy: st.SearchStrategy[Any],
        example: Callable[[Any], Awaitable[None]],
        *,
        examples: int = EXAMPLES,
        explicit: tuple[Any, ...] = (),
    ) -> Callable[[], None]:
        """A hypothesis test, to run in a worker thread, whose examples drive the live
        server from there; each is bounded and followed by the leak check."""

        async def bounded(drawn: Any) -> None:
            with trio.fail_after(EXAMPLE_TIMEOUT_S):
                await example(drawn)
                await self.example_done()

        @settings(FUZZ_SETTINGS, max_examples=examples)
        @given(strategy)
        def fuzz(drawn: Any) -> None:
            trio.from_thread.run(bounded, drawn)

        for case in explicit:
            fuzz = hypothesis.example(case)(fuzz)
        return fuzz


@asynccontextmanager
async def open_client(server: Server, path: str) -> AsyncIterator[ProtocolClient]:
    """A WebSocket client on ``path``, closed with 1000 on the way out."""
    async with trio_websocket.open_websocket_url(
        f"ws://127.0.0.1:{server.port}{path}",
        connect_timeout=EXAMPLE_TIMEOUT_S,
        disconnect_timeout=EXAMPLE_TIMEOUT_S,
    ) as ws:
        yield ProtocolClient(ws)


@asynccontextmanager
async def fuzzing() -> AsyncIterator[Target]:
    """A server and its bystander; on exit the server is healthy and holds nothing but
    the bystander, whose listener must then have lost nothing."""
    with trio.fail_after(TEST_TIMEOUT_S):
        # Every session here has one owner (127.0.0.1), whose audio budget outlives its
        # sessions (test_limits covers it): unmetered, the oracle's per-session one holds.
        unmetered = attrs.evolve(config(), audio_rate_slack=0)
        async with running_server(unmetered, stt=scripted()) as server, bystander(server) as by:
            async with httpx.AsyncClient(base_url=server.url) as http:
                health = (await http.get("/health")).json()
            langs = Languages(
                frozenset(health["sttLanguages"]),
                {src: frozenset(dst) for src, dst in health["mtPairs"].items()},
            )
            target = Target(server, by, langs)
            await target.settle()
            yield target
            await target.settle()
            spoken = by.spoken
            await by.speak()  # still heard after the abuse
            await by.caught_up()
            async with httpx.AsyncClient(base_url=server.url) as http:
                response = await http.get("/health")
            assert response.status_code == 200
            validate_http("/health", "get", 200, response.json())
            assert response.json()["activeSessions"] == 1
            await target.settle()
        assert spoken > 1, "the bystander should have spoken during the fuzz"


class Watch:
    """What holds for every message on a connection, reply or not."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.last_final = -1

    def check(self, message: dict[str, Any]) -> dict[str, Any]:
        validate_server_message(message)
        assert message["type"] in contract().receives[self.role], (
            f"the README's roles table does not let a {self.role} receive {message}"
        )
        if message["type"] == "error":
            closing = message.get("closing")
            assert closing is (message["code"] >= 1000), message
            documented = contract().close_codes if closing else contract().recoverable_codes
            assert message["code"] in documented, f"undocumented code: {message}"
        if message["type"] == "translation":
            assert message["seqId"] > self.last_final, f"after final {self.last_final}: {message}"
            if not message["isPartial"]:
                self.last_final = message["seqId"]
        return message


class Conversation:
    """One live connection under fuzz: each item is followed by a sentinel ping, so the
    replies between them are the answer to that item alone."""

    def __init__(self, target: Target, client: ProtocolClient, peer: Peer) -> None:
        self.target = target
        self.client = client
        self.peer = peer
        self.watch = Watch(peer.role)
        self.closed: int | None = None

    async def receive(self) -> dict[str, Any]:
        """The next reply, past captions and audience figures; raises ConnectionClosed."""
        while True:
            message = self.watch.check(await self.client.receive())
            if message["type"] not in ASYNC_TYPES:
                return message

    async def replies_until(self, sentinel: int) -> list[dict[str, Any]]:
        got = []
        try:
            while (message := await self.receive()) != {"type": "pong", "timestamp": sentinel}:
                got.append(message)
        except trio_websocket.ConnectionClosed as closed:
            self.closed = closed.reason.code if closed.reason else -1
        return got

    async def send_sentinel(self) -> int:
        sentinel = self.target.next_sentinel()
        try:
            await self.client.send({"type": "ping", "timestamp": sentinel})
        except trio_websocket.ConnectionClosed:
            pass
        return sentinel

    async def greet(self) -> None:
        """The server's first words, before any reply: what the role joined."""
        peer = self.peer
        greeting = await self.replies_until(await self.send_sentinel())
        assert len(greeting) == 1 and self.closed is None, greeting
        (hello,) = greeting
        if peer.role == "solo":
            peer.session_id = hello.get("sessionId", "")
        if peer.role != "listener":
            assert matches(
                Ready(peer.source, peer.target if peer.role == "solo" else None),
                peer,
                greeting,
                None,
            ), greeting
            return
        joined = {
            "type": "session_joined",
            "sessionId": peer.session_id,
            "sessionCode": peer.session_code,
            "role": "listener",
            "targetLang": peer.target,
            "sourceLang": peer.source,
        }
        assert hello == {**hello, **joined}, hello

    async def throw_all(self, thrown: list[Item]) -> None:
        for item in thrown:
            await self.throw(item)
            if self.closed is not None:
                return

    async def throw(self, item: Item) -> None:
        peer = self.peer
        target = self.target
        answers = expect(peer, item, target.limit, target.langs, target.burst_s)
        before = time.time_ns() // 1_000_000
        try:
            if isinstance(item, Text | Padded):
                await self.client.ws.send_message(
                    item.text if isinstance(item, Text) else item.text(target.limit)
                )
            else:
                await self.client.ws.send_message(
                    item.data if isinstance(item, Binary) else item.data(target.limit)
                )
        except trio_websocket.ConnectionClosed as closed:
            raise AssertionError(f"closed before {item!r}: {closed.reason}") from None
        got = await self.replies_until(await self.send_sentinel())
        after = time.time_ns() // 1_000_000
        assert any(matches(answer, peer, got, self.closed) for answer in answers), (
            f"{peer.role} sent {item!r}\n  expected one of {answers}\n"
            f"  got {got} and close code {self.closed}"
        )
        for reply in got:
            if reply["type"] == "pong" and Pong(None) in answers:
                assert isinstance(reply["timestamp"], int), reply
                assert before <= reply["timestamp"] <= after, (before, reply, after)


# --- WebSocket messages on each role --------------------------------------------------


@asynccontextmanager
async def conversation(target: Target, path: str, peer: Peer) -> AsyncIterator[Conversation]:
    """A live connection on ``path``, greeted; closed with 1000 on the way out."""
    async with open_client(target.server, path) as client:
        talk = Conversation(target, client, peer)
        await talk.greet()
        yield talk


async def host_example(target: Target, thrown: list[Item]) -> None:
    session = await start_session(target.server)
    peer = Peer("host", session["sessionId"], session["sessionCode"])
    try:
        async with conversation(target, session["wsUrl"], peer) as talk:
            await talk.throw_all(thrown)
        if talk.closed is None:  # the host closed with 1000: its session is over
            await target.until(
                lambda: target.server.registry.get(session["sessionId"]) is None,
                lambda: f"the host closed with 1000 but session {session} goes on",
            )
    finally:
        await target.end_session(session)


async def listener_example(target: Target, thrown: list[Item]) -> None:
    session = await start_session(target.server)
    path = f"/translate?role=listener&sessionId={session['sessionId']}&targetLang=es"
    peer = Peer("listener", session["sessionId"], session["sessionCode"], target="es")
    try:
        async with conversation(target, path, peer) as talk:
            await talk.throw_all(thrown)
            if talk.closed is None:
                # However abused, the listener still hears its session end.
                await target.end_session(session)
                ended = await talk.receive()
                assert ended["type"] == "session_ended", ended
                assert ended["reason"] == "host_ended", ended
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await talk.receive()
                assert closed.value.reason is not None and closed.value.reason.code == 1000
    finally:
        await target.end_session(session)


async def solo_example(target: Target, start: tuple[str | None, list[Item]]) -> None:
    language, thrown = start
    path = "/translate" if language is None else f"/translate?targetLang={language}"
    async with conversation(target, path, Peer("solo", "", None, target=language or "en")) as talk:
        await talk.throw_all(thrown)


def _text(message: dict[str, Any]) -> Text:
    return Text(json.dumps(message))


PCM = bytes(48)
AUDIO = _text({"type": "audio", "audioData": base64.b64encode(PCM).decode(), "streaming": True})
AUDIO_END = _text({"type": "audio_end"})
BARE_PING = _text({"type": "ping"})
TO_FRENCH = _text({"type": "change_language", "targetLang": "fr"})
# The protocol's own messages in the wrong order for each role, always thrown.
OUT_OF_ORDER: dict[str, Any] = {
    "host": [
        Binary(PCM),
        AUDIO,
        _text({"type": "init", "sourceLang": "en", "sampleRate": 16000}),
        AUDIO,
        AUDIO_END,
        AUDIO_END,
        _text({"type": "init"}),
        TO_FRENCH,
        BARE_PING,
        _text({"type": "ping", "timestamp": 1730000000000}),
    ],
    "listener": [
        AUDIO,
        Binary(PCM),
        AUDIO_END,
        _text({"type": "init", "targetLang": "fr"}),
        _text({"type": "init"}),
        TO_FRENCH,
        BARE_PING,
    ],
    "solo": (
        None,
        [
            AUDIO,
            _text({"type": "init", "targetLang": "es"}),
            Binary(PCM),
            AUDIO_END,
            AUDIO_END,
            TO_FRENCH,
            BARE_PING,
        ],
    ),
}
EXAMPLES_BY_ROLE: dict[str, tuple[Callable[..., Awaitable[None]], st.SearchStrategy[Any]]] = {
    "host": (host_example, st.lists(items, min_size=1, max_size=8)),
    "listener": (listener_example, st.lists(items, min_size=1, max_size=8)),
    "solo": (
        solo_example,
        st.tuples(
            st.sampled_from([None, "es", "fr", "en"]), st.lists(items, min_size=1, max_size=8)
        ),
    ),
}


@pytest.mark.parametrize("role", ROLES)
async def test_every_bad_message_gets_its_defined_answer(role: str) -> None:
    async with fuzzing() as target:
        example, strategy = EXAMPLES_BY_ROLE[role]
        fuzz = target.run_examples(
            strategy, lambda drawn: example(target, drawn), explicit=(OUT_OF_ORDER[role],)
        )
        await trio.to_thread.run_sync(fuzz)


# --- raw frames ------------------------------------------------------------------------

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


@dataclass(frozen=True)
class Frame:
    """One client frame, built by hand so it can break every rule."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    key: bytes = b"\x5a\xa5\x0f\xf0"
    length: int | None = None
    """The declared payload length, when it lies."""

    def wire(self) -> bytes:
        size = len(self.payload) if self.length is None else self.length
        first = (0x80 if self.fin else 0) | self.rsv << 4 | self.opcode
        mask_bit = 0x80 if self.masked else 0
        if size < 126:
            head = struct.pack("!BB", first, mask_bit | size)
        elif size < 1 << 16:
            head = struct.pack("!BBH", first, mask_bit | 126, size)
        else:
            head = struct.pack("!BBQ", first, mask_bit | 127, size)
        if not self.masked:
            return head + self.payload
        n = len(self.payload)
        pad = (self.key * (n // 4 + 1))[:n]
        masked = (int.from_bytes(self.payload, "big") ^ int.from_bytes(pad, "big")).to_bytes(
            n, "big"
        )
        return head + self.key + masked


@dataclass(frozen=True)
class Unit:
    """Frames and what the server must answer to them: ("pong", payload) for a
    WebSocket pong, ("message", dict) for a JSON message."""

    frames: tuple[Frame, ...]
    replies: tuple[tuple[str, Any], ...] = ()


def fragments(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@st.composite
def json_ping(draw: st.DrawFn, stamp: int) -> Unit:
    """A ping message, maybe in fragments cut anywhere (inside a UTF-8 sequence too),
    with control frames between them."""
    pad = draw(st.text(alphabet="aé€😀", max_size=6))
    data = json.dumps({"type": "ping", "timestamp": stamp, "pad": pad}, ensure_ascii=False).encode()
    parts = fragments(data, draw(st.lists(st.integers(0, len(data)), max_size=3)))
    frames: list[Frame] = []
    replies: list[tuple[str, Any]] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        frames.append(Frame(OP_TEXT if index == 0 else OP_CONTINUATION, part, fin=last))
        if not last and draw(st.booleans()):
            payload = draw(st.binary(max_size=8))
            control = draw(st.sampled_from([OP_PING, OP_PONG]))
            frames.append(Frame(control, payload))
            if control == OP_PING:
                replies.append(("pong", payload))
    replies.append(("message", {"type": "pong", "timestamp": stamp}))
    return Unit(tuple(frames), tuple(replies))


@st.composite
def good_units(draw: st.DrawFn, role: str, stamp: int) -> Unit:
    """Frames that break no rule: a ping message, a ping or pong frame, or PCM."""
    kind = draw(st.sampled_from(["json", "ping", "pong", "binary"]))
    if kind == "json":
        return draw(json_ping(stamp))
    if kind in ("ping", "pong"):
        payload = draw(st.binary(max_size=125))
        key = draw(st.binary(min_size=4, max_size=4))
        frame = Frame(OP_PING if kind == "ping" else OP_PONG, payload, key=key)
        return Unit((frame,), (("pong", payload),) if kind == "ping" else ())
    pcm = draw(st.binary(max_size=64).map(lambda b: b[: len(b) // 2 * 2]))
    parts = fragments(pcm, draw(st.lists(st.integers(0, len(pcm)), max_size=2)))
    frames = tuple(
        Frame(OP_BINARY if i == 0 else OP_CONTINUATION, part, fin=i == len(parts) - 1)
        for i, part in enumerate(parts)
    )
    if sends_binary(role):
        return Unit(frames)
    return Unit(frames, (("error", {"type": "error", "code": 403, "closing": False}),))


@dataclass(frozen=True)
class Ending:
    """The last frames: a rule broken (``error`` then close with ``code``), or the
    client's own close (echoed, no ``error``)."""

    kind: str
    frames: tuple[Frame, ...]
    code: int | None
    error: bool = True


RESERVED_OPCODES = (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)
BAD_UTF8 = (b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc3")
"""Invalid bytes, overlong, a surrogate, past U+10FFFF, and a sequence cut short."""


def rule_breakers(limit: int) -> list[Ending]:
    """Every way a client frame can break RFC 6455, and the close code it earns."""
    ping = b'{"type": "ping"}'
    return [
        *(Ending("reserved opcode", (Frame(op, b"x"),), 1002) for op in RESERVED_OPCODES),
        *(
            Ending("RSV bit without an extension", (Frame(op, ping, rsv=rsv),), 1002)
            for rsv in range(1, 8)
            for op in (OP_TEXT, OP_BINARY, OP_PING)
        ),
        *(
            Ending("unmasked", (Frame(op, b"\x03\xe8", masked=False),), 1002)
            for op in (OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE)
        ),
        *(
            Ending("fragmented control frame", (Frame(op, b"", fin=False),), 1002)
            for op in (OP_PING, OP_PONG, OP_CLOSE)
        ),
        *(
            Ending("control frame of 126 bytes", (Frame(op, bytes(126)),), 1002)
            for op in (OP_PING, OP_PONG)
        ),
        Ending("continuation without a message", (Frame(OP_CONTINUATION, ping),), 1002),
        *(
            Ending(
                "new message inside a fragmented one",
                (Frame(OP_TEXT, ping[:4], fin=False), Frame(op, ping)),
                1002,
            )
            for op in (OP_TEXT, OP_BINARY)
        ),
        Ending("64-bit length with its top bit set", (Frame(OP_TEXT, length=1 << 63),), 1002),
        *(Ending("invalid UTF-8", (Frame(OP_TEXT, b'{"x": "' + bad),), 1007) for bad in BAD_UTF8),
        *(
            Ending(
                "invalid UTF-8 in a continuation",
                (Frame(OP_TEXT, b'{"x": "', fin=False), Frame(OP_CONTINUATION, bad)),
                1007,
            )
            for bad in BAD_UTF8
        ),
        Ending("close with a 1-byte payload", (Frame(OP_CLOSE, b"\x03"),), 1002),
        *(
            Ending("close with an invalid code", (Frame(OP_CLOSE, struct.pack("!H", code)),), 1002)
            for code in INVALID_CLOSE_CODES
        ),
        Ending("close reason not UTF-8", (Frame(OP_CLOSE, b"\x03\xe8\xff"),), 1007),
        *(
            Ending("frame over the limit", (Frame(op, bytes(limit + 2)),), 1009)
            for op in (OP_TEXT, OP_BINARY)
        ),
        *(
            Ending(
                "fragments over the limit",
                (
                    Frame(op, b"[" + bytes(limit // 2), fin=False),
                    Frame(OP_CONTINUATION, bytes(limit // 2 + 2)),
                ),
                1009,
            )
            for op in (OP_TEXT, OP_BINARY)
        ),
        *(
            Ending(
                "more frames than max_message_fragments",
                (
                    Frame(op, b"", fin=False),
                    *(Frame(OP_CONTINUATION, b"", fin=False),) * Config().max_message_fragments,
                ),
                1009,
            )
            for op in (OP_TEXT, OP_BINARY)
        ),
    ]


def client_close(code: int | None, reason: str = "") -> Ending:
    payload = b"" if code is None else struct.pack("!H", code) + reason.encode()[:120]
    # wsproto reads a close without a code as 1005 (no status received).
    return Ending("client close", (Frame(OP_CLOSE, payload),), code or 1005, error=False)


def endings(limit: int) -> st.SearchStrategy[Ending | None]:
    return st.one_of(
        st.none(),
        st.sampled_from(rule_breakers(limit)),
        st.builds(
            client_close, st.sampled_from(CLIENT_CLOSE_CODES) | st.none(), st.text(max_size=20)
        ),
    )


@dataclass(frozen=True)
class RawExample:
    role: str
    units: tuple[Unit, ...]
    ending: Ending | None
    """None: the client closes with 1000 after its units."""
    with_handshake: int
    """How many units travel in the same write as the HTTP upgrade request."""
    cuts: tuple[int, ...]
    """Where the byte stream is cut into separate writes."""


@st.composite
def raw_examples(draw: st.DrawFn, limit: int) -> RawExample:
    role = draw(st.sampled_from(ROLES))
    count = draw(st.integers(0, 4))
    units = tuple(draw(good_units(role, stamp=n + 1)) for n in range(count))
    return RawExample(
        role,
        units,
        draw(endings(limit)),
        draw(st.integers(0, count)),
        tuple(draw(st.lists(st.integers(1, 200), max_size=4))),
    )


def each_rule_broken(limit: int) -> tuple[RawExample, ...]:
    """Each kind of broken rule once, after a ping message in fragments with a ping
    frame between them, on each role in turn."""
    unit = Unit(
        (
            Frame(OP_TEXT, b'{"type": "ping", ', fin=False),
            Frame(OP_PING, b"between"),
            Frame(OP_CONTINUATION, b'"timestamp": 1}'),
        ),
        (("pong", b"between"), ("message", {"type": "pong", "timestamp": 1})),
    )
    kinds = {ending.kind: ending for ending in reversed(rule_breakers(limit))}
    return tuple(
        RawExample(ROLES[n % len(ROLES)], (unit,), ending, n % 2, (3, 20))
        for n, ending in enumerate([*kinds.values(), client_close(1000), client_close(None)])
    )


async def raw_connection(
    port: int, path: str, early: bytes
) -> tuple[trio.socket.SocketType, wsproto.WSConnection]:
    """Upgrade by hand, sending ``early`` frames in the same write as the request."""
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await send_all(sock, ws.send(ws_events.Request(host="127.0.0.1", target=path)) + early)
    while True:
        data = await sock.recv(65536)
        assert data, "the server hung up during the handshake"
        ws.receive_data(data)
        for event in ws.events():
            assert isinstance(event, ws_events.AcceptConnection), event
            return sock, ws


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = await sock.send(view)
        except (BrokenPipeError, ConnectionResetError):
            return  # the server closed first; what it said is read next
        view = view[sent:]


async def raw_replies(
    sock: trio.socket.SocketType, ws: wsproto.WSConnection
) -> tuple[list[tuple[str, Any]], int | None]:
    """Pongs and JSON messages the server sends, and its close code (None: it hung up
    without one)."""
    got: list[tuple[str, Any]] = []
    while True:
        try:
            data = await sock.recv(65536)
        except ConnectionResetError:
            data = b""
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, ws_events.TextMessage):
                assert event.message_finished
                got.append(("message", json.loads(event.data)))
            elif isinstance(event, ws_events.Pong):
                got.append(("pong", bytes(event.payload)))
            elif isinstance(event, ws_events.CloseConnection):
                return got, event.code
            else:
                raise AssertionError(f"unexpected {event}")
        if not data:
            return got, None


def _like(expected: tuple[str, Any], got: tuple[str, Any]) -> bool:
    kind, value = expected
    if kind == "error":
        return got[0] == "message" and got[1] == {**got[1], **value}
    return got == expected


async def raw_example(target: Target, example: RawExample) -> None:
    session = None if example.role == "solo" else await start_session(target.server)
    path = (
        "/translate"
        if session is None
        else session["wsUrl"]
        if example.role == "host"
        else f"/translate?role=listener&sessionId={session['sessionId']}&targetLang=es"
    )
    ending = example.ending or client_close(1000)
    early = b"".join(f.wire() for u in example.units[: example.with_handshake] for f in u.frames)
    later = b"".join(f.wire() for u in example.units[example.with_handshake :] for f in u.frames)
    later += b"".join(f.wire() for f in ending.frames)
    try:
        sock, ws = await raw_connection(target.server.port, path, early)
        with sock:
            for part in fragments(later, list(example.cuts)):
                await send_all(sock, part)
            got, code = await raw_replies(sock, ws)
        watch = Watch(example.role)
        for kind, message in got:
            if kind == "message":
                watch.check(message)
        replies = [
            (kind, value)
            for kind, value in got
            if kind == "pong" or value["type"] not in ASYNC_TYPES
        ]
        greeting = "session_joined" if example.role == "listener" else "session_ready"
        assert replies[:1] and replies[0][0] == "message", replies
        assert replies[0][1]["type"] == greeting, replies
        expected = [reply for unit in example.units for reply in unit.replies]
        if ending.error:
            expected.append(("error", {"type": "error", "code": ending.code, "closing": True}))
        assert len(replies) - 1 == len(expected) and all(
            _like(e, g) for e, g in zip(expected, replies[1:], strict=True)
        ), f"{ending.kind}: expected {expected}\n  got {replies[1:]}"
        assert code == ending.code, f"{ending.kind}: closed with {code}, expected {ending.code}"
        if ending.error:
            assert code in contract().close_codes, f"{ending.kind}: close {code} is undocumented"
    finally:
        if session is not None:
            await target.end_session(session)


async def test_raw_frames_get_their_defined_answer() -> None:
    async with fuzzing() as target:
        fuzz = target.run_examples(
            raw_examples(target.limit),
            lambda drawn: raw_example(target, drawn),
            examples=2 * EXAMPLES,
            explicit=each_rule_broken(target.limit),
        )
        await trio.to_thread.run_sync(fuzz)


# --- the HTTP API against openapi.yaml ----------------------------------------------------

HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def http_cases(target: Target) -> Iterator[Callable[[], None]]:
    """One hypothesis test per operation and generation mode: every operation of the
    spec, with none left out. ``POST /stats/reset`` is fuzzed too: it only forgets this
    private server's latencies, which no one here reads. Each request has a connection
    of its own, so the leak check after it sees every connection closed, and a session
    it starts is ended at once."""
    schema = schemathesis.openapi.from_path(OPENAPI_PATH)
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"openapi.yaml has an operation it cannot describe: {result}"
        operation = result.ok()
        negatable = bool(list(operation.iter_parameters()) or list(operation.body))
        # An operation without parameters or body has nothing to negate.
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if negatable else [])
        for mode in modes:

            @settings(FUZZ_SETTINGS, max_examples=HTTP_EXAMPLES)
            @given(operation.as_strategy(generation_mode=mode))
            def fuzz(case: schemathesis.Case[Any]) -> None:
                response = case.call(base_url=target.server.url)
                # positive_data_acceptance is left out: the schemas cannot say which
                # languages this server's engines offer (a well-formed but unsupported
                # sourceLang is rightly refused with 400) and a plain GET of /translate,
                # however well-formed its query, is rightly refused with 426.
                case.validate_response(response, excluded_checks=[positive_data_acceptance])
                if case.operation.path == "/session/start" and response.status_code == 200:
                    trio.from_thread.run(target.end_session, response.json())
                trio.from_thread.run(target.example_done)

            yield fuzz


async def test_http_api_conforms_to_openapi() -> None:
    failures: list[Exception] = []
    async with fuzzing() as target:
        for fuzz in http_cases(target):
            try:
                await trio.to_thread.run_sync(fuzz)
            except Exception as failure:  # every operation runs; all failures are reported
                failures.append(failure)
    if failures:
        raise ExceptionGroup(f"{len(failures)} HTTP operations fail the spec", failures)


async def test_methods_a_path_lacks_get_405_with_allow() -> None:
    """What schemathesis's coverage phase would probe, which its Python API does not run:
    each method a path of the spec lacks gets 405, its body the spec's, and an ``Allow``
    header naming the methods the path has (the spec's 405; RFC 9110)."""
    async with fuzzing() as target:
        for template, item in load_openapi()["paths"].items():
            declared = {method.upper() for method in item if method.upper() in HTTP_METHODS}
            path = template.replace("{code}", "ABC234")
            async with httpx.AsyncClient(base_url=target.server.url) as http:
                for method in sorted(set(HTTP_METHODS) - declared):
                    response = await http.request(method, path)
                    assert response.status_code == 405, (method, path, response.text)
                    validate_http(template, method, 405, response.json())
                    allow = {m.strip() for m in response.headers.get("allow", "").split(",")}
                    assert declared <= allow <= declared | {"HEAD", "OPTIONS"}, (
                        f"{method} {path}: Allow: {response.headers.get('allow')}"
                    )
            await target.example_done()


# === Pipelined HTTP (issue 15) ===========================================================
#
# A batch of requests, valid and invalid, in one write (or cut into a few), on one
# connection, then the client says no more (half-close). RFC 9112 and the contract: the
# server answers each complete request in order, one answer each, until an answer that
# closes the connection: a framing error (400), a body over the limit (413), or a
# request that asks to close (``Connection: close``, HTTP/1.0). Nothing after it is
# answered, so nothing is smuggled; then the server closes, cleanly (no reset), and an
# incomplete request at the end gets no answer.

PIPELINED_EXAMPLES = 100


@dataclass(frozen=True)
class Piped:
    """One request of a batch and its defined answer: ``status``, whether the answer
    closes the connection, and whether it has a body (not for HEAD)."""

    name: str
    wire: bytes
    status: int
    closes: bool = False
    head: bool = False

    def __repr__(self) -> str:
        return f"Piped({self.name})"


def _request(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + body


PIPED_VALID = (
    Piped("GET /health", _request("GET /health HTTP/1.1\nHost: x\n"), 200),
    Piped("HEAD /health", _request("HEAD /health HTTP/1.1\nHost: x\n"), 200, head=True),
    Piped("GET /metrics", _request("GET /metrics HTTP/1.1\nHost: x\n"), 200),
    Piped("unknown path", _request("GET /nowhere?token=1 HTTP/1.1\nHost: x\n"), 404),
    Piped("wrong method", _request("DELETE /health HTTP/1.1\nHost: x\n"), 405),
    Piped("OPTIONS", _request("OPTIONS /session/start HTTP/1.1\nHost: x\n"), 204),
    Piped("plain GET of /translate", _request("GET /translate HTTP/1.1\nHost: x\n"), 426),
    Piped(
        "join without a code",
        _request("POST /session/join HTTP/1.1\nHost: x\nContent-Length: 2\n", b"{}"),
        400,
    ),
    Piped(
        "join, not JSON",
        _request("POST /session/join HTTP/1.1\nHost: x\nContent-Length: 1\n", b"{"),
        400,
    ),
    Piped(
        "chunked join",
        _request(
            "POST /session/join HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n",
            b"2\r\n{}\r\n0\r\n\r\n",
        ),
        400,
    ),
)
PIPED_CLOSING = (
    Piped(
        "Connection: close",
        _request("GET /health HTTP/1.1\nHost: x\nConnection: close\n"),
        200,
        closes=True,
    ),
    Piped("HTTP/1.0", _request("GET /health HTTP/1.0\nHost: x\n"), 200, closes=True),
    Piped(
        "body over the limit",
        _request("POST /session/join HTTP/1.1\nHost: x\nContent-Length: 9000\n", bytes(9000)),
        413,
        closes=True,
    ),
    *(
        Piped(name, wire, 400, closes=True)
        for name, wire in (
            (
                "CL and TE",
                _request(
                    "POST /session/join HTTP/1.1\nHost: x\nContent-Length: 5\n"
                    "Transfer-Encoding: chunked\n",
                    b"0\r\n\r\n",
                ),
            ),
            (
                "TE gzip",
                _request("POST /session/join HTTP/1.1\nHost: x\nTransfer-Encoding: gzip\n"),
            ),
            (
                "two lengths",
                _request(
                    "POST /session/join HTTP/1.1\nHost: x\nContent-Length: 2\nContent-Length: 3\n",
                    b"{}",
                ),
            ),
            ("space before colon", _request("GET /health HTTP/1.1\nHost: x\nX-A : 1\n")),
            (
                "bad chunk",
                _request(
                    "POST /session/join HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n", b"z\r\n"
                ),
            ),
            ("not HTTP", b"\x16\x03\x01\x00\x05hello\r\n\r\n"),
            (
                "bad upgrade",
                _request(
                    "GET /translate HTTP/1.1\nHost: x\nUpgrade: websocket\nConnection: Upgrade\n"
                ),
            ),
        )
    ),
)
INCOMPLETE = b"GET /health HTTP/1.1\r\nHost: x\r\n"
"""A request cut short at the end of a batch: it gets no answer."""


@dataclass(frozen=True)
class PipelinedBatch:
    requests: tuple[Piped, ...]
    incomplete: bool
    """Whether an unfinished request ends the batch."""
    cuts: tuple[int, ...]
    """Where the batch is cut into separate writes (empty: one write)."""


pipelined_batches = st.builds(
    PipelinedBatch,
    st.lists(
        st.sampled_from(PIPED_VALID) | st.sampled_from(PIPED_CLOSING), min_size=1, max_size=12
    ).map(tuple),
    st.booleans(),
    st.lists(st.integers(1, 4000), max_size=3).map(lambda cuts: tuple(sorted(cuts))),
)


def answered(batch: PipelinedBatch) -> list[Piped]:
    """The requests the contract says are answered: up to the first whose answer
    closes the connection."""
    expected = []
    for request in batch.requests:
        expected.append(request)
        if request.closes:
            break
    return expected


async def pipelined_example(target: Target, batch: PipelinedBatch) -> None:
    wire = b"".join(request.wire for request in batch.requests)
    wire += INCOMPLETE if batch.incomplete else b""
    expected = answered(batch)
    head = [request.head for request in expected]
    answers, clean = await exchange(target.server.port, wire, head, cuts=batch.cuts)
    got = [answer.status for answer in answers]
    assert got == [request.status for request in expected], (
        f"sent {list(batch.requests)}; answers {got}"
    )
    assert clean, "the server reset the connection"
    for request, answer in zip(expected, answers, strict=True):
        if request.closes:
            assert answer.closes, f"{request}: no Connection: close"
        if answer.status >= 400:
            body = json.loads(answer.body)
            assert body["success"] is False and isinstance(body["error"], str), body


async def test_pipelined_http_is_answered_in_order_until_the_first_close() -> None:
    async with fuzzing() as target:
        fuzz = target.run_examples(
            pipelined_batches,
            lambda drawn: pipelined_example(target, drawn),
            examples=PIPELINED_EXAMPLES,
            explicit=tuple(
                PipelinedBatch((*PIPED_VALID, closing, *PIPED_VALID), incomplete, ())
                for closing in PIPED_CLOSING
                for incomplete in (False, True)
            ),
        )
        await trio.to_thread.run_sync(fuzz)


# === Control-message floods (issue 15) =================================================
#
# Every message a connection sends but a host's (or solo user's) audio counts against
# its control budget (protocols/README.md, Access and limits): past the burst each is
# answered with a recoverable ``error`` 429 and ignored, and a client that keeps on
# sending when refused (a burst's worth in a row) is closed 1008 (``status`` 429). A
# flood throws messages that each get exactly one reply, far past the burst and without
# reading, then reads: every reply is the message's defined answer or that 429 (never
# within the burst), in order, and a close, if any, comes after a burst of refusals.

FLOOD_EXAMPLES = 25
"""Floods per role (each up to about three bursts of messages)."""

flood_items: st.SearchStrategy[Item] = st.one_of(
    protocol_texts,
    st.builds(_as_text, mutated(), st.booleans()),
    broken_texts,
    st.binary(max_size=64).map(Binary),
)


@dataclass(frozen=True)
class Flood:
    """``pattern`` repeated to ``length`` messages, on a connection of ``role``."""

    role: str
    pattern: tuple[Item, ...]
    length: int


@st.composite
def floods(draw: st.DrawFn, burst: int) -> Flood:
    return Flood(
        draw(st.sampled_from(ROLES)),
        tuple(draw(st.lists(flood_items, min_size=1, max_size=6))),
        draw(st.integers(burst + 1, 3 * burst + 5)),
    )


def one_reply(peer: Peer, item: Item, target: Target) -> bool:
    """Whether ``item`` gets exactly one reply on ``peer``'s connection (what it says
    does not change that: only its kind does)."""
    answers = expect(replace(peer), item, target.limit, target.langs, target.burst_s)
    return not any(isinstance(answer, Silent | Closed) for answer in answers)


def is_refused(reply: dict[str, Any]) -> bool:
    return reply["type"] == "error" and reply["code"] == 429 and reply["closing"] is False


async def flood_example(target: Target, flood: Flood) -> None:
    session = None if flood.role == "solo" else await start_session(target.server)
    if session is None:
        path, peer = "/translate", Peer("solo", "", None)
    elif flood.role == "host":
        path, peer = session["wsUrl"], Peer("host", session["sessionId"], session["sessionCode"])
    else:
        path = f"/translate?role=listener&sessionId={session['sessionId']}&targetLang=es"
        peer = Peer("listener", session["sessionId"], session["sessionCode"], target="es")
    burst = target.server.config.control_burst
    try:
        async with conversation(target, path, peer) as talk:
            thrown = [
                item
                for n in range(flood.length)
                if one_reply(talk.peer, item := flood.pattern[n % len(flood.pattern)], target)
            ]
            try:
                for item in thrown:
                    if isinstance(item, Text):
                        await talk.client.ws.send_message(item.text)
                    else:
                        assert isinstance(item, Binary)
                        await talk.client.ws.send_message(item.data)
            except trio_websocket.ConnectionClosed:
                pass
            replies: list[dict[str, Any]] = []
            try:
                while len(replies) < len(thrown) or (replies and replies[-1].get("closing")):
                    replies.append(await talk.receive())
            except trio_websocket.ConnectionClosed as closed:
                talk.closed = closed.reason.code if closed.reason else -1
            check_flood(talk, thrown, replies, free=burst - 1, burst=burst)
    finally:
        if session is not None:
            await target.end_session(session)


def check_flood(
    talk: Conversation,
    thrown: list[Item],
    replies: list[dict[str, Any]],
    *,
    free: int,
    burst: int,
) -> None:
    """Each reply answers its message, in order: its defined answer (the peer's state
    then moves on as the contract says) or a 429, never among the first ``free`` (the
    burst, less what the greeting took); a close 1008 only after a burst of refusals in
    a row, as the last reply."""
    target = talk.target
    peer = talk.peer
    for index, (item, reply) in enumerate(zip(thrown, replies, strict=False)):
        if reply.get("closing") is True:
            assert index == len(replies) - 1, f"replies after the close: {replies[index:]}"
            assert reply["code"] == 1008 and reply["status"] == 429, reply
            assert talk.closed == 1008, f"closed with {talk.closed} after {reply}"
            assert all(is_refused(r) for r in replies[index - burst + 1 : index]), (
                f"closed at {index} without a burst of refusals before it"
            )
            return
        if is_refused(reply):
            assert index >= free, f"message {index} is within the burst: {item!r} got {reply}"
            assert reply.get("retryAfter", 0) >= 1, reply
            continue
        trial = replace(peer)
        answers = expect(trial, item, target.limit, target.langs, target.burst_s)
        assert any(matches(answer, trial, [reply], None) for answer in answers), (
            f"{peer.role} message {index} {item!r}\n  expected one of {answers}\n  got {reply}"
        )
        peer = trial
    assert talk.closed is None and len(replies) == len(thrown), (
        f"{len(replies)} replies to {len(thrown)} messages, close {talk.closed}"
    )


async def test_control_floods_are_refused_past_the_burst_and_closed_when_they_persist() -> None:
    async with fuzzing() as target:
        burst = target.server.config.control_burst
        fuzz = target.run_examples(
            floods(burst),
            lambda drawn: flood_example(target, drawn),
            examples=FLOOD_EXAMPLES,
            explicit=(
                Flood("listener", (TO_FRENCH,), 3 * burst),
                Flood("host", (BARE_PING, Binary(b"\x01")), 3 * burst),
                Flood("solo", (_text({"type": "init", "targetLang": "es"}),), 2 * burst),
            ),
        )
        await trio.to_thread.run_sync(fuzz)
