"""The ``google`` engine's edge with the google-cloud-speech SDK: the locales Google
takes, the client and its credentials, the first request of a stream, and the mapping
of the SDK's errors into the project's error tree.

No trio here: ``make_client`` runs on the bridge's asyncio thread and
``default_credentials`` in a worker thread; the rest are plain functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import grpc
from google.api_core.exceptions import GoogleAPICallError

from babel_actors.config import Config
from babel_actors.errors import EngineError, EngineUnavailable, RequestRefused
from babel_actors.glossary import MAX_PHRASE_CHARS, Glossary

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
        grpc.StatusCode.UNKNOWN,
    }
)
"""Codes a new stream may cure: the five-minute limit, restarts, overload, audio
timeouts, and UNKNOWN, which is how a dropped HTTP/2 stream surfaces ("Stream removed",
RST_STREAM, a proxy's 408). Anything else (bad config, no permission) is raised at once."""
_REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)
"""Codes of a request Google answered and refused: the service is up."""
_UNAUTHORISED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})


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
    if code in _REFUSED:
        return RequestRefused(text)
    return EngineError(text)


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """Nothing but the project's errors leaves this block."""
    try:
        yield
    except (GoogleAPICallError, grpc.RpcError) as exc:
        raise map_error(exc) from exc


def default_credentials() -> tuple[Any, str | None]:
    """Application Default Credentials and their project; blocks (a worker thread's job).

    Error handling: none found raises ``EngineUnavailable``.
    """
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return google.auth.default(scopes=_SCOPES)  # type: ignore[no-any-return]
    except DefaultCredentialsError as exc:
        raise EngineUnavailable(f"Google credentials: {exc}") from exc


async def make_client(endpoint: str, insecure: bool, credentials: Any) -> Any:
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


async def fetch_locations_metadata(client: Any, name: str, timeout_s: float) -> Any:
    """On the bridge's loop: the ``LocationsMetadata`` of location ``name``
    (``projects/P/locations/L``). Raises the SDK's errors (callers map them)."""
    from google.cloud.location import locations_pb2
    from google.cloud.speech_v2.types import LocationsMetadata

    location = await client.get_location(
        locations_pb2.GetLocationRequest(name=name), timeout=timeout_s
    )
    return LocationsMetadata.deserialize(location.metadata.value)


def names_adaptation(message: str) -> bool:
    """Whether Google's refusal is about phrase sets (so recognising without them helps)."""
    lowered = message.lower()
    return "adaptation" in lowered or "phrase" in lowered


def streaming_request(
    config: Config, *, recognizer: str, locale: str, glossary: Glossary, adaptation: bool
) -> Any:
    """The first request of a stream; the glossary's phrases bias recognition (an inline
    phrase set) when ``adaptation`` is on and ``google_phrase_boost`` is positive."""
    from google.cloud.speech_v2.types import cloud_speech as speech

    recognition = speech.RecognitionConfig(
        explicit_decoding_config=speech.ExplicitDecodingConfig(
            encoding=speech.ExplicitDecodingConfig.AudioEncoding.LINEAR16,
            sample_rate_hertz=config.google_sample_rate,
            audio_channel_count=1,
        ),
        language_codes=[locale],
        model=config.google_model,
        features=speech.RecognitionFeatures(enable_automatic_punctuation=True),
    )
    phrases = [p for p in glossary.phrases() if len(p) <= MAX_PHRASE_CHARS][:_MAX_PHRASES]
    boost = config.google_phrase_boost
    if phrases and boost > 0 and adaptation:
        phrase_set = speech.PhraseSet(
            phrases=[speech.PhraseSet.Phrase(value=p, boost=boost) for p in phrases]
        )
        recognition.adaptation = speech.SpeechAdaptation(
            phrase_sets=[speech.SpeechAdaptation.AdaptationPhraseSet(inline_phrase_set=phrase_set)]
        )
    return speech.StreamingRecognizeRequest(
        recognizer=recognizer,
        streaming_config=speech.StreamingRecognitionConfig(
            config=recognition,
            streaming_features=speech.StreamingRecognitionFeatures(
                interim_results=True, enable_voice_activity_events=True
            ),
        ),
    )
