"""Whisper's speech-to-English task as the translator of last resort into English.

Apertium has no pair from most of the ~99 languages Whisper base hears (German,
Russian, Japanese...). For those, a listener asking for English gets it from the audio
itself: the Whisper engine keeps the audio of its latest results (``SpeechMemory``), and
``SpeechTranslator`` hands the audio of the segment to be translated back to Whisper
with the ``translate`` task. Every other request goes to the text translator it wraps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from babel_actors.engines.base import Translator, translation_route
from babel_actors.errors import EngineError, TranslationFailed, UnsupportedLanguage

ENGLISH = "en"


class SpeechMemory:
    """The audio of the latest ``size`` results, by ``(language, text)``. Bounded: the
    oldest goes first. Filled by the speech engine, read by ``SpeechTranslator``.
    Plain data, no I/O; used from the trio thread only."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._audio: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def remember(self, language: str, text: str, pcm: bytes) -> None:
        """``pcm`` (16 kHz) was heard as ``text`` in ``language``."""
        key = (language, " ".join(text.split()))
        self._audio[key] = pcm
        self._audio.move_to_end(key)
        while len(self._audio) > self.size:
            self._audio.popitem(last=False)

    def audio(self, language: str, text: str) -> bytes | None:
        """The audio heard as ``text``, if still remembered."""
        return self._audio.get((language, " ".join(text.split())))


class _SpeechEngine(Protocol):
    def languages(self) -> frozenset[str]: ...

    async def translate_speech(self, pcm: bytes, *, language: str) -> str: ...


class SpeechTranslator:
    """``inner``, plus X -> English from speech where ``inner`` has no route.

    Backpressure: a speech translation is a Whisper decode, sharing the speech engine's
    process-wide limit with recognition (~1.5 s each with base on two cores); partials
    are therefore never translated from speech (``TranslationFailed`` at once: the
    listener reads the source text, flagged, until the final).
    Cancellation: as the speech engine's decode (abandoned in its thread).
    Error handling: ``UnsupportedLanguage`` for what neither way reaches,
    ``TranslationFailed`` when the audio is no longer remembered or the decode fails.
    """

    def __init__(self, inner: Translator, speech: _SpeechEngine, memory: SpeechMemory) -> None:
        self.inner = inner
        self.name = inner.name
        self._speech = speech
        self._memory = memory
        self._heard = frozenset(speech.languages()) - {ENGLISH}

    def _from_speech(self, source: str, target: str) -> bool:
        return (
            target == ENGLISH
            and source in self._heard
            and ENGLISH not in self.inner.targets(source)
        )

    def sources(self) -> frozenset[str]:
        return self.inner.sources() | self._heard

    def targets(self, source: str) -> frozenset[str]:
        found = self.inner.targets(source)
        return found | {ENGLISH} if source in self._heard else found

    def route(self, source: str, target: str) -> tuple[str, ...]:
        """``(source, "en")`` for speech translation, else the inner engine's route."""
        if self._from_speech(source, target):
            return (source, target)
        return translation_route(self.inner, source, target)

    async def translate(
        self,
        text: str,
        *,
        source: str,
        target: str,
        context: Sequence[str] = (),
        **extra: Any,
    ) -> str:
        if not self._from_speech(source, target):
            return await self.inner.translate(
                text, source=source, target=target, context=context, **extra
            )
        if extra.get("partial"):
            raise TranslationFailed("partials are not translated from speech")
        pcm = self._memory.audio(source, text)
        if pcm is None:
            raise TranslationFailed(f"no audio left for speech translation of {text[:40]!r}")
        try:
            return await self._speech.translate_speech(pcm, language=source)
        except (UnsupportedLanguage, EngineError) as exc:
            raise TranslationFailed(f"speech translation: {exc}") from exc

    async def aclose(self) -> None:
        await self.inner.aclose()
