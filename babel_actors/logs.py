"""Logging for operators: one JSON object a line (or text on a terminal), each record
tagged with the session it belongs to, and nothing secret or audio in it.

- **Session ids.** ``bind_session`` marks the calling task (and the tasks it spawns
  from then on: trio copies the spawner's context) as working for one session. The
  session's supervisor binds itself, so every actor's records carry the id; so does
  a connection's task when it joins a session. A record may also name it explicitly
  (``extra={"session_id": ...}``), as a session's end does, whichever task ends it.
- **Access log.** The logger ``babel_actors.access`` writes one INFO line per HTTP
  request or refusal (client, method, path without its query, status, and the
  refusal's reason) and per WebSocket opened (its role and session) and closed (its
  close code): never a header, a query string, a body or a message. Ordinary ends
  (a client gone, an idle connection closed) are INFO or DEBUG, without tracebacks;
  a traceback means a bug.
- **Redaction.** ``RedactSecrets`` rewrites a record's message, exception and stack
  text before any formatter sees them: the value after anything named like a token, a
  key or an authorization (``token=``, ``apiKey=``, ``X-API-Key:``, ``Authorization:
  Bearer ...``, ``"hostToken": ...``), and any long run of base64 or of escaped bytes,
  which is what audio looks like in text. No code path logs audio or a message's
  payload; this is the net under that rule.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any, TextIO

from babel_actors.errors import ConfigError

FORMATS = ("auto", "json", "text")

_session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "babel_session_id", default=None
)

REDACTED = "[redacted]"
_SECRET_NAME = r"[\w-]*(?:token|key|secret|password|authorization)"
_SECRET_ASSIGNED = re.compile(
    rf"""(?ix)
    (\b{_SECRET_NAME}["']?\s*[:=]\s*(?:b?["'])?)  # a name that says secret, then : or =
    (?:(?:bearer|basic)\s+)?                    # an auth scheme
    [^\s"'&,;)}}\]]+                            # the value
    """
)
_SECRET_PAIR = re.compile(
    rf"""(?ix)
    (\b{_SECRET_NAME}["']\s*,\s*b?["'])         # a (name, value) pair's repr
    (?:(?:bearer|basic)\s+)?
    [^"']+
    """
)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")
_ESCAPED_BYTES = re.compile(r"(?:\\x[0-9a-fA-F]{2}){8,}")


def bind_session(session_id: str) -> None:
    """Tag the records the calling task logs from now on with ``session_id``."""
    _session_id.set(session_id)


def redact(text: str) -> str:
    """``text`` without secret values, base64 runs or escaped byte strings."""
    text = _SECRET_ASSIGNED.sub(rf"\g<1>{REDACTED}", text)
    text = _SECRET_PAIR.sub(rf"\g<1>{REDACTED}", text)
    text = _BASE64_RUN.sub(lambda m: f"[{len(m.group())} base64 chars]", text)
    return _ESCAPED_BYTES.sub(lambda m: f"[{len(m.group()) // 4} bytes]", text)


class SessionTag(logging.Filter):
    """Sets ``record.session_id``: the one given in ``extra``, else the logging task's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "session_id", None) is None:
            record.session_id = _session_id.get()
        return True


class RedactSecrets(logging.Filter):
    """Rewrites the record's message, exception and stack text through ``redact``."""

    _tracebacks = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # A bad format string: keep what there is, redacted, rather than let
            # logging's error report print the raw arguments.
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._tracebacks.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, and when known ``session_id``, ``exception`` and ``stack``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        session_id = getattr(record, "session_id", None)
        if session_id is not None:
            entry["session_id"] = session_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [session]: message``, then the traceback, if any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(session_tag)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        session_id = getattr(record, "session_id", None)
        record.session_tag = f" [{session_id}]" if session_id else ""
        return super().formatMessage(record)


def configure(log_format: str, level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Send every record (warnings too) to ``stream`` (stderr) as ``log_format`` says:
    ``json``, ``text``, or ``auto`` (text on a terminal, JSON otherwise). Replaces the
    root logger's handlers: for the CLI, which owns the process's logging."""
    if log_format not in FORMATS:
        raise ConfigError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    logging.basicConfig(level=level, handlers=[handler(log_format, stream)], force=True)
    logging.captureWarnings(True)


def handler(log_format: str, stream: TextIO) -> logging.Handler:
    """A handler writing ``json`` or ``text`` records to ``stream``, tagged and redacted."""
    out = logging.StreamHandler(stream)
    out.addFilter(SessionTag())
    out.addFilter(RedactSecrets())
    out.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return out
