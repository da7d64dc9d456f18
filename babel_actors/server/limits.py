"""The counting behind the per-client limits: sans-IO, with time passed in.

Nothing here reads a clock, a socket or the config: the guard (``guard.py``) hands in
``now`` (``trio.current_time()``) and the limits, so each structure is tested on its
own with plain numbers. Every table is bounded: entries go when they stop mattering,
and the join-failure table, the one a client can grow on purpose, also has a cap.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol


class TokenBucket:
    """Seconds of audio a host may still send ahead of real time.

    It starts full at ``burst`` and refills at ``rate`` per second of ``now``, never past
    ``burst``. A message is admitted while the bucket is not in debt, and its cost is
    taken in full, so one long message (a reconnecting browser flushing what it
    buffered) is never cut, and the host then waits off the debt before the next one is
    admitted: the cost of a message throttles the ones after it, as in Guava's
    ``RateLimiter``. Over any stretch of ``t`` seconds a host gets at most
    ``burst + rate * t`` seconds of audio plus one message.
    """

    def __init__(self, *, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._updated = now

    def take(self, cost: float, now: float) -> bool:
        """Admit ``cost`` (and take it), or refuse it and take nothing."""
        elapsed = max(0.0, now - self._updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self._updated = now
        if self.tokens <= 0:
            return False
        self.tokens -= cost
        return True


class FailureWindow:
    """Failures per client in a sliding window of ``window_s`` seconds.

    A client with ``limit`` failures inside the window is locked out until the oldest
    of them leaves it; refused attempts are not failures, so a locked-out client cannot
    extend its own lockout, and gets one more try each time a failure ages out. Memory:
    at most ``limit`` times per client; clients whose failures all aged out are
    dropped when the table is swept, and past ``max_clients`` the client idle longest
    is forgotten (someone with that many addresses gains nothing from the eviction:
    each fresh address has its own ``limit`` anyway).
    """

    def __init__(self, *, limit: int, window_s: float, max_clients: int) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, client: str, now: float) -> float | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        failures = self._failures.get(client)
        if failures is None:
            return None
        self._expire(failures, now)
        if not failures:
            del self._failures[client]
            return None
        if len(failures) < self.limit:
            return None
        return failures[0] + self.window_s - now

    def fail(self, client: str, now: float) -> None:
        """Count one failure of ``client`` at ``now``."""
        failures = self._failures.pop(client, None)
        if failures is None:
            failures = deque(maxlen=self.limit)
        failures.append(now)
        self._failures[client] = failures  # last in order: the most recently active
        if len(self._failures) > self.max_clients:
            self._sweep(now)
        while len(self._failures) > self.max_clients:
            del self._failures[next(iter(self._failures))]

    def _expire(self, failures: deque[float], now: float) -> None:
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()

    def _sweep(self, now: float) -> None:
        for client in list(self._failures):
            self._expire(self._failures[client], now)
            if not self._failures[client]:
                del self._failures[client]


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
