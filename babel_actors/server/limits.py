"""The counting behind the per-client limits: sans-IO, with time passed in.

Nothing here reads a clock, a socket or the config: the guard (``guard.py``) hands in
``now`` (``trio.current_time()``) and the limits, so each structure is tested on its
own with plain numbers. Every table is bounded: entries go when they stop mattering,
and the join-failure table, the one a client can grow on purpose, also has a cap.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Protocol


class TokenBucket:
    """What a client may still do at once: ``burst`` tokens, refilled at ``rate`` per
    second of ``now``, never past ``burst``.

    A cost is admitted while the bucket is not in debt, and taken in full, so a
    message is never cut, and the client then waits off the debt before the next one
    is admitted: the cost of a message throttles the ones after it, as in Guava's
    ``RateLimiter``. Over any stretch of ``t`` seconds a client gets at most
    ``burst + rate * t`` plus one message's cost.
    """

    def __init__(self, *, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._updated = now

    def refill(self, now: float) -> float:
        """Add what ``now`` brings; the tokens held (negative: the debt)."""
        elapsed = max(0.0, now - self._updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self._updated = max(self._updated, now)
        return self.tokens

    def take(self, cost: float, now: float) -> bool:
        """Admit ``cost`` (and take it), or refuse it and take nothing."""
        if self.refill(now) <= 0:
            return False
        self.tokens -= cost
        return True


class AudioMeter:
    """Seconds of audio each session's host, and each owner (an API key, or a
    client's address), may still send, on the host's own timeline.

    A session's stream begins with the host connection that first sends audio
    (``began``, its start): from then on the session may have sent at most ``burst``
    plus ``rate`` times the wall time elapsed. That allowance is not capped, so audio
    a host sent in real time while the server was not reading it (a stall on our side,
    a pipeline that held back the host's socket) arrives as one burst and is still
    within it, while a host faster than ``rate`` times real time runs into debt however
    the server reads it. The cost: a host that was silent may catch up its silence.
    An owner starts with one ``burst`` and earns ``rate`` a second for each of its
    live sessions' streams, from each one's start: its sessions share what they earn
    (an owner streaming several sessions in real time is never refused), and a new
    session earns from its own start, so an owner that ends a session and starts
    another (a solo client reconnecting) finds its budget as it left it, not a fresh
    burst. Once none of its sessions is live, it keeps at most one ``burst`` and
    earns ``rate`` a second up to it again.

    A message is admitted while neither its session nor its owner is in debt, and is
    then taken in full from both: a message is never cut, and its cost throttles the
    ones after it (as in Guava's ``RateLimiter``).
    Memory: an owner is kept while it has a live session or holds less than a burst;
    the table is swept of the others whenever it has doubled since the last sweep, so
    it stays about as big as the sessions sending audio.
    """

    def __init__(self, *, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._owners: dict[str, _Owner] = {}
        self._sweep_at = 64

    def __len__(self) -> int:
        return len(self._owners)

    def take(
        self, owner: str, session: Ended, cost: float, now: float, *, began: float | None = None
    ) -> float | None:
        """Admit ``cost`` seconds of ``owner``'s ``session`` (None), or refuse it and
        take nothing: the seconds until a message can be admitted again. ``began``:
        when the session's host connection started (default ``now``); the session's
        stream began with the first one."""
        entry = self._owners.get(owner)
        if entry is None:
            if len(self._owners) >= self._sweep_at:
                self._sweep(now)
            entry = self._owners[owner] = _Owner(self.burst, now)
        entry.earn(now, self.rate, self.burst)
        stream = entry.streams.get(session)
        if stream is None:
            start = now if began is None else min(began, now)
            stream = entry.streams[session] = _Stream(start)
            entry.credit += self.rate * (now - start)  # what it earned before its first audio
        own = self.burst + self.rate * (now - stream.start) - stream.sent
        if own <= 0 or entry.credit <= 0:
            return max(-own / self.rate, -entry.credit / (self.rate * len(entry.streams)))
        stream.sent += cost
        entry.credit -= cost
        return None

    def _sweep(self, now: float) -> None:
        for owner, entry in list(self._owners.items()):
            entry.earn(now, self.rate, self.burst)
            if not entry.streams and entry.credit >= self.burst:
                del self._owners[owner]
        self._sweep_at = max(64, 2 * len(self._owners))


class _Stream:
    """One session's audio: when its stream began, and the seconds it has sent."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.sent = 0.0


class _Owner:
    """An owner's credit: seconds of audio it may still send (negative: its debt)."""

    def __init__(self, burst: float, now: float) -> None:
        self.credit = burst
        self.updated = now
        self.streams: dict[Ended, _Stream] = {}

    def earn(self, now: float, rate: float, burst: float) -> None:
        """Add ``rate`` a second for each live stream since the last update; forget
        ended streams, which earn no more. With none left, keep at most a burst,
        earning ``rate`` a second up to it."""
        for ended in [s for s in self.streams if s.is_set()]:
            del self.streams[ended]
        elapsed = max(0.0, now - self.updated)
        if self.streams:
            self.credit += rate * len(self.streams) * elapsed
        else:
            self.credit = min(burst, self.credit + rate * elapsed)
        self.updated = max(self.updated, now)


class MessageMeter:
    """Messages one connection may send that are not audio: a ``TokenBucket`` of
    ``burst`` messages refilled at ``rate`` a second, and the patience for a client
    that goes on sending while refused.

    ``take`` answers ``ADMIT``, ``REFUSE`` (the message is dropped and the client
    told), or ``CLOSE`` once ``burst`` messages in a row were refused: a client that
    does not slow down when told is not served further.
    """

    ADMIT = "admit"
    REFUSE = "refuse"
    CLOSE = "close"

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._bucket = TokenBucket(rate=rate, burst=float(burst), now=now)
        self.refused = 0
        """Messages refused since the last one admitted."""

    def take(self, now: float) -> str:
        if self._bucket.take(1.0, now):
            self.refused = 0
            return self.ADMIT
        self.refused += 1
        return self.CLOSE if self.refused >= self.burst else self.REFUSE

    def retry_after(self, now: float) -> float:
        """Seconds until a message can be admitted again."""
        return max(0.0, -self._bucket.refill(now)) / self.rate


class FailureWindow:
    """Failures per client in a sliding window of ``window_s`` seconds.

    A client with ``limit`` failures inside the window is locked out until the oldest
    of them leaves it; refused attempts are not failures, so a locked-out client cannot
    extend its own lockout, and gets one more try each time a failure ages out.

    Memory: at most ``limit`` times per client, for at most ``max_clients`` clients.
    The table is kept in order of each client's latest failure, so clients whose
    failures all aged out are dropped from its front, a few at a time. A full table
    evicts no live entry (someone with many addresses would get their budgets back):
    clients not in it share one overflow window of ``limit`` failures until entries
    age out, so under such an attack new clients are refused first (fail closed).
    """

    def __init__(self, *, limit: int, window_s: float, max_clients: int) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._overflow: deque[float] = deque(maxlen=limit)

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, client: str, now: float) -> float | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        failures = self._failures.get(client)
        if failures is None:
            if not self._full(now):
                return None
            failures = self._overflow
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if len(failures) < self.limit:
            return None
        return failures[0] + self.window_s - now

    def fail(self, client: str, now: float) -> None:
        """Count one failure of ``client`` at ``now``."""
        failures = self._failures.get(client)
        if failures is not None:
            self._failures.move_to_end(client)  # the table's order: latest failure last
        elif self._full(now):
            failures = self._overflow
        else:
            failures = self._failures[client] = deque(maxlen=self.limit)
        failures.append(now)

    def _full(self, now: float) -> bool:
        """Whether the table is full once clients whose failures all aged out are
        dropped from its front (O(1) amortised: each entry is dropped once)."""
        while self._failures:
            oldest = next(iter(self._failures.values()))
            if oldest and oldest[-1] > now - self.window_s:
                break
            self._failures.popitem(last=False)
        return len(self._failures) >= self.max_clients


class ClientCounts:
    """How many of something each client holds open, up to ``limit`` each.

    Clients holding nothing are not kept, so the table is as big as what is open.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, client: str) -> int:
        return self._counts.get(client, 0)

    def acquire(self, client: str) -> bool:
        """Take one for ``client``; False (and nothing taken) when it holds ``limit``."""
        held = self._counts.get(client, 0)
        if self.limit and held >= self.limit:
            return False
        self._counts[client] = held + 1
        return True

    def release(self, client: str) -> None:
        held = self._counts.get(client, 0) - 1
        if held > 0:
            self._counts[client] = held
        else:
            self._counts.pop(client, None)


class Ended(Protocol):
    """What ``LiveCounts`` watches: ``trio.Event`` fits."""

    def is_set(self) -> bool: ...


class LiveCounts:
    """Things each owner has started that have not ended yet (sessions per key).

    An owner's ended entries are dropped whenever it is counted; the whole table is
    swept when it has doubled since the last sweep, so owners whose every session
    ended do not pile up. Amortised, each start costs O(1).
    """

    def __init__(self) -> None:
        self._live: dict[str, list[Ended]] = {}
        self._sweep_at = 64

    def __len__(self) -> int:
        return len(self._live)

    def count(self, owner: str) -> int:
        entries = self._live.get(owner)
        if entries is None:
            return 0
        entries[:] = [e for e in entries if not e.is_set()]
        if not entries:
            del self._live[owner]
        return len(entries)

    def add(self, owner: str, ended: Ended) -> None:
        self._live.setdefault(owner, []).append(ended)
        if len(self._live) >= self._sweep_at:
            for key in list(self._live):
                self.count(key)
            self._sweep_at = max(64, 2 * len(self._live))
