"""Test doubles shared by the actor tests: a member that records what it is sent, a
translator that counts its calls and can hold them at a gate, and segment builders.

Each speaks the real interface (``Member``, ``Translator``), so the actors under test
run unchanged: no monkeypatching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from babel_actors.audience import Role
from babel_actors.engines.echo import ECHO_LANGUAGES
from babel_actors.errors import TranslationFailed
from babel_actors.events import Caption, Segment
from babel_actors.glossary import Glossary

if TYPE_CHECKING:
    from babel_actors.counters import MemberCounters


class RecordingMember:
    """A ``Member`` that keeps everything it is sent, in order, and never lags."""

    def __init__(self, target_lang: str, role: Role = Role.LISTENER) -> None:
        self.role = role
        self.target_lang = target_lang
        self.captions: list[Caption] = []
        """Every caption sent, in order."""
        self.frames: list[bytes] = []
        """The frame sent with each caption."""
        self.notices: list[dict[str, Any]] = []
        """Every notice sent, in order."""
        self.closed: tuple[int, str] | None = None
        """``(code, reason)`` once closed."""
        self.counters: MemberCounters | None = None

    def send_caption(self, caption: Caption, frame: bytes) -> None:
        self.captions.append(caption)
        self.frames.append(frame)

    def send_notice(self, message: dict[str, Any], frame: bytes) -> None:
        self.notices.append(message)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def unsent_bytes(self) -> int:
        return 0

    def count_into(self, counters: MemberCounters | None) -> None:
        self.counters = counters

    @property
    def finals(self) -> list[int]:
        """The seqIds of the finals received, in order."""
        return [c.segment.seq_id for c in self.captions if not c.segment.is_partial]

    @property
    def final_texts(self) -> list[str]:
        return [c.text for c in self.captions if not c.segment.is_partial]


@attrs.frozen
class Call:
    """One ``translate`` request as the engine saw it."""

    text: str
    source: str
    target: str
    context: tuple[str, ...]
    partial: bool


def _never(call: Call) -> bool:
    return False


class GatedTranslator:
    """An echo translator (``[fr] text``) that records every call as it starts.

    Calls for which ``hold(call)`` is true wait until ``open()``; ``fail(call)`` true
    raises ``TranslationFailed``; ``delay_s(call)`` seconds are slept first (use with
    ``autojump_clock``).
    """

    name = "gated"

    def __init__(
        self,
        *,
        hold: Callable[[Call], bool] = _never,
        fail: Callable[[Call], bool] = _never,
        delay_s: Callable[[Call], float] = lambda call: 0.0,
    ) -> None:
        self.calls: list[Call] = []
        self.finished: list[Call] = []
        """Calls that returned (not cancelled, not failed)."""
        self.hold = hold
        self.fail = fail
        self.delay_s = delay_s
        self.gate = trio.Event()

    def open(self) -> None:
        self.gate.set()

    def sources(self) -> frozenset[str]:
        return ECHO_LANGUAGES

    def targets(self, source: str) -> frozenset[str]:
        return ECHO_LANGUAGES - {source}

    async def translate(
        self,
        text: str,
        *,
        source: str,
        target: str,
        context: Sequence[str] = (),
        glossary: Glossary | None = None,
        partial: bool = False,
    ) -> str:
        call = Call(text, source, target, tuple(context), partial)
        self.calls.append(call)
        await trio.sleep(self.delay_s(call))
        if self.hold(call):
            await self.gate.wait()
        if self.fail(call):
            raise TranslationFailed(f"{self.name}: refused {text!r}")
        self.finished.append(call)
        return f"[{target}] {text}"

    async def aclose(self) -> None:
        return None

    def texts(self, target: str | None = None, *, partial: bool | None = None) -> list[str]:
        """The texts asked for, in call order, optionally for one target or kind."""
        return [
            call.text
            for call in self.calls
            if (target is None or call.target == target)
            and (partial is None or call.partial == partial)
        ]


def segment(
    seq_id: int, text: str | None = None, *, partial: bool = False, lang: str = "en"
) -> Segment:
    """A segment as the splitter makes it; ``text`` defaults to ``"s<seq_id>"``."""
    return Segment(
        seq_id=seq_id,
        text=text if text is not None else f"s{seq_id}",
        is_partial=partial,
        source_lang=lang,
        recognized_at=0.0,
        wall_ms=0,
    )
