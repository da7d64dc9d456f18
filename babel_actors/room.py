"""Who reads a session and what they missed: members, history, catch-up, stats.

A ``Room`` is the same whether the session's pipeline runs in this process (``Session``)
or on another node of a cluster (``ClusterSession``): one fan-out, one catch-up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from babel_actors.audience import Audience, Member, Role
from babel_actors.config import Config
from babel_actors.history import History
from babel_actors.metrics import Metrics
from babel_actors.renderer import Renderer
from babel_actors.wire.server import Rendered, message_frame, session_ended_message

BeforeCatchup = Callable[[str, int, int], Awaitable[None]]
"""``(language, after, limit)``: fill the history with finals known elsewhere (a
cluster's log) before a joiner's catch-up reads it."""


class Room:
    """The members of one session, grouped by language, and its recent finals.

    Backpressure: none: members never block (``Member``), so a caption is written to
    every reader of its language in one loop with no await.
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

    async def add_member(self, member: Member, *, last_seq: int | None = None) -> None:
        """Add ``member``, first sending the finals it missed.

        With ``last_seq`` it gets every final after that seqId still in history; without,
        the last few (a late joiner's catch-up). Finals not yet in its language are
        rendered first (``Renderer``: once, however many join at once). Then, in one
        step with no await, they are written to it and it takes its seat: no final is
        missed, and its seat's guard drops any it would get twice.
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
        missed = self.history.rendered(language, after, limit)
        seat = self.audience.add(member)
        for rendered in missed:
            seat.send(rendered.caption, rendered.frame)
        self.metrics.caught_up(language, len(missed))
        self._changed()
        self.send_stats()

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
        """Tell the host (not a solo user: it has no audience) who listens now."""
        host = self.host
        if host is not None and host.role is Role.HOST and not self.closed:
            message = {"type": "session_stats", "stats": self.stats()}
            host.send_notice(message, message_frame(message))
            self.metrics.notified(1)

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
