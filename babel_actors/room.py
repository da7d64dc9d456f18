"""Who reads a session and what they missed: members, history, catch-up, stats.

A ``Room`` is the same whether the session's pipeline runs in this process (``Session``)
or on another node of a cluster (``ClusterSession``): one fan-out, one catch-up.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from babel_actors.audience import Audience, Member, Role
from babel_actors.config import Config
from babel_actors.history import History
from babel_actors.metrics import Metrics
from babel_actors.renderer import Renderer
from babel_actors.wire.server import Rendered, message_frame, session_ended_message

BeforeCatchup = Callable[[str, int, int], Awaitable[None]]
"""``(language, after, limit)``: fill the history with finals known elsewhere (a
cluster's log) before a joiner's catch-up reads it."""

Greet = Callable[[int | None], None]
"""Called with where a joiner's replay starts (``History.resumed_from``; None for a
late joiner), right before its first caption: it sends ``session_joined``."""


class Room:
    """The members of one session, grouped by language, and its recent finals.

    Backpressure: none: members never block (``Member``), so a caption is written to
    every reader of its language in one loop with no await. The host's
    ``session_stats`` are paced (``pace_stats``): however fast members come, go or
    change language, the host gets at most one per ``stats_interval_s``.
    Cancellation: ``add_member`` may be cancelled while it translates what a joiner
    missed; the joiner then never joined.
    Error handling: members never raise; a member that cannot keep up closes itself.
    """

    def __init__(
        self,
        config: Config,
        renderer: Renderer,
        *,
        metrics: Metrics,
        before_catchup: BeforeCatchup | None = None,
        on_change: Callable[[], None] | None = None,
        remote_counts: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.config = config
        self.renderer = renderer
        self.history: History = renderer.history
        self.metrics = metrics
        self.audience = Audience()
        self.host: Member | None = None
        """The host (or solo user) connected now, a member too (reading the source)."""
        self._before_catchup = before_catchup
        self._on_change = on_change
        self._remote_counts = remote_counts
        self.closed = False
        self._stats_changed = False
        self._stats_due = -math.inf
        self._stats_to: Member | None = None
        self._stats_pending = trio.Event()
        self._pacing = False

    def languages(self) -> frozenset[str]:
        """Every language read here, or about to be (the translator's lanes)."""
        return self.audience.languages()

    # --- the hot path ----------------------------------------------------------

    def deliver(self, rendered: Rendered) -> int:
        """Write ``rendered`` to every member reading its language, in one synchronous
        loop; returns how many it was written to. A partial that a final has already
        overtaken is dropped: it would only flicker back."""
        caption = rendered.caption
        segment = caption.segment
        if segment.is_partial and segment.seq_id < self.history.last_seq():
            return 0
        group = self.audience.by_language.get(caption.target_lang)
        if not group:
            return 0
        frame = rendered.frame
        written = 0
        for seat in list(group.values()):
            written += seat.send(caption, frame)
        return written

    # --- members ---------------------------------------------------------------

    async def add_member(
        self, member: Member, *, last_seq: int | None = None, greet: Greet | None = None
    ) -> int | None:
        """Add ``member``, first sending the finals it missed; returns where its replay
        started (``History.resumed_from``: ``last_seq``, or past it when finals after
        it have aged out), None without ``last_seq``.

        With ``last_seq`` it gets every final after that seqId still in history; without,
        the last few (a late joiner's catch-up). Finals not yet in its language are
        rendered first (``Renderer``: once, however many join at once). Then, in one
        step with no await, ``greet`` is called with where the replay starts, the finals
        are written to it and it takes its seat: no final is missed, none comes before
        the greeting, and its seat's guard drops any it would get twice.
        """
        language = member.target_lang
        after = last_seq if last_seq is not None else 0
        limit = self.config.history_size if last_seq is not None else self.config.catchup_finals
        self.audience.want(language)
        self._changed()
        try:
            if self._before_catchup is not None:
                await self._before_catchup(language, after, limit)
            while missing := self.history.missing(language, after, limit):
                for segment in missing:
                    await self.renderer.final(segment, language)
        finally:
            self.audience.unwant(language)
        resumed_from = None if last_seq is None else self.history.resumed_from(last_seq)
        missed = self.history.rendered(language, after, limit)
        if greet is not None:
            greet(resumed_from)
        seat = self.audience.add(member)
        for rendered in missed:
            seat.send(rendered.caption, rendered.frame)
        self.metrics.caught_up(language, len(missed))
        self._changed()
        self.send_stats()
        return resumed_from

    def seat(self, member: Member) -> None:
        """Add ``member`` (a host) with no catch-up."""
        self.audience.add(member)
        self._changed()

    def remove_member(self, member: Member) -> None:
        self.audience.remove(member)
        self._changed()
        self.send_stats()

    def change_language(self, member: Member, language: str) -> None:
        """Move ``member`` to ``language`` from the next segment on."""
        self.audience.move(member, language)
        self._changed()
        self.send_stats()

    # --- notices ---------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        counts = self.audience.listener_counts()
        if self._remote_counts is not None:
            for language, count in self._remote_counts().items():
                if count:
                    counts[language] = counts.get(language, 0) + count
        return {
            "listenerCount": sum(counts.values()),
            "languages": sorted(counts),
            "languageCounts": counts,
        }

    def send_stats(self) -> None:
        """Tell the host (not a solo user: it has no audience) who listens now, paced:
        at once when the last ``session_stats`` went out ``stats_interval_s`` ago or
        more (or to another host connection), else once that interval is over, with
        the figures of then; changes meanwhile cost nothing more. Without ``pace_stats``
        running, at once every time."""
        self._stats_changed = True
        quiet = trio.current_time() >= self._stats_due
        if quiet or not self._pacing or self.host is not self._stats_to:
            self._flush_stats()
        else:
            self._stats_pending.set()

    async def pace_stats(self) -> None:
        """Send the host the stats held back by ``send_stats`` when their interval is
        over; run it for the room's life (the session's nursery).

        Cancellation: stops pacing; ``send_stats`` then sends at once again.
        """
        self._pacing = True
        try:
            while True:
                await self._stats_pending.wait()
                self._stats_pending = trio.Event()
                await trio.sleep_until(self._stats_due)
                self._flush_stats()
        finally:
            self._pacing = False

    def _flush_stats(self) -> None:
        host = self.host
        if self.closed or not self._stats_changed or host is None or host.role is not Role.HOST:
            return
        self._stats_changed = False
        message = {"type": "session_stats", "stats": self.stats()}
        host.send_notice(message, message_frame(message))
        self.metrics.notified(1)
        self._stats_to = host
        self._stats_due = trio.current_time() + self.config.stats_interval_s

    def notify(self, message: dict[str, Any]) -> None:
        """A notice (an ``error`` that does not end the session) for every member."""
        frame = message_frame(message)
        for member in self.audience.members():
            member.send_notice(message, frame)
        self.metrics.notified(self.audience.people())

    def close(self, reason: str, message: str, code: int) -> None:
        """Every member gets ``session_ended`` and is closed with ``code``. Idempotent."""
        if self.closed:
            return
        self.closed = True
        ended = session_ended_message(message, reason)
        self.close_all(ended, code, "session ended")

    def close_all(self, notice: dict[str, Any], code: int, why: str) -> None:
        """Every member (and the host, seated or not) gets ``notice`` and a close."""
        frame = message_frame(notice)
        members = self.audience.members()
        if self.host is not None and self.host not in members:
            members.append(self.host)
        for member in members:
            member.send_notice(notice, frame)
            member.close(code, why)
        self.metrics.notified(len(members))
        self.closed = True

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
