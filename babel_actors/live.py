"""What the server asks of a live session, served here alone (``Session``) or shared by
a cluster (``ClusterSession``): both have this shape, by composition, not inheritance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import trio

from babel_actors.audience import Audience, Member
from babel_actors.config import Config
from babel_actors.glossary import Glossary


class LiveSession(Protocol):
    """A session as the server's routes, roles, guard and registry see it."""

    config: Config
    id: str
    code: str | None
    host_token: str
    source_lang: str
    sample_rate: int
    solo: bool
    ended: trio.Event
    """Set once its members were told it ended."""
    end_reason: str

    @property
    def host(self) -> Member | None: ...

    @property
    def audience(self) -> Audience: ...

    @property
    def ending(self) -> bool:
        """Finishing or ended: no new members."""
        ...

    def check_source(self, language: str) -> None: ...

    def check_target(self, language: str, source: str | None = None) -> None: ...

    async def set_source_language(self, language: str) -> None: ...

    async def set_glossary(self, glossary: Glossary) -> None: ...

    async def feed(self, pcm: bytes, sample_rate: int | None = None) -> None: ...

    async def end_of_speech(self) -> None: ...

    def attach_host(self, host: Member) -> None: ...

    def detach_host(self, host: Member) -> None: ...

    async def add_member(
        self,
        member: Member,
        *,
        last_seq: int | None = None,
        greet: Callable[[int | None], None] | None = None,
    ) -> int | None:
        """Add ``member`` after the finals it missed; ``greet`` gets where its replay
        starts (``resumedFrom``) right before it (``Room.add_member``)."""
        ...

    def remove_member(self, member: Member) -> None: ...

    def change_language(self, member: Member, language: str) -> None: ...

    def send_stats(self) -> None: ...

    def info(self) -> dict[str, Any]: ...

    def finish(
        self, reason: str, message: str | None = None, *, drain_s: float | None = None
    ) -> None:
        """End once what was said has been delivered (``drain_s`` at most)."""
        ...

    def cancel(self, reason: str, message: str | None = None) -> None:
        """End now."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...
