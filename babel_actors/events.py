"""The pipeline's value types: what flows through the channels between actors.

Every type is frozen: a value handed to the next actor can never change under it.
"""

from __future__ import annotations

import attrs

from babel_actors.glossary import Glossary

AUTO_LANGUAGE = "auto"
"""A source language that asks the speech engine to identify what is spoken; segments
then carry the language heard, and readers of ``auto`` read the transcript as heard."""


@attrs.frozen
class AudioFrame:
    """A run of 16-bit little-endian mono PCM, on its way from ingest to the engine."""

    pcm: bytes
    """The samples; always an even number of bytes."""
    sample_rate: int
    """Samples per second of ``pcm``."""
    received_at: float
    """``trio.current_time()`` when the bytes came off the socket."""
    ingested_at: float = 0.0
    """``trio.current_time()`` when ingest handed the frame on; 0.0 when unknown."""


@attrs.frozen
class EndOfSpeech:
    """The speaker stopped (``audio_end``): the engine should finalise what it holds."""

    received_at: float
    """``trio.current_time()`` when the host said so."""


AudioEvent = AudioFrame | EndOfSpeech
"""What the ingest actor hands to the STT actor."""


@attrs.frozen
class SttResult:
    """One hypothesis from a speech engine.

    A partial result replaces the previous partial of the same utterance; a final one
    closes the utterance: the next result belongs to a new one.
    """

    text: str
    """The transcript of the utterance so far (partial) or in full (final)."""
    is_final: bool
    """Whether the engine will not revise this utterance any more."""
    audio_end_s: float = 0.0
    """Seconds of session audio this result covers, counted from the stream's start."""
    produced_at: float = 0.0
    """``trio.current_time()`` when the engine produced the result."""
    audio_received_at: float = 0.0
    """``received_at`` of the audio that completed the result; 0.0 when the engine
    cannot tell (stage timing, ``babel_actors.stages``)."""
    audio_ingested_at: float = 0.0
    """``ingested_at`` of that audio; 0.0 when unknown."""
    language: str = ""
    """The language the engine heard, when it identified it (a stream in ``auto``);
    empty means the stream's language."""


@attrs.frozen
class Segment:
    """A partial or final piece of the source transcript, numbered for the session."""

    seq_id: int
    """Session-wide, strictly increasing over partials and finals alike."""
    text: str
    """The source-language text."""
    is_partial: bool
    """A partial is replaced by the next segment; a final is settled."""
    source_lang: str
    """Language of ``text``."""
    recognized_at: float
    """``trio.current_time()`` when the engine produced it."""
    wall_ms: int
    """Unix milliseconds at the same moment (the wire's ``timestamp``)."""
    audio_received_at: float = 0.0
    """The result's ``audio_received_at``: when its audio came off the socket."""
    audio_ingested_at: float = 0.0
    """The result's ``audio_ingested_at``: when ingest handed that audio on."""
    split_at: float = 0.0
    """``trio.current_time()`` when the splitter made the segment."""


@attrs.frozen
class Caption:
    """A segment rendered for one target language: what a listener reads."""

    segment: Segment
    """The source segment."""
    target_lang: str
    """The language of ``text``."""
    text: str
    """The translation, or the source text when ``has_translation`` is false."""
    has_translation: bool
    """False when translation failed and ``text`` is the source text, flagged."""
    translated_at: float = 0.0
    """``trio.current_time()`` when the translator handed the caption on."""
    via: tuple[str, ...] = ()
    """The languages the translation passed through, source first, target last
    (``("en", "es", "pt")``: two hops); empty when not translated."""


@attrs.frozen
class HostAudio:
    """PCM as the host sent it, at the client's rate, before ingest resamples it."""

    pcm: bytes
    """16-bit little-endian mono samples; an even number of bytes."""
    sample_rate: int
    """The rate the client declared (``init.sampleRate``)."""
    received_at: float
    """``trio.current_time()`` when the bytes came off the socket."""


@attrs.frozen
class SourceLanguage:
    """The host now speaks ``language``: the STT stream restarts in it."""

    language: str
    """BCP-47 primary tag, e.g. ``"en"``."""


IngestEvent = HostAudio | EndOfSpeech | SourceLanguage | Glossary
"""What a host connection (or an embedder) hands to the ingest actor."""

SttOutput = SttResult | SourceLanguage
"""What the STT actor hands to the splitter: results, and the language of the results
that follow whenever the stream changes language."""

SttInput = AudioFrame | EndOfSpeech | SourceLanguage | Glossary
"""What the ingest actor hands to the STT actor (a ``Glossary`` restarts the stream
with new recognition hints)."""
