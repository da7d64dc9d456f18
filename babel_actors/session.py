"""A session served in this process: a ``Room`` fed by a ``Pipeline``, and its life.

::

    feed() --> Pipeline (ingest, stt, splitter, translator, broadcaster) --> Room --> members
"""

from __future__ import annotations

import logging
import secrets
import uuid
from typing import Any

import trio

from babel_actors.audience import Audience, Member, Role
from babel_actors.clock import now_ms
from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText, Translator, hears
from babel_actors.errors import UnsupportedLanguage
from babel_actors.events import AUTO_LANGUAGE
from babel_actors.glossary import Glossary
from babel_actors.history import History
from babel_actors.lifetime import ENDED_MESSAGES, judge
from babel_actors.logs import bind_session
from babel_actors.metrics import Metrics
from babel_actors.pipeline import Pipeline
from babel_actors.renderer import Renderer
from babel_actors.room import Greet, Room
from babel_actors.stages import StageRecorder
from babel_actors.wire.closes import GOING_AWAY, NORMAL, SERVER_ERROR
from babel_actors.wire.server import SERVICE_UNAVAILABLE, error_message

log = logging.getLogger(__name__)

_CLOSE_CODES = {"shutdown": GOING_AWAY, "error": SERVER_ERROR}
"""Close codes of ``session_ended`` reasons that are not a normal closure."""


def reachable(mt: Translator, source: str) -> frozenset[str]:
    """What listeners of speech in ``source`` can read: ``source`` and its targets; for
    ``auto``, every language some source reaches (a caption heard in a language that
    does not reach the reader's comes as source text, flagged)."""
    if source == AUTO_LANGUAGE:
        found = set(mt.sources())
        for language in mt.sources():
            found |= mt.targets(language)
        return frozenset(found | {source})
    return mt.targets(source) | {source}


def check_target(mt: Translator, language: str, source: str) -> None:
    """Raise ``UnsupportedLanguage`` unless listeners can read ``language`` of speech
    in ``source``."""
    available = reachable(mt, source)
    if language not in available:
        raise UnsupportedLanguage(mt.name, language, available)


class Session:
    """One live session: its pipeline, its room, its life.

    Create it, start ``run`` in a nursery (``await nursery.start(session.run)``), feed
    it host audio, add members. It ends in one of two ways:

    - ``finish``: the pipeline drains (what was said is still recognised, translated
      and delivered, for ``drain_s`` at most), then members get ``session_ended`` and
      are closed. For a host that ended, a host that never came back, a shutdown, an
      embedder leaving ``open_session``.
    - ``cancel``: at once, for errors.

    It counts into ``metrics`` (its server's; by default one of its own). Its records
    carry its id (``logs``): the actors' and, once they join, its members' connections'.
    """

    def __init__(
        self,
        config: Config,
        stt: SpeechToText,
        mt: Translator,
        *,
        code: str | None = None,
        source_lang: str | None = None,
        solo: bool = False,
        stages: StageRecorder | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.stt = stt
        self.mt = mt
        self.id = str(uuid.uuid4())
        self.code = code
        self.solo = solo
        self.host_token = secrets.token_urlsafe(24)
        self.source_lang = source_lang or config.default_source_lang
        self.glossary = Glossary()
        """Forced translations and kept words, set by the host (``init.glossary``)."""
        self.created_ms = now_ms()
        self.last_activity_ms = self.created_ms
        self.renderer = Renderer(
            mt,
            History(config.history_size),
            timeout_s=config.translate_timeout_s,
            context_segments=config.context_segments,
            glossary=lambda: self.glossary,
            metrics=self.metrics,
        )
        self.room = Room(config, self.renderer, metrics=self.metrics, on_change=self._touch)
        self.pipeline = Pipeline(
            config,
            stt,
            self.renderer,
            deliver=self.room.deliver,
            languages=self.room.languages,
            source_lang=self.source_lang,
            on_error=self._engine_failed,
            stages=stages,
            metrics=self.metrics,
        )
        self.ended = trio.Event()
        """Set once members have been told the session ended."""
        self.end_reason = ""
        self._host_ever = False
        self._created_at = self._host_left_at = trio.current_time()
        self._changed = trio.Event()
        self._scope = trio.CancelScope()
        self._drained = trio.Event()
        self._nursery: trio.Nursery | None = None

    @property
    def audience(self) -> Audience:
        return self.room.audience

    @property
    def history(self) -> History:
        return self.room.history

    @property
    def host(self) -> Member | None:
        return self.room.host

    @property
    def sample_rate(self) -> int:
        return self.pipeline.sample_rate

    @sample_rate.setter
    def sample_rate(self, rate: int) -> None:
        self.pipeline.sample_rate = rate

    @property
    def ending(self) -> bool:
        """Whether the session is finishing or has ended: it takes no new members."""
        return bool(self.end_reason)

    # --- languages -------------------------------------------------------------

    def check_source(self, language: str) -> None:
        """Raise ``UnsupportedLanguage`` unless the STT engine hears ``language``."""
        if not hears(self.stt, language):
            raise UnsupportedLanguage(self.stt.name, language, self.stt.languages())

    def check_target(self, language: str, source: str | None = None) -> None:
        """Raise ``UnsupportedLanguage`` unless listeners can read ``language`` (of
        speech in ``source``, by default the session's language)."""
        check_target(self.mt, language, source or self.source_lang)

    async def set_source_language(self, language: str) -> None:
        """The host speaks ``language`` from the audio fed next on."""
        self.check_source(language)
        if language != self.source_lang:
            self.source_lang = language
            host = self.host
            if host is not None and host.role is Role.HOST:
                self.room.change_language(host, language)
            await self.pipeline.set_source_language(language)

    async def set_glossary(self, glossary: Glossary) -> None:
        """Use ``glossary`` from the next translation on, and reopen the speech stream
        with its words as recognition hints."""
        if glossary != self.glossary:
            self.glossary = glossary
            await self.pipeline.set_glossary(glossary)

    # --- the host's side -------------------------------------------------------

    async def feed(self, pcm: bytes, sample_rate: int | None = None) -> None:
        """Queue host PCM for the pipeline. Blocks while the pipeline is behind;
        ignored once the session is ending."""
        self.last_activity_ms = now_ms()
        await self.pipeline.feed(pcm, sample_rate)

    async def end_of_speech(self) -> None:
        """The speaker stopped: what the engine holds becomes a final."""
        await self.pipeline.end_of_speech()

    def attach_host(self, host: Member) -> None:
        """``host`` is now the session's host; an earlier host connection is closed."""
        previous, self.room.host = self.room.host, host
        if previous is not None:
            self.room.audience.remove(previous)
            previous.close(NORMAL, "replaced by a newer host connection")
        self._host_ever = True
        self._join(host)
        self.room.seat(host)

    def detach_host(self, host: Member) -> None:
        """The host's connection ended; the grace period starts."""
        self.room.audience.remove(host)
        if self.room.host is host:
            self.room.host = None
            self._host_left_at = trio.current_time()
        self._touch()

    # --- listeners -------------------------------------------------------------

    async def add_member(
        self, member: Member, *, last_seq: int | None = None, greet: Greet | None = None
    ) -> int | None:
        """Add ``member`` after the finals it missed (``Room.add_member``); returns
        where its replay started."""
        self._join(member)
        return await self.room.add_member(member, last_seq=last_seq, greet=greet)

    def remove_member(self, member: Member) -> None:
        self.room.remove_member(member)

    def change_language(self, member: Member, language: str) -> None:
        """Move ``member`` to ``language`` from the next segment on."""
        self.check_target(language)
        self.room.change_language(member, language)

    def stats(self) -> dict[str, Any]:
        return self.room.stats()

    def send_stats(self) -> None:
        self.room.send_stats()

    def notify_error(self, text: str, code: int) -> None:
        """Tell every member about a problem that does not end the session."""
        self.room.notify(error_message(text, code))

    def info(self) -> dict[str, Any]:
        """The session as ``/session/{code}/info`` shows it."""
        stats = self.stats()
        return {
            "sessionId": self.id,
            "sessionCode": self.code,
            "isActive": self.host is not None,
            "listenerCount": stats["listenerCount"],
            "languages": stats["languages"],
            "languageCounts": stats["languageCounts"],
            "sourceLang": self.source_lang,
            "createdAt": self.created_ms,
            "lastActivity": self.last_activity_ms,
            "duration": now_ms() - self.created_ms,
        }

    # --- lifecycle -------------------------------------------------------------

    def finish(
        self, reason: str, message: str | None = None, *, drain_s: float | None = None
    ) -> None:
        """End the session once the pipeline has drained (``drain_s``, by default
        ``config.drain_s``, at most): members then get ``session_ended`` (``reason``)
        and are closed. Returns at once; ``ended`` is set when it is done. Idempotent:
        the first way of ending wins."""
        if self.ending:
            return
        self.end_reason = reason
        message = message or ENDED_MESSAGES.get(reason, "The session has ended.")
        deadline = self.config.drain_s if drain_s is None else drain_s
        log.info("session %s finishing: %s", self.id, reason, extra={"session_id": self.id})
        if self._nursery is None:
            self._close(reason, message)
        else:
            self._nursery.start_soon(self._drain, reason, message, deadline)

    def cancel(self, reason: str, message: str | None = None) -> None:
        """End the session now: the pipeline is cancelled, members get
        ``session_ended`` and are closed (1011 for ``error``). Idempotent; also cuts
        a drain short."""
        if self.ended.is_set():
            return
        self.end_reason = self.end_reason or reason
        self._close(reason, message or ENDED_MESSAGES.get(reason, "The session has ended."))


    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise the pipeline until the session ends.

        Cancellation: ``cancel`` (and the end of ``finish``) cancels it; so does
        cancelling the caller's scope, which ends the session at once.
        Error handling: a crash in any actor ends the session at once (members get
        ``session_ended`` with reason ``error`` and a 1011 close), then propagates:
        the server contains it per session, an embedder sees it.
        """
        bind_session(self.id)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self._run_pipeline)
                    nursery.start_soon(self._expire)
                    nursery.start_soon(self.room.pace_stats)
                    task_status.started()
        except Exception:
            self.end_reason = "error"
            self._close("error", ENDED_MESSAGES["error"])
            raise
        finally:
            self._nursery = None
            self._close(self.end_reason or "ended", "The session has ended.")

    async def _run_pipeline(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await self.pipeline.run(task_status=task_status)
        finally:
            self._drained.set()

    async def _drain(self, reason: str, message: str, deadline_s: float) -> None:
        with trio.move_on_after(deadline_s) as waited:
            await self.pipeline.finish()
            await self._drained.wait()
        if waited.cancelled_caught:
            log.warning(
                "session %s: pipeline still busy after %ss; cancelled",
                self.id,
                deadline_s,
                extra={"session_id": self.id},
            )
        self._close(reason, message)

    def _close(self, reason: str, message: str) -> None:
        if self.ended.is_set():
            return
        wire_reason = "expired" if reason == "lifetime" else reason
        self.room.close(wire_reason, message, _CLOSE_CODES.get(reason, NORMAL))
        self.end_reason = wire_reason
        self.ended.set()
        self._scope.cancel()
        log.info("session %s ended: %s", self.id, wire_reason, extra={"session_id": self.id})

    async def _expire(self) -> None:
        """Finish the session when its host stays away past the grace period, when
        nobody ever used it for ``session_idle_s``, or at ``max_session_s``."""
        while True:
            verdict = judge(
                self.config,
                now=trio.current_time(),
                created=self._created_at,
                host_here=self.host is not None,
                host_seen=self._host_ever,
                away_since=self._host_left_at,
                solo=self.solo,
            )
            if verdict.reason is not None:
                self.finish(verdict.reason)
                return
            with trio.move_on_at(verdict.next_check):
                await self._changed.wait()
                self._changed = trio.Event()

    def _engine_failed(self, text: str) -> None:
        self.notify_error(text, SERVICE_UNAVAILABLE)

    def _join(self, member: Member) -> None:
        """``member`` joins: it counts into this session's metrics, and the calling
        task (its connection's) logs with this session's id from now on."""
        member.count_into(self.metrics.member_counters(member.role))
        bind_session(self.id)

    def _touch(self) -> None:
        self.last_activity_ms = now_ms()
        self._changed.set()
