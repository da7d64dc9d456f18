"""Acceptance (issue 13): a host that changes the language it speaks mid-session is
translated from the new language from then on.

Measured bug: the splitter keeps the language the session was built with, so after
``init`` with ``sourceLang: "es"`` Spanish speech is translated as English. What a
stranger would try: speak English, send ``init`` with ``es``, speak Spanish, and look
at what the translator was asked and what listeners in three languages read.

The speech engine is scripted, with one script per language (a new stream opens in
the new language, as it does on any engine); the translator is echo behind a
recorder of each request's (text, source, target).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs
import trio
from helpers import checked, finals_of, listener_path, start_session

from babel_actors.config import Config
from babel_actors.engines.base import Translator, optional_keywords
from babel_actors.events import AudioEvent, SttResult
from babel_actors.glossary import Glossary
from babel_actors.testing import (
    EchoTranslator,
    ScriptedSpeechToText,
    connect,
    running_server,
    sentence_script,
    silence,
)

ENGLISH = ("the first english sentence", "the second english sentence")
SPANISH = ("la primera frase en español", "la segunda frase en español")
SECONDS = 1.0
LISTENERS = ("fr", "en", "es")
TIMEOUT_S = 20


class ScriptedByLanguage:
    """The scripted engine, with a script of its own for each language it hears: a
    stream opened in ``es`` speaks the Spanish script."""

    name = "scripted"
    sample_rate = 16000

    def __init__(self, scripts: dict[str, Sequence[str]]) -> None:
        self._engines = {
            language: ScriptedSpeechToText(sentence_script(sentences, seconds_each=SECONDS))
            for language, sentences in scripts.items()
        }

    def languages(self) -> frozenset[str]:
        return frozenset(self._engines)

    async def transcribe(
        self,
        audio: trio.MemoryReceiveChannel[AudioEvent],
        results: trio.MemorySendChannel[SttResult],
        *,
        language: str,
        glossary: Glossary | None = None,
    ) -> None:
        await self._engines[language].transcribe(
            audio, results, language=language, **optional_keywords(glossary)
        )

    async def aclose(self) -> None:
        return None


@attrs.frozen
class Call:
    text: str
    source: str
    target: str


class RecordingTranslator:
    """``engine``, with the (text, source, target) of every final's translation
    request recorded (partials come flagged ``partial`` and are left out)."""

    def __init__(self, engine: Translator) -> None:
        self.engine = engine
        self.name = engine.name
        self.finals: list[Call] = []

    def sources(self) -> frozenset[str]:
        return self.engine.sources()

    def targets(self, source: str) -> frozenset[str]:
        return self.engine.targets(source)

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
        if not partial:
            self.finals.append(Call(" ".join(text.split()), source, target))
        extra = optional_keywords(glossary, partial=partial)
        return await self.engine.translate(
            text, source=source, target=target, context=context, **extra
        )

    async def aclose(self) -> None:
        await self.engine.aclose()


def read_as(listener: str, text: str, source: str) -> tuple[str, str, str]:
    """What a listener of ``listener`` should read for a final: its original text,
    its ``sourceLang``, and its translation (echo's, or the text itself when the
    listener reads the language spoken)."""
    return (text, source, text if listener == source else f"[{listener}] {text}")


async def test_finals_after_a_source_change_are_translated_from_the_new_language() -> None:
    recorder = RecordingTranslator(EchoTranslator())
    stt = ScriptedByLanguage({"en": ENGLISH, "es": SPANISH})
    with trio.fail_after(TIMEOUT_S):
        async with running_server(Config(port=0), stt=stt, mt=recorder) as server:
            session = await start_session(server)
            sid = session["sessionId"]
            async with (
                connect(server, listener_path(sid, "fr")) as fr,
                connect(server, listener_path(sid, "en")) as en,
                connect(server, listener_path(sid, "es")) as es,
                connect(server, session["wsUrl"]) as host,
            ):
                listeners = {"fr": fr, "en": en, "es": es}
                for listener in listeners.values():
                    assert (await listener.receive())["type"] == "session_joined"
                await host.receive_until(lambda m: m["type"] == "session_ready")
                await host.send({"type": "init", "sourceLang": "en"})
                await host.receive_until(lambda m: m["type"] == "session_ready")
                # The resampler holds back a few milliseconds: a short lead makes
                # each sentence's audio enough for its final.
                await host.send_audio(silence(0.05))
                await host.send_audio(silence(SECONDS * len(ENGLISH)))
                for listener in listeners.values():
                    await listener.finals(len(ENGLISH))

                await host.send({"type": "init", "sourceLang": "es"})
                ready = await host.receive_until(lambda m: m["type"] == "session_ready")
                assert ready[-1]["sourceLang"] == "es"
                await host.send_audio(silence(SECONDS * len(SPANISH) + 0.05))
                for listener in listeners.values():
                    await listener.finals(len(SPANISH))

    spoken = [(text, "en") for text in ENGLISH] + [(text, "es") for text in SPANISH]
    expected_calls = Counter(
        Call(text, source, target)
        for text, source in spoken
        for target in LISTENERS
        if target != source
    )
    assert Counter(recorder.finals) == expected_calls
    for language, listener in listeners.items():
        messages: list[dict[str, Any]] = checked(listener.received)
        finals = finals_of(messages)
        assert [(m["originalText"], m["sourceLang"], m["translatedText"]) for m in finals] == [
            read_as(language, text, source) for text, source in spoken
        ], language
        assert all(m["hasTranslation"] and m["targetLang"] == language for m in finals)
