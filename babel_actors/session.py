"""The session supervisor: one nursery, the channels, the actors, the lifecycle.

::

    feed() --> ingest --> stt --> splitter --> translator --> broadcaster --> members
"""

from __future__ import annotations

import logging
import math
import secrets
import uuid
from functools import partial
from typing import Any

import trio

from babel_actors import logs
from babel_actors.actors.broadcaster import run_broadcaster
from babel_actors.actors.ingest import Resampler, run_ingest
from babel_actors.actors.splitter import Splitter, run_splitter
from babel_actors.actors.stt import run_stt
from babel_actors.actors.translator import run_translator, translate_segment
from babel_actors.audience import Audience, Member, Role
from babel_actors.clock import now_ms
from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.errors import UnsupportedLanguage
from babel_actors.events import (
    Caption,
    EndOfSpeech,
    HostAudio,
    IngestEvent,
    Segment,
    SourceLanguage,
    SttInput,
    SttResult,
)
from babel_actors.glossary import Glossary
from babel_actors.history import History
from babel_actors.metrics import Metrics
from babel_actors.stages import StageRecorder
from babel_actors.wire.server import (
    caption_message,
    error_message,
    message_frame,
    session_ended_message,
)

log = logging.getLogger(__name__)

INTERNAL_ERROR = 1011
NORMAL_CLOSURE = 1000
_CLOSE_CODES = {"shutdown": 1001, "error": INTERNAL_ERROR}
"""Close codes of ``session_ended`` reasons that are not a normal closure."""
SERVICE_UNAVAILABLE = 503
"""``error.code`` when the speech engine fails for a while: the session goes on."""


class Session:
    """One live session: its pipeline, its audience, its recent finals.

    Create it, start ``run`` in a nursery (``await nursery.start(session.run)``), feed
    it host audio, add members. ``end`` stops it: members get ``session_ended`` and are
    closed, the pipeline is cancelled.

    It counts into ``metrics`` (its server's; by default one of its own): what its
    actors do, the captions and notices it writes (once per caption or notice, with the
    number of members), and through each member its messages in. Its records carry its
    id (``logs``): the actors' and, once they join, its members' connections'.
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
        first_seq: int = 1,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.first_seq = first_seq
        """The seqId of the pipeline's first segment (a session moving between nodes
        continues after the last one it used)."""
        self.stages = stages
        self.stt = stt
        self.mt = mt
        self.id = str(uuid.uuid4())
        self.code = code
        self.solo = solo
        self.host_token = secrets.token_urlsafe(24)
        self.source_lang = source_lang or config.default_source_lang
        self.sample_rate = config.default_sample_rate
        self.glossary = Glossary()
        """Forced translations and kept words, set by the host (``init.glossary``)."""
        self.created_ms = now_ms()
        self.last_activity_ms = self.created_ms
        self.audience = Audience()
        self.history = History(config.history_size)
        self.ended = trio.Event()
        self.end_reason = ""
        self.host: Member | None = None
        self._host_ever = False
        self._host_left_at = trio.current_time()
        self._changed = trio.Event()
        self._cancel_scope = trio.CancelScope()
        send, self._ingest_receive = trio.open_memory_channel[IngestEvent](config.audio_queue)
        self._ingest_send = send

    # --- languages -------------------------------------------------------------

    def check_source(self, language: str) -> None:
        """Raise ``UnsupportedLanguage`` unless the STT engine hears ``language``."""
        if language not in self.stt.languages():
            raise UnsupportedLanguage(self.stt.name, language, self.stt.languages())

    def check_target(self, language: str, source: str | None = None) -> None:
        """Raise ``UnsupportedLanguage`` unless listeners can read ``language`` (of
        speech in ``source``, by default the session's language)."""
        source = source or self.source_lang
        available = self.mt.targets(source) | {source}
        if language not in available:
            raise UnsupportedLanguage(self.mt.name, language, available)

    async def set_source_language(self, language: str) -> None:
        self.check_source(language)
        if language != self.source_lang:
            self.source_lang = language
            host = self.host
            if host is not None and host.role is Role.HOST:
                self.change_language(host, language)
            await self._ingest_send.send(SourceLanguage(language))

    async def set_glossary(self, glossary: Glossary) -> None:
        """Use ``glossary`` from the next translation on, and reopen the speech stream
        with its words as recognition hints."""
        if glossary != self.glossary:
            self.glossary = glossary
            await self._ingest_send.send(glossary)

    # --- the host's side -------------------------------------------------------

    async def feed(self, pcm: bytes, sample_rate: int | None = None) -> None:
        """Queue host PCM for the pipeline. Blocks while the pipeline is behind."""
        self.last_activity_ms = now_ms()
        await self._ingest_send.send(
            HostAudio(pcm, sample_rate or self.sample_rate, trio.current_time())
        )

    async def end_of_speech(self) -> None:
        """The speaker stopped: what the engine holds becomes a final."""
        await self._ingest_send.send(EndOfSpeech(trio.current_time()))

    def attach_host(self, host: Member) -> None:
        """``host`` is now the session's host; an earlier host connection is closed."""
        previous, self.host = self.host, host
        if previous is not None:
            self.audience.remove(previous)
            previous.close(1000, "replaced by a newer host connection")
        self._host_ever = True
        self._join(host)
        self.audience.add(host)
        self._touch()

    def detach_host(self, host: Member) -> None:
        """The host's connection ended; the grace period starts."""
        self.audience.remove(host)
        if self.host is host:
            self.host = None
            self._host_left_at = trio.current_time()
        self._touch()

    # --- listeners -------------------------------------------------------------

    async def add_member(self, member: Member, *, last_seq: int | None = None) -> None:
        """Add ``member``, first sending the finals it missed.

        With ``last_seq`` it gets every final after that seqId still in history; without,
        the last few (a late joiner's catch-up). Finals not yet in its language are
        translated first. Then, in one step with no await, the history is written to it
        and it joins the audience: no final is missed or sent twice.
        """
        language = member.target_lang
        after = last_seq if last_seq is not None else 0
        limit = self.config.history_size if last_seq is not None else self.config.catchup_finals
        self._join(member)
        self.audience.want(language)
        try:
            while missing := self.history.missing(language, after, limit):
                for segment in missing:
                    await self._render_for_history(segment, language)
        finally:
            self.audience.unwant(language)
        missed = self.history.captions(language, after, limit)
        for caption, frame in missed:
            member.send_caption(caption, frame)
        self.metrics.caught_up(language, len(missed))
        self.audience.add(member)
        self._touch()
        self.send_stats()

    def remove_member(self, member: Member) -> None:
        self.audience.remove(member)
        self._touch()
        self.send_stats()

    def change_language(self, member: Member, language: str) -> None:
        """Move ``member`` to ``language`` from the next segment on."""
        self.check_target(language)
        self.audience.remove(member)
        member.target_lang = language
        self.audience.add(member)
        self.send_stats()

    def stats(self) -> dict[str, Any]:
        counts = self.audience.listener_counts()
        return {
            "listenerCount": sum(counts.values()),
            "languages": sorted(counts),
            "languageCounts": counts,
        }

    def send_stats(self) -> None:
        """Tell the host (not a solo user: it has no audience) who listens now."""
        host = self.host
        if host is not None and host.role is Role.HOST and not self.ended.is_set():
            message = {"type": "session_stats", "stats": self.stats()}
            host.send_notice(message, message_frame(message))
            self.metrics.notified(1)

    def notify_error(self, text: str, code: int) -> None:
        """Tell every member about a problem that does not end the session."""
        message = error_message(text, code)
        frame = message_frame(message)
        for member in self.audience.members():
            member.send_notice(message, frame)
        self.metrics.notified(self.audience.people())

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

    def end(self, reason: str, message: str) -> None:
        """End the session: members get ``session_ended`` and are closed (1000; 1001
        for a shutdown, 1011 for a crash); the pipeline is cancelled. Idempotent."""
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.ended.set()
        ended = session_ended_message(message, reason)
        frame = message_frame(ended)
        for member in self.audience.members():
            member.send_notice(ended, frame)
            member.close(_CLOSE_CODES.get(reason, NORMAL_CLOSURE), "session ended")
        self.metrics.notified(self.audience.people())
        self._cancel_scope.cancel()
        log.info("session %s ended: %s", self.id, reason, extra={"session_id": self.id})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise the pipeline until the session ends.

        Cancellation: ``end`` cancels it; so does cancelling the caller's scope.
        Error handling: a crash in any actor is contained here: it is logged with the
        session id, members get ``session_ended`` (reason ``error``) and a 1011 close;
        no other session is touched.
        """
        logs.bind_session(self.id)
        config = self.config
        metrics = self.metrics
        results_send, results_receive = trio.open_memory_channel[SttResult](config.result_queue)
        frames_send, frames_receive = trio.open_memory_channel[SttInput](config.audio_queue)
        segments_send, segments_receive = trio.open_memory_channel[Segment](config.segment_queue)
        captions_send, captions_receive = trio.open_memory_channel[Caption](config.caption_queue)
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        partial(
                            run_broadcaster,
                            captions_receive,
                            audience=self.audience,
                            history=self.history,
                            stages=self.stages,
                            metrics=metrics,
                        )
                    )
                    await nursery.start(
                        partial(
                            run_translator,
                            segments_receive,
                            captions_send,
                            engine=self.mt,
                            languages=self.audience.languages,
                            queue_size=config.lane_queue,
                            partial_interval_s=config.partial_interval_s,
                            timeout_s=config.translate_timeout_s,
                            context_segments=config.context_segments,
                            glossary=lambda: self.glossary,
                            metrics=metrics,
                        )
                    )
                    await nursery.start(
                        partial(
                            run_splitter,
                            results_receive,
                            segments_send,
                            splitter=Splitter(self.source_lang, first_seq=self.first_seq),
                        )
                    )
                    await nursery.start(
                        partial(
                            run_stt,
                            frames_receive,
                            results_send,
                            engine=self.stt,
                            language=self.source_lang,
                            queue_size=config.audio_queue,
                            retry_after_s=config.engine_retry_s,
                            on_error=partial(self.notify_error, code=SERVICE_UNAVAILABLE),
                            metrics=metrics,
                        )
                    )
                    await nursery.start(
                        partial(
                            run_ingest,
                            self._ingest_receive,
                            frames_send,
                            resampler=Resampler(self.stt.sample_rate),
                        )
                    )
                    nursery.start_soon(self._expire)
                    task_status.started()
        except Exception:
            log.exception("session %s crashed", self.id, extra={"session_id": self.id})
            self.end("error", "The session ended because of a server error.")
        finally:
            self.end("ended", "The session has ended.")

    async def _expire(self) -> None:
        """End the session when its host stays away past the grace period, when nobody
        ever used it for ``session_idle_s``, or at ``max_session_s`` whatever happens."""
        config = self.config
        lifetime_ends = (
            trio.current_time() + config.max_session_s if config.max_session_s else math.inf
        )
        while True:
            if self.host is not None:
                deadline = math.inf
            elif self._host_ever:
                deadline = self._host_left_at + (0 if self.solo else config.host_grace_s)
            else:
                deadline = self._host_left_at + config.session_idle_s
            with trio.move_on_at(min(deadline, lifetime_ends)):
                await self._changed.wait()
                self._changed = trio.Event()
                continue
            if trio.current_time() >= lifetime_ends:
                self.end("expired", "The session reached its time limit and has ended.")
            elif self._host_ever:
                self.end("host_timeout", "The host has left; the session has ended.")
            else:
                self.end("expired", "The session expired unused.")
            return

    def _join(self, member: Member) -> None:
        """``member`` joins: it counts into this session's metrics, and the calling
        task (its connection's) logs with this session's id from now on."""
        member.count_into(self.metrics.member_counters(member.role))
        logs.bind_session(self.id)

    def _touch(self) -> None:
        self.last_activity_ms = now_ms()
        self._changed.set()

    async def _catchup_caption(self, segment: Segment, language: str) -> Caption:
        """``segment`` in ``language`` for a joiner catching up (no context: the
        previous finals may be long gone)."""
        return await translate_segment(
            self.mt,
            segment,
            language,
            context=(),
            timeout_s=self.config.translate_timeout_s,
            glossary=self.glossary,
            metrics=self.metrics,
        )

    async def _render_for_history(self, segment: Segment, language: str) -> None:
        caption = await self._catchup_caption(segment, language)
        self.history.add(caption, message_frame(caption_message(caption)))
