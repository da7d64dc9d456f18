"""Live sessions by id and by code, each supervised in the registry's nursery."""

from __future__ import annotations

import secrets
from collections.abc import Container

import trio

from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.session import Session

CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
"""Session-code characters: no 0/O, 1/I/L look-alikes, so a code read aloud or off a
screen is typed right."""
CODE_LENGTH = 6


def new_code(taken: Container[str]) -> str:
    """A fresh session code from the CSPRNG, unused in ``taken``."""
    while True:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        if code not in taken:
            return code


def normalize_code(code: str) -> str:
    """Codes are case-insensitive; the registry keys them upper-case."""
    return code.strip().upper()


class Registry:
    """The process's sessions. A session removes itself when it ends."""

    def __init__(
        self, config: Config, stt: SpeechToText, mt: Translator, nursery: trio.Nursery
    ) -> None:
        self.config = config
        self.stt = stt
        self.mt = mt
        self._nursery = nursery
        self.by_id: dict[str, Session] = {}
        self.by_code: dict[str, Session] = {}

    async def start_session(self, *, source_lang: str | None = None, solo: bool = False) -> Session:
        """Create a session and start its pipeline; solo sessions get no code."""
        code = None if solo else new_code(self.by_code)
        session = Session(
            self.config, self.stt, self.mt, code=code, source_lang=source_lang, solo=solo
        )
        self.by_id[session.id] = session
        if code is not None:
            self.by_code[code] = session
        await self._nursery.start(self._supervise, session)
        return session

    def get(self, session_id: str) -> Session | None:
        session = self.by_id.get(session_id)
        return None if session is None or session.ended.is_set() else session

    def find(self, code: str) -> Session | None:
        session = self.by_code.get(normalize_code(code))
        return None if session is None or session.ended.is_set() else session

    def live(self) -> list[Session]:
        return [s for s in self.by_id.values() if not s.ended.is_set()]

    def end_all(self, reason: str, message: str) -> None:
        for session in list(self.by_id.values()):
            session.end(reason, message)

    async def _supervise(
        self, session: Session, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await session.run(task_status=task_status)
        finally:
            self.by_id.pop(session.id, None)
            if session.code is not None:
                self.by_code.pop(session.code, None)
