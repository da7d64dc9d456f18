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
    """Seconds of audio a host may still send ahead of real time.

    It starts full at ``burst`` and refills at ``rate`` per second of ``now``, never past
    ``burst`` (both times ``share`` when several sessions share it, see ``AudioMeter``).
    A message is admitted while the bucket is not in debt, and its cost is taken in
    full, so a message is never cut, and the host then waits off the debt before the
    next one is admitted: the cost of a message throttles the ones after it, as in
    Guava's ``RateLimiter``. Over any stretch of ``t`` seconds a host gets at most
    ``burst + rate * t`` seconds of audio plus one message.
    """

    def __init__(self, *, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._updated = now

    def refill(self, now: float, share: int = 1) -> float:
        """Add what ``now`` brings; the tokens held (negative: the debt)."""
        elapsed = max(0.0, now - self._updated)
        self.tokens = min(self.burst * share, self.tokens + elapsed * self.rate * share)
        self._updated = now
        return self.tokens

    def take(self, cost: float, now: float) -> bool:
        """Admit ``cost`` (and take it), or refuse it and take nothing."""
        if self.refill(now) <= 0:
            return False
        self.tokens -= cost
        return True


class AudioMeter:
    """``TokenBucket``s for audio: one per session, and one per owner (an API key,
    or a client's address) shared by the owner's sessions.

    A message is admitted when neither its session's bucket nor its owner's is in
    debt, and is then taken from both. The session's bucket holds one host to
    ``rate`` (and survives the host's reconnects); the owner's refills at ``rate``
    and holds ``burst`` per live session of the owner that has sent audio, so an
    owner streaming several sessions in real time is never refused, while one that
    ends a session and starts another (a solo client reconnecting) finds the owner's
    bucket as it left it, not a fresh burst.
    Memory: an owner is kept while it has a live session or its bucket is not full
    again; the table is swept of the others whenever it has doubled since the last
    sweep, so it stays about as big as the sessions sending audio.
    """

    def __init__(self, *, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._owners: dict[str, _Owner] = {}
        self._sweep_at = 64

    def __len__(self) -> int:
        return len(self._owners)

    def take(self, owner: str, session: Ended, cost: float, now: float) -> float | None:
        """Admit ``cost`` seconds of ``owner``'s ``session`` (None), or refuse it and
        take nothing: the seconds until a message can be admitted again."""
        entry = self._owners.get(owner)
        if entry is None:
            if len(self._owners) >= self._sweep_at:
                self._sweep(now)
            entry = self._owners[owner] = _Owner(
                TokenBucket(rate=self.rate, burst=self.burst, now=now)
            )
        for ended in [s for s in entry.sessions if s.is_set() and s is not session]:
            del entry.sessions[ended]
        own = entry.sessions.setdefault(
            session, TokenBucket(rate=self.rate, burst=self.burst, now=now)
        )
        share = len(entry.sessions)
        own_tokens, shared_tokens = own.refill(now), entry.shared.refill(now, share)
        if own_tokens <= 0 or shared_tokens <= 0:
            return max(-own_tokens / self.rate, -shared_tokens / (self.rate * share))
        own.tokens -= cost
        entry.shared.tokens -= cost
        return None

    def _sweep(self, now: float) -> None:
        for owner, entry in list(self._owners.items()):
            live = any(not s.is_set() for s in entry.sessions)
            if not live and entry.shared.refill(now) >= self.burst:
                del self._owners[owner]
        self._sweep_at = max(64, 2 * len(self._owners))


class _Owner:
    def __init__(self, shared: TokenBucket) -> None:
        self.shared = shared
        self.sessions: dict[Ended, TokenBucket] = {}


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
