"""Prometheus metrics of one server (``GET /metrics``).

Each ``Metrics`` owns its own ``CollectorRegistry``, so servers embedded side by side
in one process (tests, a cluster in one program) never mix their numbers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    """The server's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.refusals = Counter(
            "babel_refusals",
            "Requests and messages refused by an access rule or a limit, by reason.",
            ["reason"],
            registry=self.registry,
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format and its content type, for a scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
