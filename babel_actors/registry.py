"""Live sessions by id and by code, each supervised in the registry's nursery."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Container

import trio

from babel_actors.clock import now_ms
from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.live import LiveSession
from babel_actors.metrics import Metrics
from babel_actors.session import Session
from babel_actors.stages import StageRecorder
from babel_actors.store import MemoryStore, SessionRecord, SessionStore

log = logging.getLogger(__name__)

CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
"""Session-code characters: no 0/O, 1/I/L look-alikes, so a code read aloud or off a
screen is typed right."""
CODE_LENGTH = 6

SharedSessionFactory = Callable[["Registry", SessionRecord], LiveSession]
"""Makes the session a node serves for a record of a ``shared`` store (the server
passes ``ClusterSession``'s maker: the registry knows no cluster)."""


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
    """The process's sessions. A session removes itself when it ends.

    With a ``shared`` store, coded sessions come from ``shared_session`` (the server's
    ``ClusterSession``): ``open`` and ``lookup`` find sessions that other nodes created
    and serve them here too. Raises
    ``StoreUnavailable`` (from ``start_session``, ``open``, ``lookup``) when the
    shared store cannot be reached and the session is not already served here.
    """

    def __init__(
        self,
        config: Config,
        stt: SpeechToText,
        mt: Translator,
        nursery: trio.Nursery,
        store: SessionStore | None = None,
        shared_session: SharedSessionFactory | None = None,
    ) -> None:
        self.config = config
        self.stt = stt
        self.mt = mt
        self._nursery = nursery
        self.store: SessionStore = store or MemoryStore()
        """Where sessions are shared (``/health`` reports it)."""
        if self.store.shared and shared_session is None:
            raise ValueError("a shared store needs a shared_session factory")
        self._shared_session = shared_session
        self._opening: dict[str, trio.Event] = {}
        self.metrics = Metrics(live=self.live)
        """This server's Prometheus metrics (``GET /metrics``); every session counts
        into it."""
        self.metrics.watch_circuits(
            [breaker for engine in (stt, mt) if (breaker := getattr(engine, "breaker", None))]
        )
        self.stages = StageRecorder(config.stage_samples, metrics=self.metrics)
        """Stage latencies of every session's captions (``GET /stats``, and the
        stage histograms of ``GET /metrics``)."""
        self.by_id: dict[str, LiveSession] = {}
        self.by_code: dict[str, LiveSession] = {}

    async def start_session(
        self, *, source_lang: str | None = None, solo: bool = False
    ) -> LiveSession:
        """Create a session and start its pipeline; solo sessions get no code."""
        if self.store.shared and not solo:
            return await self._start_shared(source_lang or self.config.default_source_lang)
        code = None if solo else new_code(self.by_code)
        session = Session(
            self.config,
            self.stt,
            self.mt,
            code=code,
            source_lang=source_lang,
            solo=solo,
            stages=self.stages,
            metrics=self.metrics,
        )
        self.by_id[session.id] = session
        if code is not None:
            self.by_code[code] = session
        await self._nursery.start(self._supervise, session)
        return session

    def get(self, session_id: str) -> LiveSession | None:
        session = self.by_id.get(session_id)
        return None if session is None or session.ending else session

    def find(self, code: str) -> LiveSession | None:
        session = self.by_code.get(normalize_code(code))
        return None if session is None or session.ending else session

    async def open(self, session_id: str) -> LiveSession | None:
        """``get``, or a session another node created, now served here too."""
        session = self.get(session_id)
        if session is not None or not self.store.shared or not session_id:
            return session
        while (opening := self._opening.get(session_id)) is not None:
            await opening.wait()
        session = self.get(session_id)
        if session is not None:
            return session
        self._opening[session_id] = trio.Event()
        try:
            record = await self.store.load(session_id)
            return None if record is None else await self._serve(record)
        finally:
            self._opening.pop(session_id).set()

    async def lookup(self, code: str) -> LiveSession | None:
        """``find``, or the session another node created with ``code``."""
        session = self.find(code)
        if session is not None or not self.store.shared:
            return session
        session_id = await self.store.resolve(normalize_code(code))
        return None if session_id is None else await self.open(session_id)

    def live(self) -> list[LiveSession]:
        return [s for s in self.by_id.values() if not s.ended.is_set()]

    def finish_all(self, reason: str, *, drain_s: float | None = None) -> None:
        """Finish every session (``LiveSession.finish``)."""
        for session in list(self.by_id.values()):
            session.finish(reason, drain_s=drain_s)

    async def _start_shared(self, source_lang: str) -> LiveSession:
        while True:
            record = SessionRecord(
                str(uuid.uuid4()),
                new_code(self.by_code),
                secrets.token_urlsafe(24),
                source_lang,
                now_ms(),
            )
            if await self.store.create(record):
                return await self._serve(record)

    async def _serve(self, record: SessionRecord) -> LiveSession:
        assert self._shared_session is not None
        session = self._shared_session(self, record)
        self.by_id[session.id] = session
        self.by_code[record.code] = session
        await self._nursery.start(self._supervise, session)
        return session

    async def _supervise(
        self,
        session: LiveSession,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``session``; a crash is logged and ends that session only."""
        try:
            await session.run(task_status=task_status)
        except Exception:
            log.exception("session %s crashed", session.id, extra={"session_id": session.id})
        finally:
            self.by_id.pop(session.id, None)
            if session.code is not None:
                self.by_code.pop(session.code, None)
            self.metrics.session_ended(session.end_reason)
