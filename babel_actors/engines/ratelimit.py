"""A client-side rate limiter: requests and tokens per minute, as LLM APIs count them.

OpenAI enforces its per-minute limits over shorter periods too (a minute's 500
requests are not 500 in one second), so the buckets hold ``burst_s`` seconds of
allowance rather than a whole minute's, and start with no more.
"""

from __future__ import annotations

from collections import deque

import trio

_NEGLIGIBLE_S = 1e-6


class _Bucket:
    """A token bucket holding at most ``burst_s`` seconds' allowance, refilled
    continuously."""

    def __init__(self, per_minute: int, now: float, burst_s: float) -> None:
        self.capacity = per_minute * burst_s / 60.0
        self.level = self.capacity
        self._rate = per_minute / 60.0
        self._at = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self._at) * self._rate)
        self._at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (a request bigger than the bucket
        waits for a full bucket, then overdraws it)."""
        missing = min(amount, self.capacity) - self.level
        return max(0.0, missing / self._rate)


class _Waiter:
    """One caller in line; ``turn`` is set when it reaches the front."""

    __slots__ = ("turn",)

    def __init__(self) -> None:
        self.turn = trio.Event()


class RateLimiter:
    """Spaces requests so that neither limit per minute is exceeded; 0 is no limit.

    Waiting urgent callers (finals) are served before every waiting other one
    (partials); each kind in arrival order. The caller at the front of the line waits
    on the clock, the rest for their turn. ``settle`` corrects a request's
    estimate once the server reports what it used; ``pause_until`` holds everyone
    back after the server said ``retry-after``.
    Cancellation: a caller cancelled while waiting takes nothing and leaves the line;
    the next one moves up.
    """

    def __init__(
        self, requests_per_minute: int, tokens_per_minute: int, *, burst_s: float = 60.0
    ) -> None:
        """``burst_s``: the seconds of allowance that may go at once (60: a minute's)."""
        now = trio.current_time()
        self._requests = (
            _Bucket(requests_per_minute, now, burst_s) if requests_per_minute > 0 else None
        )
        self._tokens = _Bucket(tokens_per_minute, now, burst_s) if tokens_per_minute > 0 else None
        self._urgent: deque[_Waiter] = deque()
        self._other: deque[_Waiter] = deque()
        self._paused_until = -float("inf")

    async def acquire(self, tokens: int, *, urgent: bool = False) -> None:
        """Wait until one request reserving ``tokens`` tokens may go, and count it.

        An ``urgent`` request goes before any non-urgent one still waiting; one
        already admitted is never taken back.
        """
        await trio.lowlevel.checkpoint()
        line = self._urgent if urgent else self._other
        me = _Waiter()
        line.append(me)
        try:
            while True:
                if self._front() is me:
                    delay = self._delay(tokens)
                    if delay <= 0:
                        break
                    await trio.sleep(delay)
                else:
                    # A fresh event: the old one may be set from a turn that a final,
                    # arriving before this caller woke, took over.
                    me.turn = trio.Event()
                    await me.turn.wait()
        finally:
            was_front = self._front() is me
            line.remove(me)
            front = self._front()
            if was_front and front is not None:
                front.turn.set()
        if self._requests is not None:
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.level -= tokens

    def settle(self, estimated: int, used: int) -> None:
        """Count ``used`` tokens instead of the ``estimated`` ones already taken."""
        if self._tokens is not None:
            self._tokens.level -= used - estimated

    def pause_until(self, deadline: float) -> None:
        """Let no request go before ``deadline`` (``trio.current_time()`` clock): the
        server said when its limit resets."""
        self._paused_until = max(self._paused_until, deadline)

    def _front(self) -> _Waiter | None:
        line = self._urgent or self._other
        return line[0] if line else None

    def _delay(self, tokens: int) -> float:
        """Seconds until one request of ``tokens`` tokens may go."""
        now = trio.current_time()
        delay = max(0.0, self._paused_until - now)
        for bucket, amount in ((self._requests, 1), (self._tokens, tokens)):
            if bucket is not None:
                bucket.refill(now)
                delay = max(delay, bucket.wait_for(amount))
        # Float rounding can leave a wait too short for the clock to move: none then.
        return delay if delay > _NEGLIGIBLE_S else 0.0
