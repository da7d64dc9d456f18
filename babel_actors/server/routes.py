"""The HTTP API of ``protocols/openapi.yaml``: requests in, (status, JSON body) out.

Access rules and limits are the guard's: a refused request raises ``Refusal``, which
the HTTP layer answers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any
from urllib.parse import urlencode

import attrs

from babel_actors.engines.base import hears, translation_route
from babel_actors.errors import UnsupportedLanguage
from babel_actors.events import AUTO_LANGUAGE
from babel_actors.live import LiveSession
from babel_actors.registry import Registry
from babel_actors.server.guard import Guard
from babel_actors.server.static import StaticSite
from babel_actors.stages import process_usage
from babel_actors.store import StoreUnavailable
from babel_actors.wire.client import is_language, loads_json
from babel_actors.wire.query import MAX_USER_NAME, socket_query_problem

Reply = tuple[int, dict[str, Any]]

OPERATOR_PATHS = frozenset({"/sessions", "/stats", "/stats/reset", "/metrics"})
"""Routes that need the operator key, when one is configured."""
WEBSOCKET_PATH = "/translate"

_METHODS = {
    "/session/start": ("POST",),
    "/session/join": ("POST",),
    "/health": ("GET", "HEAD"),
    "/sessions": ("GET", "HEAD"),
    "/stats": ("GET", "HEAD"),
    "/stats/reset": ("POST",),
    "/metrics": ("GET", "HEAD"),
    WEBSOCKET_PATH: ("GET",),
}


def allowed_methods(path: str) -> tuple[str, ...] | None:
    """The methods ``path`` takes (for ``Allow``), or None when there is no such path."""
    if path in _METHODS:
        return _METHODS[path]
    if _info_code(path) is not None:
        return ("GET", "HEAD")
    return None


def _info_code(path: str) -> str | None:
    parts = path.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "session" and parts[2] == "info":
        return parts[1]
    return None


@attrs.frozen
class Request:
    """One HTTP request, as the routes see it."""

    method: str
    """``GET``, ``POST``, ..."""
    path: str
    """The target's path, without the query."""
    body: bytes
    """The whole body (its size is already bounded)."""
    query: Mapping[str, str]
    """The query's parameters, blank ones too."""
    headers: Mapping[str, str]
    """Header values by lower-case name."""
    client: str
    """The client's address (``Guard.client``)."""


class Api:
    """Route handlers over a registry and a guard; every handler is cheap, and awaits
    only the session store."""

    def __init__(self, registry: Registry, guard: Guard) -> None:
        self.registry = registry
        self.guard = guard
        self.started = time.monotonic()
        self.site = StaticSite.from_package()

    async def handle(self, request: Request) -> Reply:
        """Dispatch one request. Unknown paths get 404, wrong methods 405 (the caller
        adds ``Allow``), a plain GET of the WebSocket endpoint 426. Raises ``Refusal``
        for a missing key or a limit."""
        path, method = request.path, request.method
        methods = allowed_methods(path)
        if methods is None:
            return 404, _failure(f"no route for {path}")
        if method not in methods:
            return 405, _failure(f"use {' or '.join(m for m in methods if m != 'HEAD')}")
        if path in OPERATOR_PATHS:
            self.guard.check_operator(request.headers)
        if path == WEBSOCKET_PATH:
            problem = socket_query_problem(request.query)
            if problem is not None:
                return 400, _failure(problem)
            return 426, _failure("this endpoint speaks WebSocket only")
        if path == "/session/start":
            owner = self.guard.session_owner(request.headers, request.client)
            return await self._post(request, partial(self.start_session, owner=owner))
        if path == "/session/join":
            return await self._post(request, partial(self.join_session, client=request.client))
        if path == "/health":
            return self.health()
        if path == "/sessions":
            return self.sessions()
        if path == "/stats":
            return self.stats()
        if path == "/stats/reset":
            return await self._post(request, self.reset_stats)
        code = _info_code(path)
        assert code is not None
        return await self.session_info(code, request.client)

    async def start_session(self, body: dict[str, Any], owner: str) -> Reply:
        source = body.get("sourceLang")
        if "sourceLang" in body:
            if not (is_language(source) or source == AUTO_LANGUAGE):
                return 400, _failure("sourceLang must be a language code such as 'en', or 'auto'")
            if not hears(self.registry.stt, source):
                error = UnsupportedLanguage(
                    self.registry.stt.name, source, self.registry.stt.languages()
                )
                return 400, _failure(str(error))
        with self.guard.session_place(owner) as started:
            try:
                session = await self.registry.start_session(source_lang=source)
            except StoreUnavailable as exc:
                return 503, _failure(str(exc))
            started(session)
        query = urlencode({"role": "host", "sessionId": session.id, "token": session.host_token})
        return 200, {
            "success": True,
            "sessionId": session.id,
            "sessionCode": session.code,
            "hostToken": session.host_token,
            "sourceLang": session.source_lang,
            "wsUrl": f"/translate?{query}",
        }

    async def join_session(self, body: dict[str, Any], client: str) -> Reply:
        code = body.get("sessionCode")
        if not isinstance(code, str) or not code.strip():
            return 400, _failure("sessionCode is required")
        session = await self._lookup(code, client)
        if isinstance(session, tuple):
            return session
        self.guard.check_listeners(session)
        target = body.get("targetLang", session.source_lang)
        if not is_language(target):
            return 400, _failure("targetLang must be a language code such as 'es'")
        try:
            session.check_target(target)
        except UnsupportedLanguage as exc:
            return 400, _failure(str(exc))
        name = body.get("userName", "")
        if not isinstance(name, str) or len(name) > MAX_USER_NAME:
            return 400, _failure(f"userName must be a string of at most {MAX_USER_NAME} characters")
        name = name or "Anonymous"
        params = {
            "role": "listener",
            "sessionId": session.id,
            "targetLang": target,
            "userName": name,
        }
        return 200, {
            "success": True,
            "sessionId": session.id,
            "sessionCode": session.code,
            "sourceLang": session.source_lang,
            "targetLang": target,
            # JSON strings may hold lone surrogates (a \ud800 escape), which UTF-8 cannot encode.
            "wsUrl": f"/translate?{urlencode(params, errors='replace')}",
        }

    async def session_info(self, code: str, client: str) -> Reply:
        session = await self._lookup(code, client)
        if isinstance(session, tuple):
            return session
        return 200, {"success": True, "session": session.info()}

    async def _lookup(self, code: str, client: str) -> LiveSession | Reply:
        """The session with ``code``, or the reply: 404, or 503 when the store is
        unreachable. A join attempt of ``client``: raises ``Refusal`` (429) when it is
        locked out, before the lookup or after it (``Guard.check_join``); a 404 counts
        as a failed join."""
        self.guard.check_join(client)
        try:
            session = await self.registry.lookup(code)
        except StoreUnavailable as exc:
            return 503, _failure(str(exc))
        self.guard.check_join(client)
        if session is None:
            self.guard.join_failed(client)
            return 404, _failure("session not found")
        return session

    def sessions(self) -> Reply:
        listed = [s.info() for s in self.registry.live() if s.code is not None]
        return 200, {"success": True, "sessions": listed}

    def stats(self) -> Reply:
        """Stage latencies and this process's CPU and memory (the bench reads them)."""
        live = self.registry.live()
        return 200, {
            "success": True,
            "process": process_usage(),
            "activeSessions": len(live),
            "members": sum(len(s.audience) for s in live),
            "stages": self.registry.stages.summary(),
        }

    async def reset_stats(self, body: dict[str, Any]) -> Reply:
        self.registry.stages.reset()
        return 200, {"success": True}

    def health(self) -> Reply:
        stt, mt = self.registry.stt, self.registry.mt
        return 200, {
            "status": "ok",
            "activeSessions": len(self.registry.live()),
            "transcriptionProvider": stt.name,
            "translationProvider": mt.name,
            "endpoint": "/translate",
            "sttLanguages": sorted(stt.languages()),
            "mtPairs": {src: sorted(mt.targets(src)) for src in sorted(mt.sources())},
            "mtRoutes": {
                src: {tgt: list(translation_route(mt, src, tgt)) for tgt in sorted(mt.targets(src))}
                for src in sorted(mt.sources())
            },
            "uptimeSeconds": round(time.monotonic() - self.started, 3),
            "store": self.registry.store.health(),
        }

    @staticmethod
    async def _post(
        request: Request, handler: Callable[[dict[str, Any]], Awaitable[Reply]]
    ) -> Reply:
        body = request.body
        try:
            data = loads_json(body) if body.strip() else {}
        except (ValueError, RecursionError):
            # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer
            # literal past Python's int-digit limit, which json.loads refuses unnamed.
            return 400, _failure("the body is not valid JSON")
        if not isinstance(data, dict):
            return 400, _failure("the body must be a JSON object")
        return await handler(data)


def _failure(message: str) -> dict[str, Any]:
    return {"success": False, "error": message}
