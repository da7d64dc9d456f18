"""The ``google`` speech engine: Speech-to-Text v2 streaming recognition (Chirp 3)
through the official google-cloud-speech client over gRPC.

Every stream of the process runs on one asyncio thread (``grpc_bridge``). A session's
audio is kept on a tape from the end of the last final on, so a stream can be replaced
at any moment: the new one replays what no final covers yet, and since Google reports
where each final ends (``result_end_offset``), no word is sent to be recognised twice
and none is skipped. Streams are replaced near Google's five-minute limit (at an
utterance boundary when one comes), when Google ends one (ABORTED, UNAVAILABLE,
DEADLINE_EXCEEDED, ...), and after a gap in the audio.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import trio
from google.api_core.exceptions import GoogleAPICallError

from babel_actors.config import Config
from babel_actors.engines.grpc_bridge import AsyncioThread, BridgedStream
from babel_actors.errors import EngineError, EngineUnavailable, UnsupportedLanguage
from babel_actors.events import AudioEvent, AudioFrame, SttResult
from babel_actors.glossary import MAX_PHRASE_CHARS, Glossary

log = logging.getLogger(__name__)

MAX_AUDIO_BYTES = 15 * 1024
"""Largest ``audio`` in one request (an even number: whole samples)."""
_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_MAX_PHRASES = 1000
"""Google's limit on phrases in one inline phrase set."""

_RETRIABLE = frozenset(
    {
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
"""Codes a new stream may cure: the five-minute limit, restarts, overload, audio
timeouts. Anything else (bad config, no permission) is raised at once."""
_UNAUTHORISED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})

GOOGLE_LANGUAGES = {
    "af": "af-ZA", "am": "am-ET", "ar": "ar-EG", "az": "az-AZ", "be": "be-BY",
    "bg": "bg-BG", "bn": "bn-IN", "bs": "bs-BA", "ca": "ca-ES", "cs": "cs-CZ",
    "cy": "cy-GB", "da": "da-DK", "de": "de-DE", "el": "el-GR", "en": "en-US",
    "es": "es-ES", "et": "et-EE", "eu": "eu-ES", "fa": "fa-IR", "fi": "fi-FI",
    "fil": "fil-PH", "fr": "fr-FR", "ga": "ga-IE", "gl": "gl-ES", "gu": "gu-IN",
    "he": "iw-IL", "hi": "hi-IN", "hr": "hr-HR", "hu": "hu-HU", "hy": "hy-AM",
    "id": "id-ID", "is": "is-IS", "it": "it-IT", "ja": "ja-JP", "ka": "ka-GE",
    "kk": "kk-KZ", "km": "km-KH", "kn": "kn-IN", "ko": "ko-KR", "lo": "lo-LA",
    "lt": "lt-LT", "lv": "lv-LV", "mk": "mk-MK", "ml": "ml-IN", "mn": "mn-MN",
    "mr": "mr-IN", "ms": "ms-MY", "my": "my-MM", "nb": "no-NO", "ne": "ne-NP",
    "nl": "nl-NL", "no": "no-NO", "pa": "pa-Guru-IN", "pl": "pl-PL", "pt": "pt-BR",
    "ro": "ro-RO", "ru": "ru-RU", "si": "si-LK", "sk": "sk-SK", "sl": "sl-SI",
    "sq": "sq-AL", "sr": "sr-RS", "sv": "sv-SE", "sw": "sw-KE", "ta": "ta-IN",
    "te": "te-IN", "th": "th-TH", "tl": "fil-PH", "tr": "tr-TR", "uk": "uk-UA",
    "ur": "ur-PK", "uz": "uz-UZ", "vi": "vi-VN", "zh": "cmn-Hans-CN", "zu": "zu-ZA",
}  # fmt: skip
"""A session's primary language tag to the locale Google recognises it under; a tag
with a region (``en-GB``, ``pt-PT``) is sent as it is."""


class StreamInterrupted(EngineError):
    """Google ended a stream in a way a new stream may fix."""


def map_error(error: GoogleAPICallError | grpc.RpcError) -> EngineError:
    """The project's error for a gRPC or google.api_core error."""
    if isinstance(error, GoogleAPICallError):
        code, detail = error.grpc_status_code, error.message
    else:
        code, detail = error.code(), error.details()  # type: ignore[attr-defined]
    name = code.name if code is not None else "UNKNOWN"
    text = f"Google Speech-to-Text: {name}: {detail}"
    if code in _RETRIABLE:
        return StreamInterrupted(text)
    if code in _UNAUTHORISED:
        return EngineUnavailable(text)
    return EngineError(text)


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """Nothing but the project's errors leaves this block."""
    try:
        yield
    except (GoogleAPICallError, grpc.RpcError) as exc:
        raise map_error(exc) from exc


class _Tape:
    """A session's audio from the end of the last final on. Sans-IO.

    Positions are absolute sample numbers since the session's stream began.
    """

    def __init__(self, max_samples: int) -> None:
        self._max_samples = max_samples
        self.base = 0
        """Position of ``_pcm[0]``."""
        self._pcm = bytearray()
        self.covered = 0
        """Audio before this is settled: covered by a final, or known to hold none."""
        self.cuts: deque[int] = deque()
        """Positions where the speaker asked for a final (``EndOfSpeech``)."""
        self.closed = False
        self.dropped = 0
        """Samples thrown away unrecognised because the tape was full."""

    @property
    def end(self) -> int:
        return self.base + len(self._pcm) // 2

    @property
    def pending(self) -> bool:
        return self.end > self.covered

    def append(self, pcm: bytes) -> None:
        self._pcm += pcm
        excess = self.end - self.base - self._max_samples
        if excess > 0:
            self.dropped += max(0, self.base + excess - self.covered)
            self.cover(self.base + excess)

    def cut(self) -> None:
        if self.pending and (not self.cuts or self.cuts[-1] != self.end):
            self.cuts.append(self.end)

    def next_stop(self, sent: int) -> int:
        """Where a stream that has sent up to ``sent`` must pause: the next cut or the end."""
        for cut in self.cuts:
            if cut > sent:
                return cut
        return self.end

    def cut_reached(self, sent: int) -> bool:
        return bool(self.cuts) and self.cuts[0] <= sent

    def cover(self, upto: int) -> None:
        upto = min(upto, self.end)
        if upto <= self.covered:
            return
        self.covered = upto
        del self._pcm[: 2 * (upto - self.base)]
        self.base = upto
        while self.cuts and self.cuts[0] <= upto:
            self.cuts.popleft()

    def quiet_point(self, start: int, stop: int, frame: int) -> int:
        """The middle of the longest quiet run of ``frame``-sample frames in
        ``[start, stop)``: where to end a stream with the least risk of cutting a word."""
        start = max(start, self.base)
        pcm = np.frombuffer(self.read(start, stop, 2 * (stop - start)), dtype="<i2")
        count = len(pcm) // frame
        if count < 2:
            return stop
        energy = np.square(pcm[: count * frame].astype(np.float32)).reshape(count, frame).mean(1)
        quiet = energy <= energy.min() * 4 + 1.0
        best_start, best_length, run_start = 0, 0, None
        for index, is_quiet in enumerate([*quiet.tolist(), False]):
            if is_quiet and run_start is None:
                run_start = index
            elif not is_quiet and run_start is not None:
                if index - run_start > best_length:
                    best_start, best_length = run_start, index - run_start
                run_start = None
        return start + (best_start + best_length // 2) * frame

    def read(self, start: int, stop: int, max_bytes: int) -> bytes:
        offset = 2 * (start - self.base)
        return bytes(self._pcm[offset : min(2 * (stop - self.base), offset + max_bytes)])


class GoogleSpeechToText:
    """Speech-to-Text v2 ``StreamingRecognize``, shared by every session of the process.

    The client (and its channel) is made on first use, on the bridge's asyncio thread;
    credentials are Google's usual ones (Application Default Credentials), or none
    with ``google_insecure`` for a local emulator.
    """

    name = "google"

    def __init__(self, config: Config) -> None:
        self._config = config
        self.sample_rate = config.google_sample_rate
        self._bridge = AsyncioThread(
            name="babel-google-grpc", cancel_grace_s=config.google_cancel_grace_s
        )
        self._connecting = trio.Lock()
        self._client: Any = None
        self._project = config.google_project
        self.model = config.google_model
        self.adaptation_accepted = True
        """False once Google refused the glossary's phrase set for this model."""
        location = config.google_location
        self.endpoint = config.google_endpoint or (
            "speech.googleapis.com" if location == "global" else f"{location}-speech.googleapis.com"
        )

    @property
    def bridge(self) -> AsyncioThread:
        """The asyncio thread every stream runs on."""
        return self._bridge

    def languages(self) -> frozenset[str]:
        return frozenset(GOOGLE_LANGUAGES) | frozenset(GOOGLE_LANGUAGES.values())

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
        Error handling: a stream Google ends (ABORTED, UNAVAILABLE, ...) is replaced at
        once, then with backoff; after ``google_outage_s`` of failures ``EngineError``
        is raised (the STT actor reports it and calls again). Bad settings raise
        ``EngineError`` and missing credentials ``EngineUnavailable`` at once; never a
        grpc or google exception.
        """
        locale = self._locale(language)
        client = await self._connected()
        config = self._config
        tape = _Tape(round(config.google_max_replay_s * self.sample_rate))
        recognition = _Recognition(self, client, tape, results, locale, glossary or Glossary())
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
        if "-" in language and language.split("-")[0] in GOOGLE_LANGUAGES:
            return language
        if language not in GOOGLE_LANGUAGES:
            raise UnsupportedLanguage(self.name, language, self.languages())
        return GOOGLE_LANGUAGES[language]

    async def _connected(self) -> Any:
        async with self._connecting:
            if self._client is None:
                credentials = None
                if not self._config.google_insecure:
                    credentials, project = await trio.to_thread.run_sync(_default_credentials)
                    self._project = self._project or project or ""
                if not self._project:
                    raise EngineUnavailable(
                        "Google Speech-to-Text needs a project: set GOOGLE_CLOUD_PROJECT"
                    )
                self._client = await self._bridge.run(
                    _make_client, self.endpoint, self._config.google_insecure, credentials
                )
            return self._client

    def streaming_config(self, locale: str, glossary: Glossary) -> Any:
        """The first request of a stream."""
        from google.cloud.speech_v2.types import cloud_speech as speech

        recognition = speech.RecognitionConfig(
            explicit_decoding_config=speech.ExplicitDecodingConfig(
                encoding=speech.ExplicitDecodingConfig.AudioEncoding.LINEAR16,
                sample_rate_hertz=self.sample_rate,
                audio_channel_count=1,
            ),
            language_codes=[locale],
            model=self._config.google_model,
            features=speech.RecognitionFeatures(enable_automatic_punctuation=True),
        )
        phrases = [p for p in glossary.phrases() if len(p) <= MAX_PHRASE_CHARS][:_MAX_PHRASES]
        boost = self._config.google_phrase_boost
        if phrases and boost > 0 and self.adaptation_accepted:
            phrase_set = speech.PhraseSet(
                phrases=[speech.PhraseSet.Phrase(value=p, boost=boost) for p in phrases]
            )
            recognition.adaptation = speech.SpeechAdaptation(
                phrase_sets=[
                    speech.SpeechAdaptation.AdaptationPhraseSet(inline_phrase_set=phrase_set)
                ]
            )
        return speech.StreamingRecognizeRequest(
            recognizer=self.recognizer(),
            streaming_config=speech.StreamingRecognitionConfig(
                config=recognition,
                streaming_features=speech.StreamingRecognitionFeatures(
                    interim_results=True, enable_voice_activity_events=True
                ),
            ),
        )


class _Recognition:
    """One session stream: the tape, and the gRPC streams that recognise it in turn."""

    def __init__(
        self,
        engine: GoogleSpeechToText,
        client: Any,
        tape: _Tape,
        results: trio.MemorySendChannel[SttResult],
        locale: str,
        glossary: Glossary,
    ) -> None:
        self._engine = engine
        self._config = engine._config
        self._rate = engine.sample_rate
        self._client = client
        self._tape = tape
        self._results = results
        self._locale = locale
        self._glossary = glossary
        self._changed = trio.Event()

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
                dropped = self._tape.dropped
                self._tape.append(event.pcm)
                if self._tape.dropped > dropped:
                    log.warning("google: tape full, unrecognised audio dropped")
            else:
                self._tape.cut()
            self._notify()
        self._tape.closed = True
        self._notify()

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
                if stream.answered:
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
        except EngineError as exc:
            refused = "INVALID_ARGUMENT" in str(exc) and not self.answered
            if refused and "adaptation" in first.streaming_config.config:
                # Not every model takes phrase sets: recognise without rather than not at all.
                log.warning("google: %s refused the phrase set; going on without", engine.model)
                engine.adaptation_accepted = False
                raise StreamInterrupted(str(exc)) from exc
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
            while self.sent < stop:
                chunk = tape.read(self.sent, stop, MAX_AUDIO_BYTES)
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


def _default_credentials() -> tuple[Any, str | None]:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return google.auth.default(scopes=_SCOPES)  # type: ignore[no-any-return]
    except DefaultCredentialsError as exc:
        raise EngineUnavailable(f"Google credentials: {exc}") from exc


async def _make_client(endpoint: str, insecure: bool, credentials: Any) -> Any:
    """On the bridge's loop: the async client, and its grpc.aio channel."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.speech_v2 import SpeechAsyncClient
    from google.cloud.speech_v2.services.speech.transports import SpeechGrpcAsyncIOTransport

    if insecure:
        channel = grpc.aio.insecure_channel(endpoint)
        return SpeechAsyncClient(
            transport=SpeechGrpcAsyncIOTransport(
                channel=channel,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            )
        )
    return SpeechAsyncClient(
        credentials=credentials, client_options=ClientOptions(api_endpoint=endpoint)
    )
