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
    RELAY = "relay"
    """Not a person: a cluster pipeline's member passing one language on to the
    listeners of every node (never counted as a connection or a delivery)."""


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


class Audience:
    """Members of one session grouped by language, for a fan-out with no lookups.

    ``wanted`` counts languages someone is about to read (a joiner catching up), so
    finals arriving meanwhile are already translated for them.
    """

    def __init__(self) -> None:
        self.by_language: dict[str, dict[int, Member]] = {}
        self._ids = itertools.count()
        self._member_ids: dict[int, int] = {}
        self._wanted: Counter[str] = Counter()
        self._relays: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._member_ids)

    def add(self, member: Member) -> None:
        member_id = next(self._ids)
        self._member_ids[id(member)] = member_id
        self.by_language.setdefault(member.target_lang, {})[member_id] = member
        if member.role is Role.RELAY:
            self._relays[member.target_lang] += 1

    def remove(self, member: Member) -> None:
        member_id = self._member_ids.pop(id(member), None)
        if member_id is None:
            return
        language = member.target_lang
        group = self.by_language.get(language, {})
        group.pop(member_id, None)
        if not group:
            self.by_language.pop(language, None)
        if member.role is Role.RELAY:
            self._relays[language] -= 1
            if self._relays[language] <= 0:
                del self._relays[language]

    def people(self, language: str | None = None) -> int:
        """Members that are people (hosts, listeners, solo users; not relays) reading
        ``language``, or in all. No loop over members: the broadcaster counts a
        caption's deliveries with it."""
        if language is None:
            return len(self._member_ids) - self._relays.total()
        group = self.by_language.get(language)
        return 0 if group is None else len(group) - self._relays[language]

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
        return [m for group in self.by_language.values() for m in group.values()]

    def listener_counts(self) -> dict[str, int]:
        """Listeners (not hosts or solo users) per language."""
        counts: dict[str, int] = {}
        for language, group in self.by_language.items():
            n = sum(1 for m in group.values() if m.role is Role.LISTENER)
            if n:
                counts[language] = n
        return counts

    def hosts(self) -> list[Member]:
        return [m for m in self.members() if m.role is Role.HOST]
