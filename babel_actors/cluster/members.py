"""The members a shared session adds to audiences: the owner's pipeline and relays,
and the guard around each listener."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from babel_actors.audience import Member, Role
from babel_actors.counters import MemberCounters
from babel_actors.events import Caption
from babel_actors.session import Session

if TYPE_CHECKING:
    from babel_actors.cluster.ownership import Ownership


class Pipeline(Session):
    """The owner's pipeline: a plain session whose members are the host and the
    relays. Its stats are the cluster's, which the ``ClusterSession`` sends."""

    def send_stats(self) -> None:
        return None

    def host_left(self) -> None:
        """Start the grace period for a host that left before the pipeline started."""
        self._host_ever = True
        self._host_left_at = trio.current_time()
        self._touch()


class Relay:
    """A pipeline member reading one language for the whole cluster."""

    role = Role.RELAY

    def __init__(self, ownership: Ownership, language: str) -> None:
        self.ownership = ownership
        self.target_lang = language

    def send_caption(self, caption: Caption, frame: bytes) -> None:
        self.ownership.relay(caption, frame)

    def send_notice(self, message: dict[str, Any], frame: bytes) -> None:
        # The source language always has a relay: it alone passes errors on.
        if message.get("type") == "error" and self.target_lang == self.ownership.source_lang:
            self.ownership.forward_error(message, frame)

    def close(self, code: int, reason: str) -> None:
        return None

    def unsent_bytes(self) -> int:
        return 0

    def count_into(self, counters: MemberCounters | None) -> None:
        return None


class Guarded:
    """A member that never receives a final twice or out of order, nor a partial older
    than the last final it received."""

    def __init__(self, member: Member) -> None:
        self.member = member
        self.role = member.role
        self.target_lang = member.target_lang
        self.last_final = 0

    def send_caption(self, caption: Caption, frame: bytes) -> None:
        seq = caption.segment.seq_id
        if seq <= self.last_final:
            return
        if not caption.segment.is_partial:
            self.last_final = seq
        self.member.send_caption(caption, frame)

    def send_notice(self, message: dict[str, Any], frame: bytes) -> None:
        self.member.send_notice(message, frame)

    def close(self, code: int, reason: str) -> None:
        self.member.close(code, reason)

    def unsent_bytes(self) -> int:
        return self.member.unsent_bytes()

    def count_into(self, counters: MemberCounters | None) -> None:
        self.member.count_into(counters)
