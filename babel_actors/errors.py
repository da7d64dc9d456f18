"""The project's small error tree. Engine SDK errors are mapped into it at the boundary,
so nothing above an engine adapter sees a provider's own exception types."""

from __future__ import annotations


class BabelError(Exception):
    """Base of every error babel-actors raises on purpose."""


class ConfigError(BabelError):
    """A setting is missing or malformed."""


class ProtocolError(BabelError):
    """A client sent something the protocol does not allow.

    ``close_code`` is the WebSocket close code when the connection cannot go on, or
    None when an ``error`` message is answer enough.
    """

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.close_code = close_code


class UnsupportedLanguage(BabelError):
    """An engine was asked for a language it does not handle."""

    def __init__(self, engine: str, language: str, available: frozenset[str]) -> None:
        listed = ", ".join(sorted(available)) or "none"
        super().__init__(f"{engine} does not handle language {language!r}; available: {listed}")
        self.language = language
        self.available = available


class EngineError(BabelError):
    """A speech or translation engine failed; the session goes on without its result."""


class RequestRefused(EngineError):
    """The provider answered and refused this one request (a locale or setting it does
    not take): the provider is up, so circuit breakers do not count it."""


class EngineUnavailable(EngineError):
    """An engine cannot be used at all here (not installed, no model, no key)."""


class TranslationFailed(EngineError):
    """One translation failed; listeners get the source text, flagged."""


class SessionNotFound(BabelError):
    """No live session has that id or code."""
