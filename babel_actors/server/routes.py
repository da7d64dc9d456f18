"""The HTTP API of ``protocols/openapi.yaml``: requests in, (status, JSON body) out."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

from babel_actors.errors import UnsupportedLanguage
from babel_actors.registry import Registry
from babel_actors.server.static import StaticSite
from babel_actors.stages import process_usage
from babel_actors.store import StoreUnavailable
from babel_actors.wire.client import is_language

Reply = tuple[int, dict[str, Any]]

MAX_USER_NAME = 50


class Api:
    """Route handlers over a registry; every handler is synchronous and cheap."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.started = time.monotonic()
        self.site = StaticSite.from_package()

    async def handle(self, method: str, path: str, body: bytes) -> Reply:
        """Dispatch one request. Unknown paths get 404, wrong methods 405."""
        if path == "/session/start":
            return await self._post(method, self.start_session, body)
        if path == "/session/join":
            return await self._post(method, self.join_session, body)
        if path == "/health":
            return self._get(method, self.health)
        if path == "/sessions":
            return self._get(method, self.sessions)
        if path == "/stats":
            return self._get(method, self.stats)
        if path == "/stats/reset":
            return await self._post(method, self.reset_stats, body)
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "session" and parts[2] == "info":
            if method not in ("GET", "HEAD"):
                return 405, _failure("use GET")
            return await self.session_info(parts[1])
        return 404, _failure(f"no route for {path}")

    async def start_session(self, body: dict[str, Any]) -> Reply:
        source = body.get("sourceLang")
        if source is not None:
            if not is_language(source):
                return 400, _failure("sourceLang must be a language code such as 'en'")
            if source not in self.registry.stt.languages():
                error = UnsupportedLanguage(
                    self.registry.stt.name, source, self.registry.stt.languages()
                )
                return 400, _failure(str(error))
        try:
            session = await self.registry.start_session(source_lang=source)
        except StoreUnavailable as exc:
            return 503, _failure(str(exc))
        query = urlencode({"role": "host", "sessionId": session.id, "token": session.host_token})
        return 200, {
            "success": True,
            "sessionId": session.id,
            "sessionCode": session.code,
            "hostToken": session.host_token,
            "sourceLang": session.source_lang,
            "wsUrl": f"/translate?{query}",
        }

    async def join_session(self, body: dict[str, Any]) -> Reply:
        code = body.get("sessionCode")
        if not isinstance(code, str) or not code.strip():
            return 400, _failure("sessionCode is required")
        try:
            session = await self.registry.lookup(code)
        except StoreUnavailable as exc:
            return 503, _failure(str(exc))
        if session is None:
            return 404, _failure("session not found")
        target = body.get("targetLang") or session.source_lang
        if not is_language(target):
            return 400, _failure("targetLang must be a language code such as 'es'")
        try:
            session.check_target(target)
        except UnsupportedLanguage as exc:
            return 400, _failure(str(exc))
        name = body.get("userName") or "Anonymous"
        if not isinstance(name, str) or len(name) > MAX_USER_NAME:
            return 400, _failure(f"userName must be a string of at most {MAX_USER_NAME} characters")
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

    async def session_info(self, code: str) -> Reply:
        try:
            session = await self.registry.lookup(code)
        except StoreUnavailable as exc:
            return 503, _failure(str(exc))
        if session is None:
            return 404, _failure("session not found")
        return 200, {"success": True, "session": session.info()}

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
            "uptimeSeconds": round(time.monotonic() - self.started, 3),
            "store": self.registry.store.health(),
        }

    async def _post(self, method: str, handler: Any, body: bytes) -> Reply:
        if method != "POST":
            return 405, _failure("use POST")
        try:
            data = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError):
            # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer
            # literal past Python's int-digit limit, which json.loads refuses unnamed.
            return 400, _failure("the body is not valid JSON")
        if not isinstance(data, dict):
            return 400, _failure("the body must be a JSON object")
        reply: Reply = await handler(data)
        return reply

    @staticmethod
    def _get(method: str, handler: Any) -> Reply:
        if method not in ("GET", "HEAD"):
            return 405, _failure("use GET")
        reply: Reply = handler()
        return reply


def _failure(message: str) -> dict[str, Any]:
    return {"success": False, "error": message}
