"""A local Speech-to-Text v2 server for tests and the bench: the real gRPC wire
protocol (``google.cloud.speech.v2.Speech/StreamingRecognize``, the package's own
message types) and a recogniser that needs no model.

Its "speech" is PCM in which each word is a run of one sample value (the word's
number in a ``WordCodec``) and silence is zero: ``codec.speak("hello world")``. It
answers like Google: interim results as words complete (split into a stable and an
unstable part), a final with ``result_end_offset`` after a pause, the rest at
half-close, voice-activity events, ABORTED after the stream's maximum duration. A
``StreamPlan`` makes a stream fail, hang or echo each request (for the bench).

It is as strict as Google where Google is strict: the location, model and locale must
be ones it serves (INVALID_ARGUMENT otherwise; the Locations API's ``GetLocation``
lists them), a model may refuse phrase sets, and audio sent much faster than real
time ends the stream with OUT_OF_RANGE. Chirp 3's sparser interim results and longer
endpointing are options (``interim_every_words``, ``endpoint_s``).

Run it alone with ``python -m babel_actors.testing.google [--port N] [--echo]``;
``--words FILE`` gives it a codec's vocabulary (so another process can speak to it) and
``--results FILE`` makes it append a JSON line per result as it yields it, with
``time.monotonic()`` (one clock for every process on a Linux machine): the bench times
each final from there.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import grpc
import numpy as np
import trio
from google.cloud.location import locations_pb2
from google.cloud.speech_v2.types import cloud_speech, locations_metadata
from google.protobuf import any_pb2

from babel_actors.engines.google_locales import FALLBACK_LOCALES
from babel_actors.engines.grpc_bridge import AsyncioThread

SERVICE = "google.cloud.speech.v2.Speech"
LOCATIONS_SERVICE = "google.cloud.location.Locations"
MODELS = frozenset({"chirp_3", "chirp_2", "long", "short", "telephony"})
"""Models the emulator serves by default."""
LOCATIONS = frozenset(
    {"us", "eu", "asia-northeast1", "asia-south1", "asia-southeast1", "europe-west2",
     "europe-west3", "northamerica-northeast1", "global"}
)  # fmt: skip
"""Locations the emulator serves by default; Chirp models are not served in ``global``."""
TOO_FAST_MESSAGE = (
    "Audio data is being streamed too fast. Please stream audio data approximately at real time."
)
MAX_AUDIO_BYTES = 15 * 1024
"""Largest ``audio`` of one request the emulator accepts."""
MAX_DURATION_MESSAGE = "Max duration of 5 minutes reached for stream."
_RECOGNIZER = re.compile(r"^projects/[^/]+/locations/([^/]+)/recognizers/[^/]+$")
_SpeechEvent = cloud_speech.StreamingRecognizeResponse.SpeechEventType


class WordCodec:
    """Words as sample values: word number ``n`` is a run of samples equal to ``n``.

    Two codecs agree when they were given the same words in the same order:
    ``WordCodec(other.words)`` decodes what ``other`` speaks.
    """

    def __init__(self, words: Iterable[str] = ()) -> None:
        self._ids: dict[str, int] = {}
        self._words: list[str] = []
        for word in words:
            self.word_id(word)

    @property
    def words(self) -> tuple[str, ...]:
        """Every word known so far, in the order of their numbers."""
        return tuple(self._words)

    def word_id(self, word: str) -> int:
        if word not in self._ids:
            if len(self._words) >= 32767:
                raise ValueError("a WordCodec holds at most 32767 words")
            self._words.append(word)
            self._ids[word] = len(self._words)
        return self._ids[word]

    def word(self, word_id: int) -> str:
        return self._words[word_id - 1]

    def speak(
        self,
        text: str,
        *,
        rate: int = 16000,
        word_s: float = 0.12,
        gap_s: float = 0.04,
        pause_s: float = 0.4,
    ) -> bytes:
        """``text`` as word-coded PCM: each word ``word_s`` long, ``gap_s`` of silence
        between words, ``pause_s`` after the last (long enough to end the utterance)."""
        parts = []
        gap = np.zeros(round(gap_s * rate), dtype="<i2")
        for index, word in enumerate(text.split()):
            if index:
                parts.append(gap)
            parts.append(np.full(round(word_s * rate), self.word_id(word), dtype="<i2"))
        parts.append(np.zeros(round(pause_s * rate), dtype="<i2"))
        return b"".join(part.tobytes() for part in parts)


@attrs.frozen
class _Heard:
    """One thing the recogniser has to say."""

    transcript: str
    is_final: bool
    end_s: float
    """Stream-relative end of the audio the result covers."""
    event: int = 0
    """A ``SpeechEventType`` instead of a result, when non-zero."""


class _Recognizer:
    """Word-coded PCM in, Google-style results out. Sans-IO."""

    def __init__(
        self, codec: WordCodec, rate: int, endpoint_s: float, interim_every_words: int = 1
    ) -> None:
        self._codec = codec
        self._interim_every = max(1, interim_every_words)
        self._rate = rate
        self._endpoint = round(endpoint_s * rate)
        self._position = 0
        self._run_value = 0
        self._words: list[str] = []
        self._last_word_end = 0

    def feed(self, pcm: bytes) -> list[_Heard]:
        samples = np.frombuffer(pcm, dtype="<i2")
        heard: list[_Heard] = []
        if not len(samples):
            return heard
        starts = np.concatenate(([0], np.flatnonzero(np.diff(samples)) + 1))
        for start in starts:
            value = int(samples[start])
            if value != self._run_value:
                at = self._position + int(start)
                self._end_run(at, heard)
                if value and self._words and at - self._last_word_end >= self._endpoint:
                    self._final(heard)
                self._run_value = value
        self._position += len(samples)
        if (
            self._run_value == 0
            and self._words
            and self._position - self._last_word_end >= self._endpoint
        ):
            self._final(heard)
        return heard

    def finish(self) -> list[_Heard]:
        heard: list[_Heard] = []
        self._end_run(self._position, heard)
        self._run_value = 0
        if self._words:
            self._final(heard)
        return heard

    def _end_run(self, at: int, heard: list[_Heard]) -> None:
        if self._run_value <= 0:
            return
        if not self._words:
            heard.append(_Heard("", False, at / self._rate, _SpeechEvent.SPEECH_ACTIVITY_BEGIN))
        self._words.append(self._codec.word(self._run_value))
        self._last_word_end = at
        if len(self._words) % self._interim_every == 0:
            heard.append(_Heard(" ".join(self._words), False, at / self._rate))

    def _final(self, heard: list[_Heard]) -> None:
        end_s = self._last_word_end / self._rate
        heard.append(_Heard(" ".join(self._words), True, end_s))
        heard.append(_Heard("", False, end_s, _SpeechEvent.SPEECH_ACTIVITY_END))
        self._words = []


@attrs.define
class StreamPlan:
    """How the emulator treats one stream."""

    fail_after_s: float | None = None
    """End the stream with ``fail_code`` once this much audio has arrived (0: at once)."""
    fail_code: grpc.StatusCode = grpc.StatusCode.ABORTED
    fail_message: str = "Stream aborted by the emulator."
    hang: bool = False
    """Accept the call, then neither read nor answer."""
    echo: bool = False
    """Answer every audio request at once with an interim result: the request's number."""


@attrs.define
class StreamRecord:
    """What one stream sent and how it ended."""

    index: int
    config: cloud_speech.StreamingRecognizeRequest | None = None
    """The first request: recognizer and streaming_config."""
    audio: bytearray = attrs.field(factory=bytearray)
    request_sizes: list[int] = attrs.field(factory=list)
    """Bytes of ``audio`` in each audio request."""
    request_times: list[float] = attrs.field(factory=list)
    """When each audio request arrived (the emulator's ``clock``)."""
    opened_at: float = 0.0
    """When the first request arrived (the emulator's ``clock``)."""
    finals: list[str] = attrs.field(factory=list)
    outcome: str = "open"
    """``open``, ``completed`` (client half-closed), ``cancelled`` (by the client), or the
    status code name the emulator ended it with."""


class SpeechEmulator:
    """The servicer and its records; serve it with ``running_speech_emulator``."""

    def __init__(
        self,
        codec: WordCodec | None = None,
        *,
        max_stream_s: float = 300.0,
        endpoint_s: float = 0.3,
        locales: Iterable[str] = FALLBACK_LOCALES,
        models: Iterable[str] = MODELS,
        locations: Iterable[str] = LOCATIONS,
        adaptation_models: Iterable[str] | None = None,
        max_speed: float = 3.0,
        speed_allowance_s: float = 5.0,
        interim_every_words: int = 1,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.codec = codec or WordCodec()
        self.max_stream_s = max_stream_s
        """Audio after which a stream ends with ABORTED, like Google's five minutes."""
        self.endpoint_s = endpoint_s
        """Silence after a word that ends an utterance with a final (Chirp 3 waits longer
        than the default)."""
        self.locales = frozenset(locales)
        """Locales every served model takes, in every location."""
        self.models = frozenset(models)
        self.locations = frozenset(locations)
        self.adaptation_models = (
            self.models if adaptation_models is None else frozenset(adaptation_models)
        )
        """Models that take phrase sets; the others refuse a request with one."""
        self.max_speed = max_speed
        """A stream whose audio runs ahead of ``max_speed`` times real time by more than
        ``speed_allowance_s`` ends with OUT_OF_RANGE, as Google's did; 0: no check."""
        self.speed_allowance_s = speed_allowance_s
        self.interim_every_words = interim_every_words
        """An interim result every this many words (1: each word; Chirp 3 is sparser)."""
        self.clock = clock
        """The emulator's clock for pacing and records; None is the serving loop's."""
        self.plans: dict[int, StreamPlan] = {}
        """Plans by stream index (0 is the first stream the emulator sees)."""
        self.default_plan = StreamPlan()
        """The plan of a stream with none of its own."""
        self.streams: list[StreamRecord] = []
        self.port = 0
        self.on_change: Callable[[], None] = lambda: None
        """Called on the server's loop whenever a record changes."""
        self.on_result: Callable[[int, str, bool], None] = lambda stream, text, final: None
        """Called on the server's loop with (stream index, transcript, is_final) just
        before each recognition result (not a voice-activity event) is yielded."""
        self._server: grpc.aio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """On an asyncio loop: listen and serve; returns the port."""
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamingRecognize": grpc.stream_stream_rpc_method_handler(
                    self._streaming_recognize,
                    request_deserializer=cloud_speech.StreamingRecognizeRequest.deserialize,
                    response_serializer=cloud_speech.StreamingRecognizeResponse.serialize,
                )
            },
        )
        locations_handler = grpc.method_handlers_generic_handler(
            LOCATIONS_SERVICE,
            {
                "GetLocation": grpc.unary_unary_rpc_method_handler(
                    self._get_location,
                    request_deserializer=locations_pb2.GetLocationRequest.FromString,
                    response_serializer=locations_pb2.Location.SerializeToString,
                )
            },
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler, locations_handler))
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        await self._server.start()
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    def now(self) -> float:
        """The emulator's clock."""
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    async def _get_location(
        self, request: locations_pb2.GetLocationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> locations_pb2.Location:
        location_id = request.name.rsplit("/", 1)[-1]
        if location_id not in self.locations:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Location {request.name} not found.")
        served = [m for m in self.models if _serves(m, location_id)]
        features = locations_metadata.ModelFeatures(
            model_feature=[
                locations_metadata.ModelFeature(feature="recognizer", release_state="GA")
            ]
        )
        metadata = locations_metadata.LocationsMetadata(
            languages=locations_metadata.LanguageMetadata(
                models={
                    locale: locations_metadata.ModelMetadata(
                        model_features={model: features for model in served}
                    )
                    for locale in self.locales
                }
            )
        )
        packed = any_pb2.Any(
            type_url="type.googleapis.com/google.cloud.speech.v2.LocationsMetadata",
            value=locations_metadata.LocationsMetadata.serialize(metadata),
        )
        return locations_pb2.Location(name=request.name, location_id=location_id, metadata=packed)

    def _refusal(self, first: cloud_speech.StreamingRecognizeRequest) -> str:
        """Why Google would refuse this first request, or ``""``."""
        match = _RECOGNIZER.match(first.recognizer)
        if not match or "streaming_config" not in first or first.audio:
            return "the first request needs recognizer and streaming_config, and no audio"
        location = match[1]
        config = first.streaming_config.config
        model = config.model
        if (
            location not in self.locations
            or model not in self.models
            or not _serves(model, location)
        ):
            return f'The model "{model}" does not exist in the location named "{location}".'
        for locale in config.language_codes:
            if locale not in self.locales:
                return (
                    f'The language "{locale}" is not supported by the model "{model}" in the'
                    f' location named "{location}".'
                )
        if "adaptation" in config and model not in self.adaptation_models:
            return f'Recognizer does not support feature: speech_adaptation (model "{model}").'
        return ""

    async def _streaming_recognize(
        self,
        requests: AsyncIterator[cloud_speech.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[cloud_speech.StreamingRecognizeResponse]:
        record = StreamRecord(len(self.streams))
        plan = self.plans.get(record.index, self.default_plan)
        self.streams.append(record)
        self.on_change()
        try:
            async for response in self._recognize(requests, context, record, plan):
                yield response
            if record.outcome == "open":
                record.outcome = "completed"
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        finally:
            self.on_change()

    async def _recognize(
        self,
        requests: AsyncIterator[cloud_speech.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext[Any, Any],
        record: StreamRecord,
        plan: StreamPlan,
    ) -> AsyncIterator[cloud_speech.StreamingRecognizeResponse]:
        def fail(code: grpc.StatusCode, message: str) -> None:
            # A status set before returning, rather than abort(): gRPC core then sends
            # every response already written first, as Google does.
            record.outcome = code.name
            context.set_code(code)
            context.set_details(message)

        first = await anext(aiter(requests), None)
        if first is None:
            return
        record.opened_at = self.now()
        refusal = self._refusal(first)
        if refusal:
            record.config = first
            fail(grpc.StatusCode.INVALID_ARGUMENT, refusal)
            return
        record.config = first
        self.on_change()
        if plan.hang:
            await asyncio.Event().wait()
        if plan.fail_after_s == 0:
            fail(plan.fail_code, plan.fail_message)
            return
        config = first.streaming_config.config
        rate = config.explicit_decoding_config.sample_rate_hertz or 16000
        recognizer = _Recognizer(self.codec, rate, self.endpoint_s, self.interim_every_words)
        locale = config.language_codes[0] if config.language_codes else "en-US"
        async for request in requests:
            if request.recognizer or "streaming_config" in request:
                fail(grpc.StatusCode.INVALID_ARGUMENT, "only the first request has config")
                return
            if len(request.audio) > MAX_AUDIO_BYTES:
                fail(grpc.StatusCode.INVALID_ARGUMENT, "audio request over 15 KB")
                return
            record.audio += request.audio
            record.request_sizes.append(len(request.audio))
            record.request_times.append(self.now())
            ahead_s = len(record.audio) / 2 / rate - (
                (record.request_times[-1] - record.opened_at) * self.max_speed
            )
            if self.max_speed > 0 and ahead_s > self.speed_allowance_s:
                fail(grpc.StatusCode.OUT_OF_RANGE, TOO_FAST_MESSAGE)
                return
            if plan.echo:
                yield _response(_Heard(str(len(record.request_sizes)), False, 0.0), False)
                continue
            for heard in recognizer.feed(request.audio):
                yield self._answer(record, heard, locale)
            self.on_change()
            heard_s = len(record.audio) / 2 / rate
            if plan.fail_after_s is not None and heard_s >= plan.fail_after_s:
                fail(plan.fail_code, plan.fail_message)
                return
            if heard_s >= self.max_stream_s:
                fail(grpc.StatusCode.ABORTED, MAX_DURATION_MESSAGE)
                return
        for heard in recognizer.finish():
            yield self._answer(record, heard, locale)

    def _answer(
        self, record: StreamRecord, heard: _Heard, locale: str
    ) -> cloud_speech.StreamingRecognizeResponse:
        """``heard`` as the response about to be yielded, recorded."""
        response = _response(heard, True, locale)
        if heard.is_final:
            record.finals.append(heard.transcript)
        if not heard.event:
            self.on_result(record.index, heard.transcript, heard.is_final)
        return response


def _serves(model: str, location: str) -> bool:
    return not (model.startswith("chirp") and location == "global")


def _response(
    heard: _Heard, split: bool, locale: str = "en-US"
) -> cloud_speech.StreamingRecognizeResponse:
    offset = datetime.timedelta(seconds=heard.end_s)
    if heard.event:
        return cloud_speech.StreamingRecognizeResponse(
            speech_event_type=heard.event, speech_event_offset=offset
        )
    words = heard.transcript.split(" ")
    if heard.is_final or not split or len(words) < 2:
        parts = [(heard.transcript, 0.0 if heard.is_final else 0.01)]
    else:
        # Like Google: a stable prefix and an unstable rest, which starts with a space.
        parts = [(" ".join(words[:-1]), 0.9), (" " + words[-1], 0.01)]
    return cloud_speech.StreamingRecognizeResponse(
        results=[
            cloud_speech.StreamingRecognitionResult(
                alternatives=[cloud_speech.SpeechRecognitionAlternative(transcript=text)],
                is_final=heard.is_final,
                stability=stability,
                result_end_offset=offset,
                language_code=locale.lower(),
            )
            for text, stability in parts
        ]
    )


class RunningEmulator:
    """A ``SpeechEmulator`` serving on 127.0.0.1, seen from trio."""

    def __init__(self, emulator: SpeechEmulator, thread: AsyncioThread) -> None:
        self.emulator = emulator
        self.thread = thread
        self._changed = trio.Event()

    @property
    def address(self) -> str:
        """``host:port``, for ``BABEL_GOOGLE_ENDPOINT``."""
        return f"127.0.0.1:{self.emulator.port}"

    @property
    def streams(self) -> list[StreamRecord]:
        return self.emulator.streams

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked whenever a record changes."""
        while not predicate():
            await self._changed.wait()


@asynccontextmanager
async def running_speech_emulator(
    emulator: SpeechEmulator | None = None,
) -> AsyncIterator[RunningEmulator]:
    """Serve ``emulator`` (a fresh one by default) on a free port for the block."""
    emulator = emulator or SpeechEmulator()
    thread = AsyncioThread(name="speech-emulator")
    running = RunningEmulator(emulator, thread)
    token = trio.lowlevel.current_trio_token()

    def changed() -> None:
        try:
            token.run_sync_soon(running._notify)
        except trio.RunFinishedError:
            pass

    emulator.on_change = changed
    try:
        await thread.run(emulator.start)
        yield running
    finally:
        with trio.CancelScope(shield=True):
            await thread.run(emulator.stop)
            await thread.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description="A local Speech-to-Text v2 emulator.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--echo", action="store_true", help="answer every audio request")
    parser.add_argument(
        "--words", help="the word-coded speech's vocabulary: a file of words, one a line"
    )
    parser.add_argument(
        "--results",
        help="append a JSON line per result yielded to this file: stream, final, text, "
        "mono (time.monotonic() just before the yield)",
    )
    args = parser.parse_args()
    words: list[str] = []
    if args.words:
        with open(args.words, encoding="utf-8") as file:
            words = [line.rstrip("\n") for line in file if line.rstrip("\n")]

    async def serve() -> None:
        emulator = SpeechEmulator(WordCodec(words))
        emulator.default_plan = StreamPlan(echo=args.echo)
        if args.results:
            emulator.on_result = _result_log(args.results)
        port = await emulator.start(port=args.port)
        print(port, flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


def _result_log(path: str) -> Callable[[int, str, bool], None]:
    """An ``on_result`` that appends each result to ``path`` with one unbuffered
    ``O_APPEND`` write, so a terminated emulator has written every line it timed."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(stream: int, text: str, final: bool) -> None:
        at = time.monotonic()
        line = {"mono": at, "stream": stream, "final": final, "text": text}
        os.write(fd, (json.dumps(line) + "\n").encode())

    return log


if __name__ == "__main__":
    main()
