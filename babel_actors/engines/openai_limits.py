"""What the ``openai`` engine reads of OpenAI's rate limits: the tokens a request
reserves, and how long a 429 says to wait.

OpenAI counts a request against the token limit before it runs, for its prompt and the
most it may write; a 429 says when to come back in ``retry-after`` (not always sent),
in ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` (``1s``, ``6m0s``,
``20ms``), and in its message ("Please try again in 1.2s").

Sans-IO: plain values, no trio, no HTTP.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping, Sequence

CHARS_PER_TOKEN = 4
"""A rough token estimate; corrected by the reply's ``usage``."""
_TOKENS_PER_MESSAGE = 4
"""What the chat format adds per message (role and separators), roughly."""
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_MESSAGE_HINT = re.compile(r"try again in (\d+(?:\.\d+)?(?:ms|s|m|h)(?:\d+(?:\.\d+)?(?:ms|s))*)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def prompt_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """About how many tokens ``messages`` make, as OpenAI estimates before running."""
    chars = sum(len(m["content"]) for m in messages)
    return chars // CHARS_PER_TOKEN + _TOKENS_PER_MESSAGE * len(messages) + 3


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``1s``, ``6m0s``, ``1.2s``, ``20ms``), or None."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def retry_after_s(headers: Mapping[str, str], message: str) -> float | None:
    """How long a 429 (or 503) says to wait, or None when it does not say.

    ``retry-after-ms`` or ``retry-after`` when sent; else the later of the reset
    headers of the limits that are spent (all of them when none says it is spent);
    else the message's "try again in ...".
    """
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        if "retry-after" in headers:
            value = headers["retry-after"]
            try:
                return max(0.0, float(value))
            except ValueError:
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        pass
    resets: list[float] = []
    spent: list[float] = []
    for kind in ("requests", "tokens"):
        reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
        if reset is None:
            continue
        resets.append(reset)
        if headers.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0":
            spent.append(reset)
    if spent or resets:
        return max(spent or resets)
    hint = _MESSAGE_HINT.search(message)
    if hint:
        return parse_duration(hint[1])
    return None
