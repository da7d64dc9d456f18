"""The ``google`` speech engine: Speech-to-Text v2 streaming recognition (Chirp 3)
through the official google-cloud-speech client over gRPC.

Every stream of the process runs on one asyncio thread (``grpc_bridge``). A session's
audio is kept on a tape from the end of the last final on, so a stream can be replaced
at any moment: the new one replays what no final covers yet, and since Google reports
where each final ends (``result_end_offset``), no word is sent to be recognised twice
and none is skipped. Streams are replaced near Google's five-minute limit (at an
utterance boundary when one comes), when Google ends one (ABORTED, UNAVAILABLE,
DEADLINE_EXCEEDED, UNKNOWN ...), and after a gap in the audio. Replays are paced
(``google_replay_speed`` times real time), as Google wants audio at about real time.

The locales come from Google's Locations API at ``load`` (``google_locales``); a
request Google refuses (a locale, a setting) raises ``RequestRefused``, which circuit
breakers do not count: only an outage does.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import grpc
import trio
from google.api_core.exceptions import GoogleAPICallError

from babel_actors.config import Config
from babel_actors.engines.google_client import (
    StreamInterrupted,
    default_credentials,
    fetch_locations_metadata,
    make_client,
    map_error,
    mapped_errors,
    names_adaptation,
    streaming_request,
)
from babel_actors.engines.google_locales import FALLBACK_LOCALES, LocaleTable
from babel_actors.engines.google_tape import ReplayTape
from babel_actors.engines.grpc_bridge import AsyncioThread, BridgedStream
from babel_actors.errors import (
    ConfigError,
    EngineError,
    EngineUnavailable,
    RequestRefused,
    UnsupportedLanguage,
)
from babel_actors.events import AudioEvent, AudioFrame, SttResult
from babel_actors.glossary import Glossary

log = logging.getLogger(__name__)

MAX_AUDIO_BYTES = 15 * 1024
"""Largest ``audio`` in one request (an even number: whole samples)."""


class GoogleSpeechToText:
    """Speech-to-Text v2 ``StreamingRecognize``, shared by every session of the process.

    The client (and its channel) is made on first use, on the bridge's asyncio thread;
    credentials are Google's usual ones (Application Default Credentials), or none
    with ``google_insecure`` for a local emulator.
    """

    name = "google"

    def __init__(self, config: Config) -> None:
        """Raises ``ConfigError`` for a location that serves no Chirp model (``global``)."""
        if config.google_model.startswith("chirp") and config.google_location == "global":
            raise ConfigError(
                f"Google serves {config.google_model} in regional locations only (us, eu,"
                " asia-southeast1, ...), not global: set BABEL_GOOGLE_LOCATION"
            )
        self._config = config
        self.sample_rate = config.google_sample_rate
        self._bridge = AsyncioThread(
            name="babel-google-grpc", cancel_grace_s=config.google_cancel_grace_s
        )
        self._connecting = trio.Lock()
        self._client: Any = None
        self._project = config.google_project
        self.model = config.google_model
        self.no_adaptation: set[tuple[str, str]] = set()
        """(model, locale) pairs for which Google refused the glossary's phrase set."""
        self.locales = LocaleTable(FALLBACK_LOCALES, source="fallback")
        """The locales Google takes for the model here; the Locations API's after ``load``."""
        self._refused: dict[str, str] = {}
        """Why Google refused a language, by the tag sessions ask for."""
        location = config.google_location
        self.endpoint = config.google_endpoint or (
            "speech.googleapis.com" if location == "global" else f"{location}-speech.googleapis.com"
        )

    @property
    def bridge(self) -> AsyncioThread:
        """The asyncio thread every stream runs on."""
        return self._bridge

    def languages(self) -> frozenset[str]:
        return self.locales.languages()

    async def load(self) -> None:
        """Ask the Locations API which locales the model takes here, once, at start-up.

        Error handling: any failure (no credentials, no answer within
        ``google_locations_timeout_s``, a refusal) is logged and the fallback table
        kept; the first stream then reports what is wrong.
        """
        name = f"projects/{self._project or '-'}/locations/{self._config.google_location}"
        try:
            client = await self._connected()
            name = f"projects/{self._project}/locations/{self._config.google_location}"
            with mapped_errors():
                metadata = await self._bridge.run(
                    fetch_locations_metadata, client, name, self._config.google_locations_timeout_s
                )
        except EngineError as exc:
            log.warning("google: cannot list the locales of %s (%s); using the fallback", name, exc)
            return
        table = LocaleTable.from_metadata(metadata, self.model)
        if not table.locales:
            log.warning("google: %s lists no locale for %s; using the fallback", name, self.model)
            return
        self.locales = table
        log.info("google: %s takes %d locales in %s", self.model, len(table.locales), name)

    def recognizer(self) -> str:
        return f"projects/{self._project}/locations/{self._config.google_location}/recognizers/_"

    async def aclose(self) -> None:
        """Close the channel and stop the bridge thread; a later stream starts afresh."""
        client, self._client = self._client, None
        if client is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(EngineError):
                await self._bridge.run(client.transport.close)
        await self._bridge.aclose()

    async def transcribe(
        self,
        audio: trio.MemoryReceiveChannel[AudioEvent],
        results: trio.MemorySendChannel[SttResult],
        *,
        language: str,
        glossary: Glossary | None = None,
    ) -> None:
        """Recognise one session stream: read ``audio`` until it closes, write ``results``.

        The glossary's phrases bias recognition (an inline phrase set). An
        ``EndOfSpeech`` half-closes the stream so Google finalises what it holds.

        Backpressure: audio is taped as it comes, whatever Google's pace; the tape holds
        at most ``google_max_replay_s`` unrecognised, and drops the oldest beyond.
        Finals block on a full ``results``; partials are dropped then (the next one
        replaces them).
        Cancellation: ends the gRPC call at once and waits, shielded, at most
        ``google_cancel_grace_s`` for its task on the bridge thread to end.
        Error handling: a stream Google ends (ABORTED, UNAVAILABLE, UNKNOWN, ...) is
        replaced, tape kept, at once and then with backoff that only a stream that
        settled audio resets; after ``google_outage_s`` of failures ``EngineError`` is
        raised (the STT actor reports it and calls again). A request Google refuses
        raises ``RequestRefused`` at once (a refused locale is struck from
        ``languages()``, and later calls for it raise without asking Google); a phrase
        set it refuses is dropped for that (model, locale) and the stream reopened.
        Missing credentials raise ``EngineUnavailable``; never a grpc or google exception.
        """
        locale = self._locale(language)
        client = await self._connected()
        config = self._config
        tape = ReplayTape(round(config.google_max_replay_s * self.sample_rate))
        recognition = _Recognition(
            self, client, tape, results, language, locale, glossary or Glossary()
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(recognition.read_audio, audio)
                await recognition.run()
        except ExceptionGroup as group:
            if len(group.exceptions) == 1:
                error = group.exceptions[0]
                raise error from error.__cause__
            raise

    def _locale(self, language: str) -> str:
        locale = self.locales.resolve(language)
        if locale is not None:
            return locale
        refused = self._refused.get(language)
        if refused is not None:
            raise RequestRefused(refused)
        raise UnsupportedLanguage(self.name, language, self.languages())

    def refuse_locale(self, language: str, locale: str, why: str) -> RequestRefused:
        """Strike ``locale`` from the table after Google refused it; the error to raise."""
        self.locales = self.locales.without(locale)
        message = (
            f"Google Speech-to-Text does not take {locale} ({language!r}) with"
            f" {self.model} in {self._config.google_location}: {why}"
        )
        self._refused[language] = message
        log.warning("google: %s", message)
        return RequestRefused(message)

    async def _connected(self) -> Any:
        async with self._connecting:
            if self._client is None:
                credentials = None
                if not self._config.google_insecure:
                    credentials, project = await trio.to_thread.run_sync(default_credentials)
                    self._project = self._project or project or ""
                    if (
                        self._project
                        and hasattr(credentials, "with_quota_project")
                        and not getattr(credentials, "quota_project_id", None)
                    ):
                        # User credentials (gcloud auth application-default login) are
                        # refused without a project to bill the quota to.
                        credentials = credentials.with_quota_project(self._project)
                if not self._project:
                    raise EngineUnavailable(
                        "Google Speech-to-Text needs a project: set GOOGLE_CLOUD_PROJECT"
                    )
                self._client = await self._bridge.run(
                    make_client, self.endpoint, self._config.google_insecure, credentials
                )
            return self._client

    def streaming_config(self, locale: str, glossary: Glossary) -> Any:
        """The first request of a stream."""
        return streaming_request(
            self._config,
            recognizer=self.recognizer(),
            locale=locale,
            glossary=glossary,
            adaptation=(self.model, locale) not in self.no_adaptation,
        )


class _Recognition:
    """One session stream: the tape, and the gRPC streams that recognise it in turn."""

    def __init__(
        self,
        engine: GoogleSpeechToText,
        client: Any,
        tape: ReplayTape,
        results: trio.MemorySendChannel[SttResult],
        language: str,
        locale: str,
        glossary: Glossary,
    ) -> None:
        self._engine = engine
        self._language = language
        self._config = engine._config
        self._rate = engine.sample_rate
        self._client = client
        self._tape = tape
        self._results = results
        self._locale = locale
        self._glossary = glossary
        self._changed = trio.Event()
        self._overflowing = False
        """Whether the tape is past ``google_max_replay_s`` without a final (warned once)."""

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def read_audio(self, audio: trio.MemoryReceiveChannel[AudioEvent]) -> None:
        async for event in audio:
            if isinstance(event, AudioFrame):
                if event.sample_rate != self._rate:
                    raise EngineError(
                        f"google wants {self._rate} Hz audio, got {event.sample_rate}"
                    )
                covered = self._tape.covered
                self._tape.append(event.pcm)
                self._note_overflow(self._tape.covered > covered)
            else:
                self._tape.cut()
            self._notify()
        self._tape.closed = True
        self._notify()

    def _note_overflow(self, overflowing: bool) -> None:
        # The audio was sent, most likely; it only can no longer be replayed. Once per
        # stretch without a final, not once per frame.
        if overflowing and not self._overflowing:
            log.warning(
                "google: no final for over %g s; older audio can no longer be replayed",
                self._config.google_max_replay_s,
            )
        self._overflowing = overflowing

    async def run(self) -> None:
        """Open streams while there is audio to recognise, until the tape closes."""
        config = self._config
        failures = 0
        failing_since: float | None = None
        while True:
            while not self._tape.pending:
                if self._tape.closed:
                    return
                await self._changed.wait()
            stream = _Stream(self)
            try:
                await stream.run()
                failures, failing_since = 0, None
            except StreamInterrupted as exc:
                if self._tape.covered > stream.origin:
                    # It settled audio: a replay now is new work, not the same again.
                    failures, failing_since = 0, None
                now = trio.current_time()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= config.google_outage_s:
                    raise EngineError(
                        f"Google Speech-to-Text failing for {now - failing_since:.0f} s: {exc}"
                    ) from exc
                delay = (
                    0.0 if failures == 0 else config.google_retry_initial_s * 2 ** (failures - 1)
                )
                failures += 1
                log.warning("google: stream ended (%s); new stream in %.2f s", exc, delay)
                await trio.sleep(min(delay, config.google_retry_max_s))


class _Stream:
    """One gRPC stream over a stretch of the tape."""

    def __init__(self, recognition: _Recognition) -> None:
        self._r = recognition
        self.origin = recognition._tape.covered
        """Tape position of the stream's first sample."""
        self.sent = self.origin
        self.answered = False
        """Whether Google sent anything on this stream."""
        self._half_closed = False
        self._seam = False
        self._opened_at = trio.current_time()
        self._limit = self.origin + round(recognition._config.google_rollover_s * recognition._rate)
        """No stream is sent audio beyond this position."""
        self._last_partial = ""

    def _age(self) -> float:
        audio_s = (self.sent - self.origin) / self._r._rate
        return max(trio.current_time() - self._opened_at, audio_s)

    async def run(self) -> None:
        r = self._r
        engine = r._engine
        first = engine.streaming_config(r._locale, r._glossary)
        try:
            await self._exchange(first)
        except RequestRefused as exc:
            if self.answered:
                raise
            if "adaptation" in first.streaming_config.config and names_adaptation(str(exc)):
                # Not every model takes phrase sets: recognise without rather than not at all.
                log.warning(
                    "google: %s refused the phrase set for %s; going on without",
                    engine.model,
                    r._locale,
                )
                engine.no_adaptation.add((engine.model, r._locale))
                raise StreamInterrupted(str(exc)) from exc
            if r._locale in str(exc) or "language" in str(exc).lower():
                raise engine.refuse_locale(r._language, r._locale, str(exc)) from exc
            raise

    async def _exchange(self, first: Any) -> None:
        engine = self._r._engine
        try:
            with mapped_errors():
                async with engine.bridge.open_stream(self._r._client.streaming_recognize) as call:
                    await call.send(first)
                    async with trio.open_nursery() as nursery:
                        done = trio.Event()
                        nursery.start_soon(self._read, call, done)
                        await self._write(call, done)
                        nursery.cancel_scope.cancel()
        except ExceptionGroup as group:
            if len(group.exceptions) == 1:
                error = group.exceptions[0]
                raise error from error.__cause__
            raise

    async def _write(self, call: BridgedStream[Any, Any], done: trio.Event) -> None:
        from google.cloud.speech_v2.types import cloud_speech as speech

        r, tape, config = self._r, self._r._tape, self._r._config
        request_samples = min(
            MAX_AUDIO_BYTES // 2, max(1, round(config.google_request_s * r._rate))
        )
        while not self._seam:
            if self.sent < tape.base:
                raise StreamInterrupted("the tape dropped audio this stream had not sent yet")
            if tape.cut_reached(self.sent):
                break
            stop = tape.next_stop(self.sent)
            full = stop >= self._limit
            if full:
                # Audio faster than real time (a replay): end this stream in a pause.
                window = round(config.google_seam_window_s * r._rate)
                stop = tape.quiet_point(self._limit - window, self._limit, r._rate // 100)
                stop = max(stop, self.sent)
            while self.sent < stop and not done.is_set():
                await self._pace(min(stop - self.sent, request_samples))
                if self.sent < tape.base:
                    raise StreamInterrupted("the tape dropped audio this stream had not sent yet")
                chunk = tape.read(self.sent, stop, 2 * request_samples)
                await call.send(speech.StreamingRecognizeRequest(audio=chunk))
                self.sent += len(chunk) // 2
            if (
                full
                or tape.cut_reached(self.sent)
                or (tape.closed and self.sent >= tape.end)
                or self._age() >= config.google_rollover_s
                or done.is_set()
            ):
                break
            if tape.next_stop(self.sent) > self.sent:
                continue  # more audio came while this stream was paced
            deadline = min(
                self._opened_at + config.google_rollover_s,
                trio.current_time() + config.google_idle_s,
            )
            with trio.move_on_at(deadline) as timer:
                await r._changed.wait()
            if timer.cancelled_caught:
                break
        if self._seam:
            return
        if done.is_set():
            raise StreamInterrupted("Google ended the stream before it was half-closed")
        self._half_closed = True
        await call.done_writing()
        with trio.move_on_after(config.google_drain_timeout_s):
            await done.wait()
        if not done.is_set():
            raise StreamInterrupted(
                f"no end of stream {config.google_drain_timeout_s} s after half-close"
            )
        # Google has answered for every sample it got: what no final covers holds no words.
        tape.cover(self.sent)
        r._notify()

    async def _pace(self, samples: int) -> None:
        """Wait until ``samples`` more keep the stream within ``google_replay_speed``
        times real time (after ``google_pace_burst_s`` sent at once): live audio never
        waits here, a replay does."""
        config = self._r._config
        speed = config.google_replay_speed
        if speed <= 0:
            return
        ahead_s = (self.sent + samples - self.origin) / self._r._rate - config.google_pace_burst_s
        due = self._opened_at + max(0.0, ahead_s) / speed
        if due > trio.current_time():
            await trio.sleep_until(due)

    async def _read(self, call: BridgedStream[Any, Any], done: trio.Event) -> None:
        r, config = self._r, self._r._config
        while True:
            try:
                response = await call.receive()
            except trio.EndOfChannel:
                done.set()
                r._notify()
                return
            except (GoogleAPICallError, grpc.RpcError) as exc:
                raise map_error(exc) from exc
            self.answered = True
            partial: list[str] = []
            for result in response.results:
                if not result.alternatives:
                    continue
                text = result.alternatives[0].transcript
                if not result.is_final:
                    partial.append(text)
                    continue
                end = self.origin + round(result.result_end_offset.total_seconds() * r._rate)
                r._tape.cover(min(end, self.sent))
                self._last_partial = ""
                if text.strip():
                    await r._results.send(self._result(text, True, end))
                age = max(trio.current_time() - self._opened_at, (end - self.origin) / r._rate)
                if not self._half_closed and age >= (
                    config.google_rollover_s - config.google_seam_window_s
                ):
                    # An utterance just ended: the best moment for a new stream.
                    self._seam = True
                    r._notify()
                    return
            text = "".join(partial).strip()
            if text and text != self._last_partial:
                self._last_partial = text
                end = self.origin + round(
                    response.results[-1].result_end_offset.total_seconds() * r._rate
                )
                with contextlib.suppress(trio.WouldBlock):
                    r._results.send_nowait(self._result(text, False, end))

    def _result(self, text: str, is_final: bool, end: int) -> SttResult:
        return SttResult(
            text=" ".join(text.split()),
            is_final=is_final,
            audio_end_s=end / self._r._rate,
            produced_at=trio.current_time(),
        )
