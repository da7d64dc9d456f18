"""A client-side rate limiter: requests and tokens per minute, as LLM APIs count them."""

from __future__ import annotations

import trio


class _Bucket:
    """A token bucket holding at most one minute's allowance, refilled continuously."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.level = float(per_minute)
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


class RateLimiter:
    """Spaces requests so that neither limit per minute is exceeded; 0 is no limit.

    Callers are served in order (a ``trio.Lock`` is fair). ``settle`` corrects a
    request's estimate once the server reports what it used; ``pause_until`` holds
    everyone back after the server said ``retry-after``.
    Cancellation: a caller cancelled while waiting takes nothing.
    """

    def __init__(self, requests_per_minute: int, tokens_per_minute: int) -> None:
        now = trio.current_time()
        self._requests = _Bucket(requests_per_minute, now) if requests_per_minute > 0 else None
        self._tokens = _Bucket(tokens_per_minute, now) if tokens_per_minute > 0 else None
        self._lock = trio.Lock()
        self._paused_until = -float("inf")

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of about ``tokens`` tokens may go, and count it."""
        async with self._lock:
            while True:
                now = trio.current_time()
                wait = max(0.0, self._paused_until - now)
                for bucket, amount in ((self._requests, 1), (self._tokens, tokens)):
                    if bucket is not None:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(amount))
                if wait <= 0:
                    break
                await trio.sleep(wait)
            if self._requests is not None:
                self._requests.level -= 1
            if self._tokens is not None:
                self._tokens.level -= tokens

    def settle(self, estimated: int, used: int) -> None:
        """Count ``used`` tokens instead of the ``estimated`` ones already taken."""
        if self._tokens is not None:
            self._tokens.level -= used - estimated

    def pause_until(self, deadline: float) -> None:
        """Let no request go before ``deadline`` (``trio.current_time()`` clock)."""
        self._paused_until = max(self._paused_until, deadline)
