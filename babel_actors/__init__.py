"""babel-actors: a live speech-translation server built as trio actors.

The public API for embedders: run a session pipeline in your own trio program with
``open_session`` and ``listen``, or the whole server with ``serve``.
"""

from babel_actors.audience import Member, Role
from babel_actors.config import Config
from babel_actors.embed import CaptionStream, EmbeddedSession, listen, open_session
from babel_actors.engines import make_mt, make_stt
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.errors import (
    BabelError,
    ConfigError,
    EngineError,
    ProtocolError,
    TranslationFailed,
    UnsupportedLanguage,
)
from babel_actors.events import AudioFrame, Caption, EndOfSpeech, Segment, SttResult
from babel_actors.session import Session

__all__ = [
    "AudioFrame",
    "BabelError",
    "Caption",
    "CaptionStream",
    "Config",
    "ConfigError",
    "EmbeddedSession",
    "EndOfSpeech",
    "EngineError",
    "Member",
    "ProtocolError",
    "Role",
    "Segment",
    "Session",
    "SpeechToText",
    "SttResult",
    "TranslationFailed",
    "Translator",
    "UnsupportedLanguage",
    "listen",
    "make_mt",
    "make_stt",
    "open_session",
]
