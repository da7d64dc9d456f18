"""Who reads a session right now: hosts, listeners and solo users, by language."""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from babel_actors.events import Caption

if TYPE_CHECKING:
    from babel_actors.counters import MemberCounters


class Role(enum.Enum):
    """Why a member is in the audience; only listeners count as listeners."""

    HOST = "host"
    LISTENER = "listener"
    SOLO = "solo"


class Member(Protocol):
    """Where a session's messages go: a WebSocket, or an embedder's channel.

    Every method is synchronous and must not block: the broadcaster calls them for
    every member in one loop with no await, and one slow member must not hold up the
    rest. A member that cannot keep up sheds partials, or closes itself.
    """

    role: Role
    target_lang: str

    def send_caption(self, caption: Caption, frame: bytes) -> None:
        """Deliver a caption: ``frame`` is it as a ready WebSocket frame, shared by
        every member of the language. Partials may be coalesced, finals never dropped."""
        ...

    def send_notice(self, message: dict[str, Any], frame: bytes) -> None:
        """Deliver a control message (``session_stats``, ``error``, ...)."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close after what was already sent; returns at once."""
        ...

    def unsent_bytes(self) -> int:
        """Bytes written to the member that its client has not taken yet (its lag)."""
        ...

    def count_into(self, counters: MemberCounters | None) -> None:
        """Count this member's messages in, coalesced partials and being closed as too
        slow in ``counters`` (its server's, for its role) from now on. The session
        calls it when the member joins."""
        ...


class Seat:
    """A member's place in the audience, with the guard every delivery passes: a
    member never receives a final twice or out of order, nor a partial older than the
    last final it received (a caption may reach it from catch-up and live)."""

    __slots__ = ("last_final", "member")

    def __init__(self, member: Member) -> None:
        self.member = member
        self.last_final = 0

    def send(self, caption: Caption, frame: bytes) -> bool:
        """Hand ``caption`` to the member unless the guard drops it; whether it did."""
        seq = caption.segment.seq_id
        if seq <= self.last_final:
            return False
        if not caption.segment.is_partial:
            self.last_final = seq
        self.member.send_caption(caption, frame)
        return True


class Audience:
    """Members of one session grouped by language, for a fan-out with no lookups.

    ``wanted`` counts languages someone is about to read (a joiner catching up), so
    finals arriving meanwhile are already translated for them.
    """

    def __init__(self) -> None:
        self.by_language: dict[str, dict[int, Seat]] = {}
        self._seats: dict[int, tuple[int, Seat]] = {}
        self._ids = itertools.count()
        self._wanted: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._seats)

    def add(self, member: Member) -> Seat:
        """Seat ``member`` with the readers of its ``target_lang``."""
        seat_id = next(self._ids)
        seat = Seat(member)
        self._seats[id(member)] = (seat_id, seat)
        self.by_language.setdefault(member.target_lang, {})[seat_id] = seat
        return seat

    def remove(self, member: Member) -> None:
        found = self._seats.pop(id(member), None)
        if found is not None:
            self._unseat(found[0], member.target_lang)

    def move(self, member: Member, language: str) -> None:
        """``member`` reads ``language`` from the next caption on; its guard stays."""
        found = self._seats.get(id(member))
        if found is None:
            member.target_lang = language
            return
        seat_id, seat = found
        self._unseat(seat_id, member.target_lang)
        member.target_lang = language
        self.by_language.setdefault(language, {})[seat_id] = seat

    def people(self, language: str | None = None) -> int:
        """Members reading ``language``, or in all. No loop over members: the
        broadcaster counts a caption's deliveries with it."""
        if language is None:
            return len(self._seats)
        group = self.by_language.get(language)
        return 0 if group is None else len(group)

    def want(self, language: str) -> None:
        self._wanted[language] += 1

    def unwant(self, language: str) -> None:
        self._wanted[language] -= 1
        if self._wanted[language] <= 0:
            del self._wanted[language]

    def languages(self) -> frozenset[str]:
        """Every language someone reads or is about to read."""
        return frozenset(self.by_language) | frozenset(self._wanted)

    def members(self) -> list[Member]:
        return [seat.member for group in self.by_language.values() for seat in group.values()]

    def listener_counts(self) -> dict[str, int]:
        """Listeners (not hosts or solo users) per language."""
        counts: dict[str, int] = {}
        for language, group in self.by_language.items():
            n = sum(1 for seat in group.values() if seat.member.role is Role.LISTENER)
            if n:
                counts[language] = n
        return counts

    def _unseat(self, seat_id: int, language: str) -> None:
        group = self.by_language.get(language, {})
        group.pop(seat_id, None)
        if not group:
            self.by_language.pop(language, None)
