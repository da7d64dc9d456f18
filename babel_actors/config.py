"""Every setting, size, timeout and limit of babel-actors, in one frozen value.

``Config.from_env()`` reads ``BABEL_*`` variables; the CLI overlays its flags on top.
Nothing else in the package reads the environment for settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from babel_actors.errors import ConfigError


@attrs.frozen(kw_only=True)
class Config:
    """The server's and the pipeline's settings. Durations are in seconds."""

    host: str = "127.0.0.1"
    """Address to listen on (``BABEL_HOST``)."""
    port: int = 8080
    """TCP port for HTTP and WebSocket alike (``BABEL_PORT``); 0 picks a free one."""
    stt: str = "whisper"
    """Speech engine: ``whisper``, ``scripted`` (``BABEL_STT``)."""
    mt: str = "apertium"
    """Translation engine: ``apertium``, ``echo`` (``BABEL_MT``)."""
    default_source_lang: str = "en"
    """Source language of a host that sends no ``init`` (``BABEL_SOURCE_LANG``)."""
    allow_tokenless_hosts: bool = False
    """Let hosts connect without the ``hostToken``, as old clients do."""

    host_grace_s: float = 30.0
    """How long a session waits for a dropped host to reconnect before ending."""
    session_idle_s: float = 900.0
    """A session with no audio and no connection for this long expires."""
    close_timeout_s: float = 2.0
    """How long a closing WebSocket peer gets to answer the close frame."""
    shutdown_grace_s: float = 5.0
    """On SIGINT/SIGTERM, how long connections get to close cleanly."""

    max_message_bytes: int = 1 << 20
    """Largest WebSocket message accepted (close 1009 beyond)."""
    max_http_body_bytes: int = 64 << 10
    """Largest HTTP request body accepted (413 beyond)."""
    max_sample_rate: int = 96000
    """Highest ``sampleRate`` a client may declare."""
    default_sample_rate: int = 24000
    """Rate of client PCM when ``init`` names none (the original client's rate)."""

    audio_queue: int = 64
    """Audio frames buffered between ingest and the engine."""
    result_queue: int = 64
    """Engine results buffered before the splitter."""
    segment_queue: int = 64
    """Segments buffered before the translator."""
    caption_queue: int = 256
    """Captions buffered before the broadcaster."""
    lane_queue: int = 64
    """Finals buffered per target language while translation runs."""
    listener_backlog_bytes: int = 256 << 10
    """Unsent bytes a listener may owe before it is told it is too slow and closed."""

    engine_retry_s: float = 1.0
    """Wait before reopening a speech stream after the engine failed."""
    socket_send_buffer: int = 0
    """SO_SNDBUF for client sockets; 0 keeps the kernel's autotuning. A small buffer
    moves a slow reader's queue into the server's backlog, where partials coalesce."""
    partial_interval_s: float = 0.3
    """Least time between two partial translations into one language."""
    translate_timeout_s: float = 10.0
    """Longest wait for one translation; then the source text goes out, flagged."""
    context_segments: int = 3
    """How many previous finals are passed to the translator as context."""
    history_size: int = 500
    """Finals kept per session for ``lastSeq`` resume."""
    catchup_finals: int = 10
    """Recent finals a late joiner receives before live captions."""

    whisper_model_dir: str = ""
    """A CTranslate2 Whisper model directory; empty uses the bundled tiny.en."""
    whisper_threads: int = 1
    """Concurrent Whisper decodes in the process (a CapacityLimiter)."""
    whisper_partial_every_s: float = 1.0
    """Seconds of new speech between two partial decodes."""
    apertium_modes_dir: str = "/usr/share/apertium/modes"
    """Where the installed Apertium language pairs' ``.mode`` files live."""
    script_path: str = ""
    """JSON script for the ``scripted`` engine; empty uses the built-in one."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a Config from ``BABEL_<FIELD>`` variables, then ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            raw = env.get(f"BABEL_{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = _parse(field.name, field.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(name: str, kind: Any, raw: str) -> Any:
    try:
        if kind in (bool, "bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
    except ValueError:
        raise ConfigError(f"BABEL_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
