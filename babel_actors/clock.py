"""Wall-clock time as the wire counts it. Everything else uses ``trio.current_time()``."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Unix time in milliseconds, the wire's timestamp unit."""
    return time.time_ns() // 1_000_000
