"""The ``scripted`` speech engine: replays a timed script of results as audio arrives.

Each entry fires once the stream has received ``at_s`` seconds of audio, so a test or
the bench decides exactly when results appear by how much audio it sends: no clocks,
no sleeps. ``EndOfSpeech`` fires every entry up to and including the next final.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from babel_actors.errors import ConfigError
from babel_actors.events import AudioEvent, AudioFrame, SttResult
from babel_actors.glossary import Glossary


@attrs.frozen
class ScriptLine:
    """One scripted result."""

    at_s: float
    """Seconds of stream audio after which the result is produced."""
    text: str
    """The transcript."""
    is_final: bool
    """Whether it closes the utterance."""


def sentence_script(
    sentences: Sequence[str], *, seconds_each: float = 2.0, partials: int = 2
) -> tuple[ScriptLine, ...]:
    """A script that speaks each sentence over ``seconds_each`` seconds, revealing it in
    ``partials`` growing partials before its final."""
    lines: list[ScriptLine] = []
    for index, sentence in enumerate(sentences):
        start = index * seconds_each
        words = sentence.split()
        for step in range(1, partials + 1):
            cut = max(1, len(words) * step // (partials + 1))
            at = start + seconds_each * step / (partials + 1)
            lines.append(ScriptLine(at, " ".join(words[:cut]), False))
        lines.append(ScriptLine(start + seconds_each, sentence, True))
    return tuple(lines)


_EPSILON_S = 1e-9

DEFAULT_SCRIPT = sentence_script(
    [
        "Good morning, everyone, and welcome.",
        "Today we will talk about the history of the city.",
        "Please ask your questions at the end.",
    ]
)


def load_script(path: str) -> tuple[ScriptLine, ...]:
    """Read a script: a JSON list of ``{"at": seconds, "text": str, "final": bool}``."""
    try:
        raw = json.loads(Path(path).read_text())
        return tuple(
            ScriptLine(float(item["at"]), str(item["text"]), bool(item["final"])) for item in raw
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read STT script {path}: {exc}") from None


class ScriptedSpeechToText:
    """Replays ``script`` on every stream; ``loop`` starts it over when it runs out."""

    name = "scripted"

    def __init__(
        self,
        script: Sequence[ScriptLine] = DEFAULT_SCRIPT,
        *,
        sample_rate: int = 16000,
        languages: frozenset[str] = frozenset({"en"}),
        loop: bool = False,
    ) -> None:
        self.script = tuple(sorted(script, key=lambda line: line.at_s))
        self.sample_rate = sample_rate
        self._languages = languages
        self.loop = loop
        self.glossaries: list[Glossary] = []
        """Every glossary a stream was opened with."""

    def languages(self) -> frozenset[str]:
        return self._languages

    async def transcribe(
        self,
        audio: trio.MemoryReceiveChannel[AudioEvent],
        results: trio.MemorySendChannel[SttResult],
        *,
        language: str,
        glossary: Glossary | None = None,
    ) -> None:
        """Backpressure: blocks on a full ``results``, which holds up reading audio.
        Cancellation: safe at any await. Error handling: cannot fail. ``glossary`` is
        only recorded in ``glossaries``, for tests."""
        if glossary:
            self.glossaries.append(glossary)
        script = self.script
        position = 0
        heard_s = 0.0
        offset_s = 0.0
        async with audio:
            async for event in audio:
                if isinstance(event, AudioFrame):
                    heard_s += len(event.pcm) / 2 / event.sample_rate
                    # Within a nanosecond: float seconds added up leave ten 0.1 s frames
                    # short of the line scripted at 1.0 s.
                    while (
                        position < len(script)
                        and script[position].at_s + offset_s <= heard_s + _EPSILON_S
                    ):
                        line = script[position]
                        await self._emit(
                            results, line, offset_s, event.received_at, event.ingested_at
                        )
                        position += 1
                else:
                    # Fire the rest of the utterance now; later lines keep their spacing
                    # from this moment on.
                    while position < len(script):
                        line = script[position]
                        position += 1
                        await self._emit(results, line, offset_s, event.received_at, 0.0)
                        if line.is_final:
                            offset_s = heard_s - line.at_s
                            break
                if self.loop and script and position == len(script):
                    position = 0
                    offset_s = heard_s

    @staticmethod
    async def _emit(
        results: trio.MemorySendChannel[SttResult],
        line: ScriptLine,
        offset_s: float,
        received_at: float,
        ingested_at: float,
    ) -> None:
        await results.send(
            SttResult(
                text=line.text,
                is_final=line.is_final,
                audio_end_s=line.at_s + offset_s,
                produced_at=trio.current_time(),
                audio_received_at=received_at,
                audio_ingested_at=ingested_at,
            )
        )

    async def aclose(self) -> None:
        return None
