"""Stage latencies: how long each caption spent in each actor, for ``GET /stats`` and
the ``babel_stage_latency_seconds`` histograms of ``GET /metrics``.

The timestamps ride on the pipeline's values (``AudioFrame.ingested_at``,
``SttResult.produced_at``, ``Segment.split_at``, ``Caption.translated_at``...), so no
actor but the broadcaster touches the recorder: it calls ``record`` once per caption
(one segment in one language) after writing it to every member. Nothing here runs per
listener, and recording is a handful of ``deque.append`` and histogram observations.

Each stage runs from the previous stage's hand-off to its own, queueing included, so
the stages add up to the total:

- ``ingest``: the host's audio taken off the socket -> ingest hands it to STT
- ``stt``: -> the engine produces the result (the audio that completed it)
- ``splitter``: -> the splitter numbers the segment
- ``translator``: -> the caption in one language leaves the translator
- ``broadcaster``: -> that caption has been written to every member's socket
"""

from __future__ import annotations

import math
import resource
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from babel_actors.clock import now_ms
from babel_actors.events import Caption
from babel_actors.metrics import Metrics

STAGES = ("ingest", "stt", "splitter", "translator", "broadcaster")
"""The pipeline's stages, in order."""
TOTALS = ("total", "resultToSocket")
"""``total``: audio off the socket -> written to every member; ``resultToSocket``:
engine result -> written to every member (what the server adds beyond the engine)."""
KINDS = ("final", "partial")


class _Series:
    """The last ``size`` samples (milliseconds) of every stage, for one kind of segment."""

    def __init__(self, size: int) -> None:
        self.count = 0
        self.samples = {name: deque[float](maxlen=size) for name in STAGES + TOTALS}

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "stages": {name: _percentiles(self.samples[name]) for name in STAGES},
            **{name: _percentiles(self.samples[name]) for name in TOTALS},
        }


class StageRecorder:
    """Per-process stage latencies of captions, finals and partials apart.

    Keeps the last ``size`` samples per stage; ``summary`` gives their percentiles.
    With ``metrics``, each sample is also observed (in seconds) in its stage's
    histogram, ``total`` included; ``reset`` leaves the histograms alone.
    A timestamp of 0.0 means an engine or path could not tell (the embedded Whisper
    engine does not say which audio completed a result): the stages it bounds are
    skipped, the others still recorded.
    """

    def __init__(self, size: int, *, metrics: Metrics | None = None) -> None:
        self.size = size
        self.since_ms = now_ms()
        self._series = {kind: _Series(size) for kind in KINDS}
        self._observers: dict[str, dict[str, Callable[[float], None]]] = {}
        if metrics is not None:
            histogram = metrics.stage_seconds
            self._observers = {
                kind: {
                    name: histogram.labels(stage=name, kind=kind).observe
                    for name in (*STAGES, "total")
                }
                for kind in KINDS
            }

    def reset(self) -> None:
        """Forget every sample (``POST /stats/reset``), e.g. before a bench run."""
        self.since_ms = now_ms()
        self._series = {kind: _Series(self.size) for kind in KINDS}

    def record(self, caption: Caption, now: float) -> None:
        """``caption`` was written to every member at ``now`` (``trio.current_time()``)."""
        segment = caption.segment
        kind = "partial" if segment.is_partial else "final"
        series = self._series[kind]
        series.count += 1
        samples = series.samples
        observers = self._observers.get(kind)
        marks = (
            segment.audio_received_at,
            segment.audio_ingested_at,
            segment.recognized_at,
            segment.split_at,
            caption.translated_at,
            now,
        )
        for name, start, end in zip(STAGES, marks[:-1], marks[1:], strict=True):
            if start and end:
                samples[name].append((end - start) * 1000.0)
                if observers is not None:
                    observers[name](end - start)
        if segment.audio_received_at:
            samples["total"].append((now - segment.audio_received_at) * 1000.0)
            if observers is not None:
                observers["total"](now - segment.audio_received_at)
        if segment.recognized_at:
            samples["resultToSocket"].append((now - segment.recognized_at) * 1000.0)

    def summary(self) -> dict[str, Any]:
        """What ``GET /stats`` shows: percentiles per stage, finals and partials apart."""
        return {
            "since": self.since_ms,
            "unit": "ms",
            "window": self.size,
            **{kind: series.summary() for kind, series in self._series.items()},
        }


def process_usage() -> dict[str, Any]:
    """This process's CPU seconds (all threads) and resident memory, for ``/stats``."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpuUserSeconds": round(usage.ru_utime, 4),
        "cpuSystemSeconds": round(usage.ru_stime, 4),
        "rssBytes": _rss_bytes(usage.ru_maxrss * 1024),
        "maxRssBytes": usage.ru_maxrss * 1024,
        "monotonicSeconds": round(time.monotonic(), 4),
    }


def _rss_bytes(fallback: int) -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return fallback
    return pages * resource.getpagesize()


def _percentiles(samples: deque[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)

    return {
        "n": len(ordered),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": round(ordered[-1], 3),
    }
