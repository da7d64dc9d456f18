"""Prometheus metrics of one server (``GET /metrics``).

Each ``Metrics`` owns its own ``CollectorRegistry``, so servers embedded side by side
in one process (tests, a cluster in one program) never mix their numbers. Nothing here
is process-wide: the ``_created`` series are left out of the exposition per registry
(``prometheus_client.disable_created_metrics`` would switch them off for every registry
in the process, an embedder's own included).

What is counted where, so that nothing runs per listener per caption:

- the broadcaster (and a cluster node's re-broadcast) counts a caption once, with the
  number of members it reached (``delivered``);
- the session counts its notices the same way, one increment per notice;
- ``StageRecorder.record`` observes each caption's stage latencies once;
- the translator counts each engine call, the STT actor each stream it restarts;
- a member counts its own messages in, its coalesced partials and its being closed as
  too slow (``MemberCounters``, handed to it when it joins a session);
- sessions, connections by role and listener lag are read from the live sessions at
  scrape time (``live``), so no connection path keeps a gauge up to date.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from babel_actors.audience import Audience, Member, Role
from babel_actors.counters import MemberCounters, Tally
from babel_actors.events import Caption

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Seconds: sub-millisecond hand-offs up to a slow engine's answer."""
UNSENT_BUCKETS = (0, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20)
"""Bytes a listener owes: nothing, a few captions, up to past the default limit."""
PEOPLE = (Role.HOST, Role.LISTENER, Role.SOLO)
"""The roles a connection can have (relays are not connections)."""


class LiveSession(Protocol):
    """What the scrape reads of a live session."""

    @property
    def host(self) -> Member | None: ...

    @property
    def audience(self) -> Audience: ...


class Circuit(Protocol):
    """What the scrape reads of an engine's circuit breaker (``engines.breaker``)."""

    name: str
    rejected: int
    times_opened: int

    @property
    def state(self) -> enum.Enum: ...


class Metrics:
    """The server's counters, gauges and histograms.

    ``live`` lists the sessions served now; without it (an embedded pipeline) the
    scrape-time gauges read zero.
    """

    def __init__(self, live: Callable[[], Iterable[LiveSession]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.refusals = Counter(
            "babel_refusals",
            "Requests and messages refused by an access rule or a limit, by reason.",
            ["reason"],
            registry=registry,
        )
        self.messages_in = Counter(
            "babel_messages_in",
            "WebSocket messages from clients in a session, by role and kind (audio, control).",
            ["role", "kind"],
            registry=registry,
        )
        self.messages_out = Counter(
            "babel_messages_out",
            "Frames sessions wrote to their members, by kind: caption, or notice (stats, "
            "errors, session_ended); a connection's own replies are not counted.",
            ["kind"],
            registry=registry,
        )
        self.finals_delivered = Counter(
            "babel_finals_delivered",
            "Final captions written to members (catch-up included), by caption language.",
            ["language"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "babel_stage_latency_seconds",
            "Time each caption spent in each pipeline stage, and in all (stage=total), "
            "by segment kind (final, partial).",
            ["stage", "kind"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.translations = Counter(
            "babel_translations",
            "Translation requests to an engine, by engine and language pair.",
            ["engine", "source", "target"],
            registry=registry,
        )
        self.translation_failures = Counter(
            "babel_translation_failures",
            "Translations that failed (reason=error) or timed out (reason=timeout); the "
            "listener got the source text.",
            ["engine", "source", "target", "reason"],
            registry=registry,
        )
        self.stt_restarts = Counter(
            "babel_stt_restarts",
            "Speech streams reopened, by engine and reason: error (the engine failed), "
            "language (the host changed it), glossary (new recognition hints).",
            ["engine", "reason"],
            registry=registry,
        )
        self.too_slow = Counter(
            "babel_members_too_slow",
            "Members closed because they owed more than the backlog limit, by role.",
            ["role"],
            registry=registry,
        )
        self.sessions_ended = Counter(
            "babel_sessions_ended",
            "Sessions this server stopped serving, by end reason (error: a crash).",
            ["reason"],
            registry=registry,
        )
        self.coalesced = Tally()
        registry.register(_LiveCollector(live or (lambda: ()), self.coalesced))
        self._caption_out = self.messages_out.labels(kind="caption")
        self._notice_out = self.messages_out.labels(kind="notice")
        self._finals: dict[str, Counter] = {}
        self._members = {
            role: MemberCounters(
                audio_in=self.messages_in.labels(role=role.value, kind="audio"),
                control_in=self.messages_in.labels(role=role.value, kind="control"),
                coalesced=self.coalesced,
                too_slow=self.too_slow.labels(role=role.value),
            )
            for role in PEOPLE
        }

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format and its content type, for a scrape."""
        return generate_latest(_WithoutCreated(self.registry)), CONTENT_TYPE_LATEST

    def watch_circuits(self, circuits: Sequence[Circuit]) -> None:
        """Show each engine's circuit breaker at every scrape: its state, the calls it
        failed at once and the times it opened."""
        if circuits:
            self.registry.register(_CircuitCollector(circuits))

    def member_counters(self, role: Role) -> MemberCounters | None:
        """The counters a member of ``role`` bumps; None for a relay."""
        return self._members.get(role)

    def delivered(self, caption: Caption, members: int) -> None:
        """``caption`` was written to ``members`` members: one increment, whatever
        their number."""
        if members <= 0:
            return
        self._caption_out.inc(members)
        if not caption.segment.is_partial:
            self._finals_in(caption.target_lang).inc(members)

    def caught_up(self, language: str, finals: int) -> None:
        """A joiner was written the ``finals`` it missed, in ``language``."""
        if finals > 0:
            self._caption_out.inc(finals)
            self._finals_in(language).inc(finals)

    def notified(self, members: int) -> None:
        """A notice was written to ``members`` members."""
        if members > 0:
            self._notice_out.inc(members)

    def translation(self, engine: str, source: str, target: str) -> None:
        self.translations.labels(engine, source, target).inc()

    def translation_failed(self, engine: str, source: str, target: str, reason: str) -> None:
        self.translation_failures.labels(engine, source, target, reason).inc()

    def stt_restarted(self, engine: str, reason: str) -> None:
        self.stt_restarts.labels(engine, reason).inc()

    def session_ended(self, reason: str) -> None:
        self.sessions_ended.labels(reason or "ended").inc()

    def _finals_in(self, language: str) -> Counter:
        finals = self._finals.get(language)
        if finals is None:
            finals = self._finals[language] = self.finals_delivered.labels(language)
        return finals


class _LiveCollector:
    """Sessions, connections by role and listener lag, read from the live sessions at
    each scrape; and the coalesced partials' tally."""

    def __init__(self, live: Callable[[], Iterable[LiveSession]], coalesced: Tally) -> None:
        self._live = live
        self._coalesced = coalesced

    def describe(self) -> Iterator[Metric]:
        return self._families(0, dict.fromkeys(PEOPLE, 0), [])

    def collect(self) -> Iterator[Metric]:
        sessions = 0
        roles = dict.fromkeys(PEOPLE, 0)
        unsent: list[int] = []
        for session in self._live():
            sessions += 1
            host = session.host
            if host is not None and host.role in roles:
                roles[host.role] += 1
            for member in session.audience.members():
                if member.role is Role.LISTENER:
                    roles[Role.LISTENER] += 1
                    unsent.append(member.unsent_bytes())
        return self._families(sessions, roles, unsent)

    def _families(
        self, sessions: int, roles: dict[Role, int], unsent: list[int]
    ) -> Iterator[Metric]:
        yield GaugeMetricFamily("babel_sessions", "Sessions served now.", value=sessions)
        connections = GaugeMetricFamily(
            "babel_connections", "Clients in a session now, by role.", labels=["role"]
        )
        for role, count in roles.items():
            connections.add_metric([role.value], count)
        yield connections
        yield CounterMetricFamily(
            "babel_partials_coalesced",
            "Partial captions a slow reader never got: a newer partial replaced them "
            "while they still waited to be sent.",
            value=self._coalesced.count,
        )
        unsent.sort()
        buckets = [
            (str(float(bound)), float(bisect_right(unsent, bound))) for bound in UNSENT_BUCKETS
        ]
        buckets.append(("+Inf", float(len(unsent))))
        yield GaugeHistogramMetricFamily(
            "babel_listener_unsent_bytes",
            "Listeners by the bytes written to them that their client has not taken yet "
            "(their lag), now.",
            buckets=buckets,
            gsum_value=float(sum(unsent)),
        )


class _CircuitCollector:
    """The circuits of the engines behind a breaker, read at each scrape."""

    def __init__(self, circuits: Sequence[Circuit]) -> None:
        self._circuits = circuits

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "babel_engine_circuit_state",
            "1 for the state each engine's circuit breaker is in (closed, open, half_open).",
            labels=["engine", "state"],
        )
        rejected = CounterMetricFamily(
            "babel_engine_circuit_rejected",
            "Calls an open circuit failed at once, without reaching the engine.",
            labels=["engine"],
        )
        opened = CounterMetricFamily(
            "babel_engine_circuit_opened",
            "Times each engine's circuit opened after consecutive failures.",
            labels=["engine"],
        )
        for circuit in self._circuits:
            for each in type(circuit.state):
                state.add_metric([circuit.name, each.value], float(each is circuit.state))
            rejected.add_metric([circuit.name], circuit.rejected)
            opened.add_metric([circuit.name], circuit.times_opened)
        yield from (state, rejected, opened)


class _WithoutCreated:
    """``registry`` without its ``_created`` series: a scrape shows what moves."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            created = metric.name + "_created"
            metric.samples = [s for s in metric.samples if s.name != created]
            yield metric
