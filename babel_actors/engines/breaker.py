"""A circuit breaker, and wrappers that put one around an external engine.

When a provider is down, every call waits for its timeouts and retries before it
fails; a session then goes without captions or translations for that long, segment
after segment. The breaker counts consecutive failures and, past
``breaker_failures``, fails calls at once (*open*) for ``breaker_reset_s``; then one
trial call goes through (*half-open*): its success closes the circuit, its failure
opens it again. Listeners get what they would get on a failure (the source text,
flagged, or a 503 ``error``), only sooner, and the provider is spared the load.

What counts as a failure: an ``EngineError`` that says the provider is down or will
not serve us (unavailable, timed out, refused our credentials; ``TranslationFailed``
included) and a call cancelled once the deadline it was given has passed (the
translator actor's ``translate_timeout_s``). What does not: ``RequestRefused`` and
``UnsupportedLanguage`` (the provider answered; one session's bad locale or setting
must not lock every session out), the caller's own cancellation (a session ending, a
server shutting down) and any other exception (a bug, not an outage): such calls
leave no verdict.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Sequence

import attrs
import trio

from babel_actors.engines.base import (
    SpeechToText,
    Translator,
    optional_keywords,
    translation_route,
)
from babel_actors.errors import EngineError, RequestRefused, TranslationFailed
from babel_actors.events import AudioEvent, SttResult
from babel_actors.glossary import Glossary

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class BreakerState(enum.Enum):
    """Where a circuit is."""

    CLOSED = "closed"
    """Calls go through; consecutive failures are counted."""
    OPEN = "open"
    """Calls fail at once, without reaching the engine."""
    HALF_OPEN = "half_open"
    """One trial call goes through; the others fail at once."""


@attrs.frozen
class Permit:
    """Leave to make one call; hand it back with its verdict."""

    trial: bool
    """Whether the call is the half-open circuit's trial."""
    issued_at: float
    """When it was given (``clock`` time)."""


class CircuitBreaker:
    """The breaker's state machine. Sans-IO: it reads ``clock`` and never awaits.

    ``admit`` before a call; then exactly one of ``succeeded``, ``failed`` or
    ``abandoned`` with the permit. A success closes the circuit whatever its state
    (the engine answered); a failure while half-open opens it again, even from a call
    admitted before it opened. A trial with no verdict frees the trial slot; a trial
    still without one ``reset_s`` after it started makes way for another (a speech
    stream may stay silent, and so without a verdict, for long).
    """

    def __init__(
        self, name: str, *, failures: int, reset_s: float, clock: Clock = trio.current_time
    ) -> None:
        if failures < 1:
            raise ValueError(f"a breaker opens after at least one failure, not {failures}")
        self.name = name
        """The engine's name, for logs."""
        self.failures_to_open = failures
        self.reset_s = reset_s
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        """Failures since the last success."""
        self.total_failures = 0
        self.total_successes = 0
        self.rejected = 0
        """Calls failed at once because the circuit was open (or half-open and busy)."""
        self.times_opened = 0
        self.opened_at = 0.0
        """When the circuit last opened (``clock`` time)."""
        self._trial_since: float | None = None
        """When the half-open circuit's trial started; None while none runs."""

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a trial through (0 unless open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.reset_s - self._clock())

    def admit(self) -> Permit | None:
        """Leave for one call now, or None (counted in ``rejected``)."""
        now = self._clock()
        if self.state is BreakerState.OPEN and now >= self.opened_at + self.reset_s:
            self._move(BreakerState.HALF_OPEN, "letting one trial call through")
        if self.state is BreakerState.CLOSED:
            return Permit(trial=False, issued_at=now)
        if self.state is BreakerState.HALF_OPEN and (
            self._trial_since is None or now >= self._trial_since + self.reset_s
        ):
            self._trial_since = now
            return Permit(trial=True, issued_at=now)
        self.rejected += 1
        return None

    def succeeded(self, permit: Permit) -> None:
        self.total_successes += 1
        self.consecutive_failures = 0
        if self.state is not BreakerState.CLOSED:
            self._trial_since = None
            self._move(BreakerState.CLOSED, "the engine answered")

    def failed(self, permit: Permit) -> None:
        self.total_failures += 1
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self._open("the trial call failed")
        elif (
            self.state is BreakerState.CLOSED and self.consecutive_failures >= self.failures_to_open
        ):
            self._open(f"{self.consecutive_failures} consecutive failures")

    def abandoned(self, permit: Permit) -> None:
        """The call ended with no verdict (cancelled by its caller, or a bug)."""
        if permit.trial and self._trial_since == permit.issued_at:
            self._trial_since = None

    def _open(self, why: str) -> None:
        self.opened_at = self._clock()
        self.times_opened += 1
        self._trial_since = None
        self._move(BreakerState.OPEN, f"{why}; calls fail at once for {self.reset_s:g} s")

    def _move(self, state: BreakerState, why: str) -> None:
        level = logging.WARNING if state is BreakerState.OPEN else logging.INFO
        log.log(level, "engine %s: circuit %s: %s", self.name, state.value, why)
        self.state = state


class _Call:
    """One call under a breaker: its permit, and its verdict from how it ends."""

    def __init__(self, breaker: CircuitBreaker, permit: Permit) -> None:
        self.breaker = breaker
        self.permit = permit
        self.deadline = trio.current_effective_deadline()
        """The caller's deadline; -inf when the call starts cancelled, which then
        leaves no verdict: the engine was never given its chance."""
        self.settled = False

    def succeeded(self) -> None:
        if not self.settled:
            self.settled = True
            self.breaker.succeeded(self.permit)

    def ended(self, error: BaseException | None) -> None:
        """Settle the call by how it ended (``error`` None: it returned)."""
        if error is None:
            self.succeeded()
        elif _failure(error):
            # Even after an answer: a stream that fails later is a failure all the same.
            self.settled = True
            self.breaker.failed(self.permit)
        elif not self.settled:
            self.settled = True
            if _cancellation(error) and trio.current_time() >= self.deadline > -math.inf:
                self.breaker.failed(self.permit)
            else:
                self.breaker.abandoned(self.permit)


def _failure(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(_failure(e) for e in error.exceptions)
    return isinstance(error, EngineError) and not isinstance(error, RequestRefused)


def _cancellation(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(_cancellation(e) for e in error.exceptions)
    return isinstance(error, trio.Cancelled)


def _open_message(breaker: CircuitBreaker) -> str:
    if breaker.state is BreakerState.OPEN:
        when = f"next trial in {breaker.retry_in():.0f} s"
    else:
        when = "a trial call is under way"
    return f"{breaker.name} is failing: circuit {breaker.state.value}, {when}"


class BreakerTranslator:
    """``engine`` behind a circuit breaker; the same ``Translator`` to its callers.

    Backpressure: none of its own; a call admitted waits on ``engine`` as before.
    Cancellation: passed through; a call cancelled after its deadline counts as a
    failure, one cancelled by its caller before that counts as nothing.
    Error handling: while the circuit is open, ``translate`` raises
    ``TranslationFailed`` at once without calling ``engine`` (the translator actor
    then sends the source text, flagged, as on a timeout). Everything ``engine``
    raises passes through unchanged.
    """

    def __init__(
        self,
        engine: Translator,
        *,
        failures: int,
        reset_s: float,
        clock: Clock = trio.current_time,
    ) -> None:
        self.engine = engine
        self.name = engine.name
        self.breaker = CircuitBreaker(engine.name, failures=failures, reset_s=reset_s, clock=clock)
        """The circuit's state and counts, for ``/health`` and metrics."""

    def sources(self) -> frozenset[str]:
        return self.engine.sources()

    def targets(self, source: str) -> frozenset[str]:
        return self.engine.targets(source)

    def route(self, source: str, target: str) -> tuple[str, ...]:
        return translation_route(self.engine, source, target)

    async def translate(
        self,
        text: str,
        *,
        source: str,
        target: str,
        context: Sequence[str] = (),
        glossary: Glossary | None = None,
        partial: bool = False,
    ) -> str:
        permit = self.breaker.admit()
        if permit is None:
            await trio.lowlevel.checkpoint()
            raise TranslationFailed(_open_message(self.breaker))
        call = _Call(self.breaker, permit)
        extra = optional_keywords(glossary, partial=partial)
        try:
            translated = await self.engine.translate(
                text, source=source, target=target, context=context, **extra
            )
        except BaseException as exc:
            call.ended(exc)
            raise
        call.ended(None)
        return translated

    async def aclose(self) -> None:
        await self.engine.aclose()


class BreakerSpeechToText:
    """``engine`` behind a circuit breaker; the same ``SpeechToText`` to its callers.

    A stream succeeds when its first result arrives (the provider is answering) or
    when it ends cleanly; it fails when it raises ``EngineError``, even after results.

    Backpressure: results pass through a one-slot channel to ``results``, so the
    engine blocks (finals) or drops (partials) as it would on ``results`` itself,
    with one result more in hand.
    Cancellation: passed through; it ends the stream and counts as nothing.
    Error handling: while the circuit is open, ``transcribe`` raises ``EngineError``
    at once without opening a stream (the STT actor reports it and calls again after
    ``engine_retry_s``). The engine's own errors pass through unchanged, unwrapped
    from the stream's nursery.
    """

    def __init__(
        self,
        engine: SpeechToText,
        *,
        failures: int,
        reset_s: float,
        clock: Clock = trio.current_time,
    ) -> None:
        self.engine = engine
        self.name = engine.name
        self.sample_rate = engine.sample_rate
        self.breaker = CircuitBreaker(engine.name, failures=failures, reset_s=reset_s, clock=clock)
        """The circuit's state and counts, for ``/health`` and metrics."""

    def languages(self) -> frozenset[str]:
        return self.engine.languages()

    async def load(self) -> None:
        """The engine's start-up work (its list of languages), when it has any."""
        load = getattr(self.engine, "load", None)
        if load is not None:
            await load()

    async def transcribe(
        self,
        audio: trio.MemoryReceiveChannel[AudioEvent],
        results: trio.MemorySendChannel[SttResult],
        *,
        language: str,
        glossary: Glossary | None = None,
    ) -> None:
        permit = self.breaker.admit()
        if permit is None:
            await trio.lowlevel.checkpoint()
            raise EngineError(_open_message(self.breaker))
        call = _Call(self.breaker, permit)
        extra = optional_keywords(glossary)
        try:
            async with trio.open_nursery() as nursery:
                passed_send, passed_receive = trio.open_memory_channel[SttResult](1)
                nursery.start_soon(_pass_on, passed_receive, results, call)
                async with passed_send:
                    await self.engine.transcribe(audio, passed_send, language=language, **extra)
        except BaseExceptionGroup as group:
            call.ended(group)
            if len(group.exceptions) == 1 and not _cancellation(group):
                error = group.exceptions[0]
                raise error from error.__cause__
            raise
        except BaseException as exc:
            call.ended(exc)
            raise
        call.ended(None)

    async def aclose(self) -> None:
        await self.engine.aclose()


async def _pass_on(
    passed: trio.MemoryReceiveChannel[SttResult],
    results: trio.MemorySendChannel[SttResult],
    call: _Call,
) -> None:
    async with passed:
        async for result in passed:
            call.succeeded()
            await results.send(result)
