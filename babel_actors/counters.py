"""The counters a member bumps itself, apart from ``metrics`` so that ``audience``
(whose members take them) and ``metrics`` (which reads the audience) need not import
each other."""

from __future__ import annotations

import attrs
from prometheus_client import Counter


class Tally:
    """A plain count, exposed as a counter: bumped on a path too hot for a lock
    (a slow member's partials coalescing inside the broadcaster's loop); trio runs the
    bumps and the scrape on one thread."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


@attrs.frozen
class MemberCounters:
    """The counters one member bumps itself, for its role: handed to it when it joins
    a session (``Member.count_into``)."""

    audio_in: Counter
    """Audio messages from the member's client."""
    control_in: Counter
    """Every other message from its client (malformed ones included)."""
    coalesced: Tally
    """Partials replaced by a newer one before they were sent."""
    too_slow: Counter
    """Times the member was closed for owing too much."""
