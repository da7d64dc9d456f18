"""The scripted timeline: which audio chunk completes which engine result.

The bench writes the script the server's ``scripted`` engine replays
(``BABEL_SCRIPT_PATH``) and, from the same numbers, knows which of the host's chunks
completes each result. Every result fires ``margin_s`` before a chunk boundary, so the
chunk that ends at that boundary completes it even though the server's resampler holds
back a few tens of milliseconds (soxr, 24 or 48 kHz to 16 kHz: under 40 ms).
Latency is then "listener received it" minus "host sent the chunk that completed it",
both on the load generator's clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

_WORDS = (
    "the river city welcomes every visitor who crosses the old stone bridge at dawn "
    "while merchants open their shutters and bakers carry warm bread through narrow "
    "streets toward the market square where musicians tune their instruments and "
    "children chase pigeons past the fountain under a bright morning sky"
).split()
_WORDS_PER_SENTENCE = 11


@dataclass(frozen=True)
class Line:
    """One scripted engine result."""

    index: int
    at_s: float
    """Seconds of audio after which the engine produces it."""
    text: str
    final: bool
    chunk: int
    """Index of the host's chunk whose arrival completes it."""


@dataclass(frozen=True)
class Timeline:
    """A script, and the chunks a host sends to play it."""

    lines: tuple[Line, ...]
    chunk_s: float
    chunks: int
    """How many chunks the host sends (one more than the script needs)."""

    @property
    def finals(self) -> list[Line]:
        return [line for line in self.lines if line.final]

    @property
    def partials(self) -> list[Line]:
        return [line for line in self.lines if not line.final]

    @property
    def last_final(self) -> Line:
        return self.finals[-1]

    def server_script(self) -> list[dict[str, object]]:
        """The script in the ``scripted`` engine's JSON format."""
        return [{"at": line.at_s, "text": line.text, "final": line.final} for line in self.lines]

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.server_script(), indent=0))
        return path

    def line_of_text(self) -> dict[tuple[str, bool], int]:
        """``(originalText, isPartial)`` of a caption -> its line."""
        return {(line.text, not line.final): line.index for line in self.lines}


def sentence_text(number: int) -> str:
    """A unique sentence of about 60 characters (so a caption is ~350 bytes)."""
    start = (number * 7) % len(_WORDS)
    words = [_WORDS[(start + i) % len(_WORDS)] for i in range(_WORDS_PER_SENTENCE - 2)]
    return f"Sentence {number} {' '.join(words)}."


def build(
    duration_s: float,
    *,
    sentence_s: float = 2.0,
    partials: int = 3,
    chunk_s: float = 0.1,
    margin_s: float | None = None,
) -> Timeline:
    """Sentences of ``sentence_s`` seconds for ``duration_s`` seconds, each revealed in
    ``partials`` growing partials before its final."""
    per_sentence = round(sentence_s / chunk_s)
    if per_sentence < partials + 1 or abs(per_sentence * chunk_s - sentence_s) > 1e-9:
        raise ValueError(
            f"--sentence-s {sentence_s} must be a multiple of the chunk ({chunk_s}s) "
            f"with room for {partials} partials"
        )
    cuts = {max(2, _WORDS_PER_SENTENCE * k // (partials + 1)) for k in range(1, partials + 1)}
    if len(cuts) < partials:
        raise ValueError(f"{partials} partials of an {_WORDS_PER_SENTENCE}-word sentence repeat")
    margin = chunk_s / 2 if margin_s is None else margin_s
    sentences = max(1, int(duration_s / sentence_s + 1e-9))
    lines: list[Line] = []
    for number in range(sentences):
        first = number * per_sentence
        words = sentence_text(number + 1).split()
        for step in range(1, partials + 1):
            boundary = first + round(per_sentence * step / (partials + 1))
            cut = max(2, len(words) * step // (partials + 1))
            text = " ".join(words[:cut])
            lines.append(Line(len(lines), boundary * chunk_s - margin, text, False, boundary - 1))
        boundary = first + per_sentence
        text = " ".join(words)
        lines.append(Line(len(lines), boundary * chunk_s - margin, text, True, boundary - 1))
    return Timeline(tuple(lines), chunk_s, sentences * per_sentence + 1)
