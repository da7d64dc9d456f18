"""When a session ends by itself: one rule for a session served here and one shared
by the nodes of a cluster. Pure: times in seconds on any one clock."""

from __future__ import annotations

import math

import attrs

from babel_actors.config import Config

ENDED_MESSAGES = {
    "host_ended": "The host ended the session.",
    "host_timeout": "The host has left; the session has ended.",
    "expired": "The session expired unused.",
    "lifetime": "The session reached its time limit and has ended.",
    "error": "The session ended because of a server error.",
    "shutdown": "The server is shutting down.",
}
"""What listeners read in ``session_ended`` for each reason (``lifetime`` is sent as
``expired``)."""


@attrs.frozen
class Verdict:
    """Whether a session should end now, and if not, when to look again."""

    reason: str | None
    """``host_timeout``, ``expired`` or ``lifetime``; None while it lives on."""
    next_check: float
    """When the verdict may change unless something happens first (``math.inf``)."""


def judge(
    config: Config,
    *,
    now: float,
    created: float,
    host_here: bool,
    host_seen: bool,
    away_since: float,
    solo: bool = False,
) -> Verdict:
    """The rule: a session ends at ``max_session_s`` whatever happens; while no host is
    connected, ``host_grace_s`` after its host left (at once for a solo session), or
    ``session_idle_s`` after it was created if no host ever came."""
    lifetime_ends = created + config.max_session_s if config.max_session_s else math.inf
    if host_here:
        deadline = math.inf
    elif host_seen:
        deadline = away_since + (0.0 if solo else config.host_grace_s)
    else:
        deadline = created + config.session_idle_s
    if now >= lifetime_ends:
        return Verdict("lifetime", math.inf)
    if now >= deadline:
        return Verdict("host_timeout" if host_seen else "expired", math.inf)
    return Verdict(None, min(deadline, lifetime_ends))
