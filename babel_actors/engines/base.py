"""The engine interfaces: small Protocols that every provider adapter implements.

An engine is shared by every session of the process. Its methods may be called from
many sessions at once; an adapter serialises whatever must be serial on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import trio

from babel_actors.events import AUTO_LANGUAGE, AudioEvent, SttResult
from babel_actors.glossary import Glossary


@runtime_checkable
class SpeechToText(Protocol):
    """A streaming speech recogniser."""

    name: str
    """Short name, as chosen by ``--stt``."""
    sample_rate: int
    """The PCM rate the engine wants; ingest resamples to it."""

    def languages(self) -> frozenset[str]:
        """Languages (BCP-47 primary tags, e.g. ``"en"``) the engine can recognise."""
        ...

    async def transcribe(
        self,
        audio: trio.MemoryReceiveChannel[AudioEvent],
        results: trio.MemorySendChannel[SttResult],
        *,
        language: str,
        glossary: Glossary | None = None,
    ) -> None:
        """Recognise one stream: read ``audio`` until it closes, write ``results``.

        ``glossary`` holds the session's terms, as recognition hints where the engine
        can use them; callers pass it only when it is not empty, so engines without
        the parameter keep working.

        Returns once ``audio`` is closed and every result for it is sent. Does not close
        ``results`` (the caller owns it). An ``EndOfSpeech`` asks for a final result for
        whatever audio is pending. Raises ``EngineError`` on a failure it cannot recover
        from; cancellation ends the stream promptly.
        """
        ...

    async def aclose(self) -> None:
        """Release process-wide resources (models, threads, connections)."""
        ...


@runtime_checkable
class Translator(Protocol):
    """A text translator (machine translation)."""

    name: str
    """Short name, as chosen by ``--mt``."""

    def targets(self, source: str) -> frozenset[str]:
        """Languages the engine can translate ``source`` into (``source`` excluded)."""
        ...

    def sources(self) -> frozenset[str]:
        """Languages the engine can translate from."""
        ...

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
        """Translate ``text``; ``context`` holds the previous segments, oldest first.

        ``glossary`` holds the session's forced translations and kept words;
        ``partial`` marks a segment still being spoken, soon superseded: an engine
        that queues requests serves finals first (``openai``); others ignore it.
        Callers pass each only when set (a glossary that is not empty, ``partial``
        true).

        Raises ``UnsupportedLanguage`` for a pair it lacks and ``TranslationFailed``
        when it cannot deliver; never a provider's own exception type.
        """
        ...

    async def aclose(self) -> None:
        """Release process-wide resources (subprocesses, HTTP clients)."""
        ...


def hears(stt: SpeechToText, language: str) -> bool:
    """Whether ``stt`` recognises ``language``: one of its languages, or ``auto`` when it
    can identify the language (an engine with ``identifies_language`` true)."""
    if language == AUTO_LANGUAGE:
        return bool(getattr(stt, "identifies_language", False))
    return language in stt.languages()


def optional_keywords(glossary: Glossary | None, *, partial: bool = False) -> dict[str, Any]:
    """The optional keywords of ``translate`` and ``transcribe`` that are set: a
    glossary that is not empty, ``partial`` when true. Callers and wrappers pass only
    these, so an engine need not declare what it is never offered."""
    keywords: dict[str, Any] = {"glossary": glossary} if glossary else {}
    if partial:
        keywords["partial"] = True
    return keywords


def translation_route(engine: Translator, source: str, target: str) -> tuple[str, ...]:
    """The languages a ``source`` -> ``target`` translation by ``engine`` passes
    through, both ends included: the engine's own ``route`` when it has one (routing
    engines and their wrappers), else ``(source, target)``; ``(source,)`` when they are
    the same language."""
    if source == target:
        return (source,)
    route = getattr(engine, "route", None)
    found = route(source, target) if callable(route) else None
    return tuple(found) if found else (source, target)
