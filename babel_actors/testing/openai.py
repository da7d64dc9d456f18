"""A local OpenAI-compatible HTTP server for tests and the bench (trio + h11).

It answers ``POST /v1/chat/completions`` as OpenAI does, with a translation made by a
function of the request (by default ``"<target> <text>"`` for the target language the
system prompt names), and records every request. Queue ``Reply`` values to make the
next requests fail: a status with headers (429 with ``retry-after``, 500), or a hang
that never answers. ``rate_limited`` and ``quota_exceeded`` make 429s as OpenAI sends
them: its header set (``x-ratelimit-*``, no ``retry-after``) and message text.
Like OpenAI, it refuses ``max_tokens`` from reasoning models (``o1``, ``o3``, ``o4``,
``gpt-5``), which take only ``max_completion_tokens``.

Run it alone with ``python -m babel_actors.testing.openai [--port N] [--log FILE]``: it
prints its port and answers every request at once; ``--log`` appends a JSON line per
answered request with its target language, text, and the ``time.monotonic()`` of its
arrival and of its answer (one clock for every process on a Linux machine): the bench
times translations from there.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio

_MAX_BODY = 1 << 20
_TARGET = re.compile(r"into ([A-Z][\w ]*?)(?: \(|\.)")


@attrs.frozen
class Reply:
    """A scripted answer to one request."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: Any = None
    """JSON to send; None sends the default completion (or an error body)."""
    hang: bool = False
    """Never answer; the client must time out."""


@attrs.define
class SeenRequest:
    """A request as the server received it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float
    """``trio.current_time()`` on arrival."""
    received: float = 0.0
    """``time.monotonic()`` when the request's last bytes were read."""
    answered: float | None = None
    """``time.monotonic()`` once the answer was handed to the kernel; None until then
    (or when it never is)."""

    @property
    def system(self) -> str:
        return str(self.body["messages"][0]["content"])

    @property
    def text(self) -> str:
        return str(self.body["messages"][-1]["content"])

    @property
    def target(self) -> str:
        """The target language as the system prompt names it (``Spanish``), or ``?``."""
        match = _TARGET.search(self.system)
        return match[1] if match else "?"


def rate_limited(
    *,
    limit: str = "tokens",
    reset_s: float = 1.2,
    model: str = "gpt-4o",
    requested: int = 573,
    per_minute: int = 30000,
    retry_after: str | None = None,
) -> Reply:
    """A 429 as OpenAI sends it when ``limit`` (``tokens`` or ``requests``) is spent:
    the six ``x-ratelimit-*`` headers, ``retry-after`` only when given, and the
    message's "Please try again in ..." hint."""
    wait = f"{round(reset_s * 1000)}ms" if reset_s < 1 else f"{reset_s:g}s"
    other = "requests" if limit == "tokens" else "tokens"
    headers = [
        (f"x-ratelimit-limit-{limit}", str(per_minute)),
        (f"x-ratelimit-remaining-{limit}", "0"),
        (f"x-ratelimit-reset-{limit}", wait),
        (f"x-ratelimit-limit-{other}", "500"),
        (f"x-ratelimit-remaining-{other}", "499"),
        (f"x-ratelimit-reset-{other}", "120ms"),
    ]
    if retry_after is not None:
        headers.append(("retry-after", retry_after))
    short = "TPM" if limit == "tokens" else "RPM"
    message = (
        f"Rate limit reached for {model} in organization org-emulator on {limit} per min"
        f" ({short}): Limit {per_minute}, Used {per_minute - requested // 2}, Requested"
        f" {requested}. Please try again in {wait}. Visit"
        " https://platform.openai.com/account/rate-limits to learn more."
    )
    body = {
        "error": {"message": message, "type": limit, "param": None, "code": "rate_limit_exceeded"}
    }
    return Reply(429, tuple(headers), body)


def quota_exceeded() -> Reply:
    """The 429 OpenAI sends when the account's credit is spent: retrying cannot help."""
    message = (
        "You exceeded your current quota, please check your plan and billing details. For"
        " more information on this error, read the docs:"
        " https://platform.openai.com/docs/guides/error-codes/api-errors."
    )
    body = {
        "error": {
            "message": message,
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    return Reply(429, (), body)


_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")


def _refusal(body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's 400 for a request it would refuse, or None."""
    model = str(body.get("model", ""))
    if "max_tokens" in body and _REASONING_MODEL.match(model):
        message = (
            "Unsupported parameter: 'max_tokens' is not supported with this model."
            " Use 'max_completion_tokens' instead."
        )
        error = {"message": message, "type": "invalid_request_error"}
        return {"error": {**error, "param": "max_tokens", "code": "unsupported_parameter"}}
    return None


def tagged_translation(request: SeenRequest) -> str:
    """The default translation: ``"[Spanish] text"``, the language as the prompt says."""
    return f"[{request.target}] {request.text}"


class FakeOpenAI:
    """The server's behaviour and records; serve it with ``running_openai``."""

    def __init__(self, translate: Callable[[SeenRequest], str] = tagged_translation) -> None:
        self.translate = translate
        self.replies: deque[Reply] = deque()
        """Scripted answers, used one per request before ``default_reply``."""
        self.default_reply = Reply()
        """The answer when no scripted one is left (200: a ``translate`` completion)."""
        self.requests: list[SeenRequest] = []
        self.on_answer: Callable[[SeenRequest], None] = lambda request: None
        """Called once an answer has been written (``request.answered`` is set)."""
        self.port = 0
        self._changed = trio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def wait_for_requests(self, count: int) -> None:
        while len(self.requests) < count:
            await self._changed.wait()

    async def serve(
        self, *, port: int = 0, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_BODY)
        async with stream:
            while True:
                request = await self._read_request(stream, conn)
                if request is None:
                    return
                refusal = _refusal(request.body)
                if refusal is not None:
                    reply = Reply(400, (), refusal)
                else:
                    reply = self.replies.popleft() if self.replies else self.default_reply
                if reply.hang:
                    await self._wait_for_close(stream)
                    return
                await self._respond(stream, conn, request, reply)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> SeenRequest | None:
        target, headers, body = "", {}, bytearray()
        received = time.monotonic()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                received = time.monotonic()
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                target = event.target.decode()
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                seen = SeenRequest(target, headers, json.loads(body), trio.current_time(), received)
                self.requests.append(seen)
                self._changed.set()
                self._changed = trio.Event()
                return seen
            else:
                return None

    async def _wait_for_close(self, stream: trio.SocketStream) -> None:
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _respond(
        self, stream: trio.SocketStream, conn: h11.Connection, request: SeenRequest, reply: Reply
    ) -> None:
        if reply.body is not None:
            body = reply.body
        elif reply.status == 200:
            body = _completion(request, self.translate(request))
        else:
            body = {"error": {"message": f"scripted {reply.status}", "type": "scripted"}}
        data = json.dumps(body).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(data))),
            *reply.headers,
        ]
        # One write for the whole answer, as a server that answers at once would.
        answer = b"".join(
            conn.send(event) or b""
            for event in (
                h11.Response(status_code=reply.status, headers=headers),
                h11.Data(data=data),
                h11.EndOfMessage(),
            )
        )
        try:
            await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        request.answered = time.monotonic()
        self.on_answer(request)


def _completion(request: SeenRequest, content: str) -> dict[str, Any]:
    prompt = sum(len(str(m["content"])) for m in request.body["messages"]) // 4
    return {
        "id": f"chatcmpl-{len(content)}",
        "object": "chat.completion",
        "created": 0,
        "model": request.body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": len(content) // 4,
            "total_tokens": prompt + len(content) // 4,
        },
    }


@asynccontextmanager
async def running_openai(fake: FakeOpenAI | None = None) -> AsyncIterator[FakeOpenAI]:
    """Serve ``fake`` (a fresh one by default) on 127.0.0.1 and a free port."""
    fake = fake or FakeOpenAI()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description="A local OpenAI-compatible server.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--log",
        help="append a JSON line per answered request to this file: target, text, "
        "received and answered (time.monotonic())",
    )
    args = parser.parse_args()

    async def serve() -> None:
        fake = FakeOpenAI()
        if args.log:
            fake.on_answer = _answer_log(args.log)
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(fake.serve, port=args.port))
            print(fake.port, flush=True)

    try:
        trio.run(serve)
    except KeyboardInterrupt:
        pass


def _answer_log(path: str) -> Callable[[SeenRequest], None]:
    """An ``on_answer`` that appends each request to ``path`` with one unbuffered
    ``O_APPEND`` write, so a terminated server has written every line it timed."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(request: SeenRequest) -> None:
        line = {
            "target": request.target,
            "text": request.text,
            "received": request.received,
            "answered": request.answered,
        }
        os.write(fd, (json.dumps(line) + "\n").encode())

    return log


if __name__ == "__main__":
    main()
